#!/usr/bin/env bash
# After a rollout: the API at $1 must become ready (/ready 200) and /model must name the
# version it serves. API_TOKEN (optional) is sent as a bearer token.
set -euo pipefail
url="${1:?usage: verify-deployment.sh API_URL}"
url="${url%/}"
auth=()
if [ -n "${API_TOKEN:-}" ]; then auth=(-H "Authorization: Bearer $API_TOKEN"); fi
deadline=$((SECONDS + ${VERIFY_TIMEOUT_S:-300}))
until curl -fsS "${auth[@]}" "$url/ready" >/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "$url/ready did not answer 200 in time" >&2
        curl -sS "${auth[@]}" "$url/ready" >&2 || true
        exit 1
    fi
    sleep 5
done
model=$(curl -fsS "${auth[@]}" "$url/model")
python3 - "$model" <<'PY'
import json
import sys

model = json.loads(sys.argv[1])
missing = [key for key in ("name", "version", "run_id") if not model.get(key)]
if missing:
    sys.exit(f"/model lacks {missing}: {model}")
print(f"serving {model['name']} v{model['version']} (run {model['run_id']}, stage {model.get('stage')})")
PY
