#!/usr/bin/env bash
# Daemon memory per parameter: one AdamW session of N fp32 elements (default
# 50M) stepped STEPS times (default 20), VmRSS read from /proc
# (bench/bench_memory.c). The daemon runs with glibc's default malloc
# settings (make bench's torch tunables are unset for it), as it would be
# deployed.
# usage: bench/memory.sh BUILD_DIR [N] [STEPS]
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
n=${2:-50000000}
steps=${3:-20}
unset GLIBC_TUNABLES
tmp=$(mktemp -d "${TMPDIR:-/tmp}/optimd-bench-XXXXXX")
daemon=
cleanup() {
  [ -n "$daemon" ] && { kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT
# No snapshot during the run: a snapshot's disk writes are not what this
# measures (the one at stop still happens).
"$build/server/optimd" --listen tcp://127.0.0.1:0 --plugin-dir "$build/plugins" \
  --state-dir "$tmp/state" --ready-file "$tmp/ready" --snapshot-interval 0 \
  --max-message $((1 << 30)) --log-level warn 2>"$tmp/optimd.log" &
daemon=$!
for _ in $(seq 300); do
  [ -s "$tmp/ready" ] && break
  kill -0 "$daemon" 2>/dev/null || { echo "bench: optimd exited during start-up" >&2; exit 1; }
  sleep 0.1
done
[ -s "$tmp/ready" ] || { echo "bench: optimd did not start" >&2; exit 1; }
"$build/bench/bench_memory" "$(head -1 "$tmp/ready")" "$daemon" "$n" "$steps"
