#!/usr/bin/env bash
# A full remote step (Python client: tcp, ipc and shared memory) against torch's local
# step and an NNG echo of the same bytes. usage: bench/remote.sh BUILD_DIR [N...]
set -euo pipefail
build=${1:-build}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
"$here/../scripts/python-env.sh" "$build/pyenv" >/dev/null
# torch at its best (reference §7); harmless for the daemon.
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
"$build/pyenv/bin/python" "$here/remote_step.py" "$build" "$@"
echo
"$build/pyenv/bin/python" "$here/durability.py" "$build"
