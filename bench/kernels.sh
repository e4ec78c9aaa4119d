#!/usr/bin/env bash
# Optimizer kernels against torch 1.13.1 and the memory-bandwidth bound, in
# one run: median ms of one step on N fp32 elements, 1 and 2 threads.
# usage: bench/kernels.sh BUILD_DIR [N...]
set -euo pipefail
build=${1:-build}
shift || true
sizes=("$@")
# BENCH_QUICK=1 leaves out 50M, the slowest size.
if [ ${#sizes[@]} -eq 0 ]; then
  sizes=(1000000 10000000 50000000)
  [ "${BENCH_QUICK:-0}" = 1 ] && sizes=(1000000 10000000)
fi
# torch allocates temporaries per step; without these tunables glibc hands
# them fresh mmap pages and torch is 10-25x slower (reference §7).
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
here=$(dirname "$0")
bytes_per_elem() { case $1 in sgd) echo 20 ;; *) echo 28 ;; esac; }

printf "%-6s %10s %3s %10s %10s %10s %8s %10s\n" opt N thr optimd_ms torch_ms bound_ms speedup of_bound
for n in "${sizes[@]}"; do
  for t in 1 2; do
    bw=$("$build/bench/bench_bandwidth" "$n" "$t")   # GB/s of an in-place a += s*b
    for opt in sgd adam adamw; do
      ours=$("$build/bench/bench_kernels" "$build/plugins/$opt.so" "$n" "$t" lr=0.01 momentum=0.9 weight_decay=0.01)
      theirs=$(/usr/bin/python3 "$here/torch_step.py" "$opt" "$n" "$t")
      bound=$(awk -v n="$n" -v b="$(bytes_per_elem $opt)" -v bw="$bw" 'BEGIN{printf "%.3f", n*b/bw/1e6}')
      awk -v o="$opt" -v n="$n" -v t="$t" -v a="$ours" -v b="$theirs" -v c="$bound" \
        'BEGIN{printf "%-6s %10d %3d %10.3f %10.3f %10.3f %7.2fx %9.2fx\n", o, n, t, a, b, c, b/a, a/c}'
    done
  done
done
