#!/usr/bin/env bash
# Roll the API and the registry sync out on the cluster of $KUBECONFIG_DATA (a kubeconfig, from
# the deploy environment's secrets) with IMAGE (registry/name@sha256:...), and wait for them.
set -euo pipefail
image="${1:?usage: deploy-k8s.sh IMAGE}"
: "${KUBECONFIG_DATA:?is empty: set the KUBECONFIG secret of the deploy environment}"
cd "$(dirname "$0")/.."
export KUBECONFIG="${RUNNER_TEMP:-/tmp}/kubeconfig"
umask 077
printf '%s\n' "$KUBECONFIG_DATA" > "$KUBECONFIG"
kubectl apply -f deploy/k8s/namespace.yaml
# the manifests name the image ghcr.io/fraudflow/fraudflow:main; apply them with IMAGE in its
# place, so that each deploy is one rollout, straight to IMAGE
for manifest in deploy/k8s/*.yaml; do
  sed "s#image: ghcr.io/fraudflow/fraudflow:main#image: ${image}#" "$manifest"
  echo "---"
done | kubectl apply -f -
# the Redis policy once lived in redis.yaml: network-policies.yaml holds it now
kubectl -n fraudflow delete networkpolicy fraudflow-redis --ignore-not-found
kubectl -n fraudflow rollout status deployment/fraudflow-api --timeout=10m
# the registry sync (one pod, Recreate): ready once its first pass has reached the registry
kubectl -n fraudflow rollout status deployment/fraudflow-registry-sync --timeout=5m
