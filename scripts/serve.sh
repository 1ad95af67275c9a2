#!/usr/bin/env bash
# Install Wharf into ./.venv (first run only) and start it on its embedded defaults:
# listening on :5000, blobs and metadata under ./data, upstreams docker.io, ghcr.io, quay.io,
# gcr.io and registry.k8s.io. Arguments are passed to `wharf serve` (e.g. --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "scripts/serve.sh: need root or sudo to install: $*" >&2; exit 1
    fi
}

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.wharf-serve-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e .
    echo "$want" > "$stamp"
fi
exec .venv/bin/wharf serve "$@"
