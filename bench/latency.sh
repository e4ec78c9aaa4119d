#!/usr/bin/env bash
# Small-request latency (p50, p99) and throughput of a 1,000-element AdamW
# step with 1, 4 and 16 clients against an NNG echo of the same bytes, both
# served over tcp loopback in this run (bench/bench_latency.c).
# usage: bench/latency.sh BUILD_DIR [SECONDS_PER_ROW]
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
seconds=${2:-3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/optimd-bench-XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
wait_file() {   # FILE PID: wait until FILE has a line, or the process dies
  for _ in $(seq 300); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench: a server exited during start-up" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench: a server did not start" >&2; exit 1
}
"$build/server/optimd" --listen tcp://127.0.0.1:0 --plugin-dir "$build/plugins" \
  --state-dir "$tmp/state" --ready-file "$tmp/ready" --log-level warn 2>"$tmp/optimd.log" &
pids+=($!)
wait_file "$tmp/ready" "${pids[0]}"
"$build/bench/bench_nng_echo" tcp://127.0.0.1:0 "$tmp/echo" &
pids+=($!)
wait_file "$tmp/echo" "${pids[1]}"
"$build/bench/bench_latency" "$(head -1 "$tmp/ready")" "tcp://127.0.0.1:$(head -1 "$tmp/echo")" "$seconds"
