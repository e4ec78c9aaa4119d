#!/usr/bin/env bash
# Aggregate gradient throughput with 1, 2, 4 workers and 1, 2 servers, as
# ratios to one worker on one server. usage: bench/workers.sh BUILD_DIR [ELEMENTS] [SECONDS]
set -euo pipefail
build=${1:-build}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
"$here/../scripts/python-env.sh" "$build/pyenv" >/dev/null
"$build/pyenv/bin/python" "$here/workers.py" "$build" "$@"
