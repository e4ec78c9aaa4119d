#!/usr/bin/env bash
# Builds fuzz_request with clang (libFuzzer + ASan + UBSan) and fuzzes the
# daemon's request handler for a bounded time. Any crash, sanitizer report,
# leak or malformed reply fails the test; the crashing input is kept in
# $OUT/crash-* for a regression seed.
# usage: tests/fuzz/run.sh SOURCE_DIR BUILD_DIR SECONDS
set -euo pipefail
src=$1
out=$2/fuzz
seconds=${3:-30}
mkdir -p "$out"
if ! command -v clang >/dev/null; then
  echo "fuzz: clang is not installed (make test installs it)" >&2
  exit 1
fi
inc=$(pkg-config --cflags msgpack libuv)
# Every daemon source but main.c, so a new one cannot be forgotten here.
server_sources=()
for f in "$src"/server/*.c; do
  [ "$(basename "$f")" = main.c ] || server_sources+=("$f")
done
clang -std=c11 -g -O1 -D_GNU_SOURCE -DOPTIMD_VERSION='"fuzz"' \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I"$src/server" -I"$src/sdk/include" $inc \
  "$src/tests/fuzz/fuzz_request.c" \
  "${server_sources[@]}" \
  -lnng -lmsgpackc $(pkg-config --libs libuv) -ldl -lm -lpthread -o "$out/fuzz_request"
clang -std=c11 -g -O1 -D_GNU_SOURCE \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I"$src/server" -I"$src/sdk/include" $inc \
  "$src/tests/fuzz/fuzz_decode.c" "$src"/server/{wire,request_error}.c \
  -lnng -lmsgpackc -o "$out/fuzz_decode"
/usr/bin/python3 "$src/tests/fuzz/make_corpus.py" "$out/seeds"
mkdir -p "$out/corpus" "$out/corpus-decode"
# The fuzzers run in $out: a relative plugin directory (make fuzz passes
# BUILD/plugins) must not change meaning there.
if [ -n "${OPTIMD_PLUGIN_DIR:-}" ]; then
  OPTIMD_PLUGIN_DIR=$(cd "$OPTIMD_PLUGIN_DIR" && pwd)
  export OPTIMD_PLUGIN_DIR
fi
cd "$out"
# A fifth of the time for the decoder alone, the rest for the whole handler.
decode_seconds=$(( seconds / 5 > 1 ? seconds / 5 : 1 ))
./fuzz_decode -max_total_time="$decode_seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 corpus-decode seeds
# Plugins log their loading at info level; keep the fuzzer's output readable.
exec ./fuzz_request -max_total_time="$(( seconds - decode_seconds ))" -max_len=4096 -timeout=10 \
  -rss_limit_mb=2048 -print_final_stats=1 corpus seeds 2> >(grep -v " optimd info: " >&2)
