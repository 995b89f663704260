#!/usr/bin/env bash
# Roll the API out on the cluster of $KUBECONFIG_DATA (a kubeconfig, from the deploy
# environment's secrets) with IMAGE (registry/name@sha256:...), and wait for it.
set -euo pipefail
image="${1:?usage: deploy-k8s.sh IMAGE}"
: "${KUBECONFIG_DATA:?is empty: set the KUBECONFIG secret of the deploy environment}"
cd "$(dirname "$0")/.."
export KUBECONFIG="${RUNNER_TEMP:-/tmp}/kubeconfig"
umask 077
printf '%s\n' "$KUBECONFIG_DATA" > "$KUBECONFIG"
kubectl apply -f deploy/k8s/namespace.yaml
kubectl apply -f deploy/k8s/
kubectl -n fraudflow set image deployment/fraudflow-api "api=$image"
kubectl -n fraudflow set image cronjob/fraudflow-monitor "monitor=$image"
kubectl -n fraudflow rollout status deployment/fraudflow-api --timeout=10m
