#!/usr/bin/env bash
# Benchmark Wharf against distribution's proxy, an nginx cache and the sendfile limit (issue 3).
#
#   scripts/bench.sh            full run (~15-20 min on 2 cores): tests/bench/results/{latest.json,REPORT.md,chart.png}
#   scripts/bench.sh --quick    small blobs, 2 repetitions (~3 min): tests/bench/results/quick.json
#   scripts/bench.sh --only 1,4 --quick --report    some tests only; see --help
#
# Installs what it needs (Debian: docker-registry nginx skopeo wrk apache2-utils; PyPI into .venv:
# matplotlib numpy psutil py-spy), generates the images, and only ever talks to 127.0.0.1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need=()
for pair in docker-registry:docker-registry nginx:nginx-light skopeo:skopeo wrk:wrk ab:apache2-utils; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing ${need[*]} ..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# nginx-light's package may start a default server on :80; we run our own instances only.

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import aiohttp, matplotlib, numpy, psutil, yaml' 2>/dev/null || [ ! -x .venv/bin/py-spy ]; then
  .venv/bin/pip install -q aiohttp matplotlib numpy psutil PyYAML py-spy uvloop
fi
if ! .venv/bin/python -c 'import proxy' 2>/dev/null && [ ! -x .venv/bin/wharf ]; then
  .venv/bin/pip install -q -e .
fi

exec env PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/python -m bench "$@"
