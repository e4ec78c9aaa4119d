#!/bin/sh
# optimd-validate fails each deliberately broken plugin with exit status 1
# and the message that names the flaw, and passes the good ABI 1.0 plugin.
# Usage: validate_broken.sh OPTIMD_VALIDATE BROKEN_DIR ABI10_DIR
set -eu
validate=$1
broken=$2
abi10=$3
out=$(mktemp /tmp/optimd-validate-test-XXXXXX)
trap 'rm -f "$out"' EXIT
# Under AddressSanitizer, let a SIGSEGV reach the child's default action, as
# in a normal build, instead of ASan's report-and-exit.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}handle_segv=0"
export ASAN_OPTIONS
failures=0

# expect FILE STATUS PATTERN...: every fixed-string PATTERN is a line part.
expect() {
    so=$1
    want=$2
    shift 2
    set +e
    "$validate" "$so" >"$out" 2>&1
    got=$?
    set -e
    if [ "$got" -ne "$want" ]; then
        echo "validate_broken: $so: exit status $got, expected $want" >&2
        cat "$out" >&2
        failures=$((failures + 1))
        return
    fi
    for pattern in "$@"; do
        if ! grep -qF -- "$pattern" "$out"; then
            echo "validate_broken: $so: no line with: $pattern" >&2
            cat "$out" >&2
            failures=$((failures + 1))
        fi
    done
}

expect "$broken/broken_abi_major.so" 1 "FAIL  abi: built for ABI 2."
expect "$broken/broken_no_symbol.so" 1 \
    "FAIL  symbols: the plugin does not export optimd_plugin (it exports 1 symbol(s): optimd_plugin_v1)" \
    "FAIL  load: dlsym(\"optimd_plugin\") found nothing"
expect "$broken/broken_extra_symbol.so" 1 \
    "FAIL  symbols: exports 1 symbol(s) besides optimd_plugin (optimd_plugin_helper)"
expect "$broken/broken_default.so" 1 "FAIL  hparams: 'lr' default 20 is outside its range (0, 10]"
expect "$broken/broken_segv.so" 1 \
    "FAIL  crash: the plugin crashed with SIGSEGV during step on f32 data"
expect "$broken/broken_abort.so" 1 \
    "FAIL  crash: the plugin crashed with SIGABRT during step on f32 data"
expect "$broken/broken_elementwise.so" 1 \
    "PASS  determinism[f32]" \
    "FAIL  elementwise[f32]: declares OPTIMD_OPTIMIZER_ELEMENTWISE, but on f32 [67] data one step in three ranges differs from the whole step"
expect "$broken/broken_nondet.so" 1 \
    "FAIL  determinism[f32]: the same steps on the same f32 [67] data gave different bytes"
# Declared test vectors: each reported on its own, the correct ones passing
# (bit-exact, within 2 ulps, within an absolute 1e-9), the wrong ones failing
# with the worst element.
expect "$broken/broken_vector.so" 1 \
    "PASS  vector[exact]: test vector 0 'exact' (f64, numel 3, step 1): all 3 values match bit for bit (tolerance: bit-exact)" \
    "PASS  vector[within_2_ulps]: test vector 1 'within_2_ulps' (f32, numel 1, step 1): all 1 values within the tolerance (max_ulps 2, max_abs_error 0); worst: param[0] = 0.75, expected 0.75000006 (1 ulp)" \
    "PASS  vector[within_1e-9]: test vector 2 'within_1e-9' (f64, numel 3, step 1): all 3 values within the tolerance (max_ulps 0, max_abs_error 1e-09); worst: param[0] = 0.75, expected 0.75000000000099998 (" \
    "FAIL  vector[wrong]: test vector 3 'wrong' (f64, numel 3, step 1): 1 of 3 values outside the tolerance (bit-exact), in param (1 of 3); worst: param[1] = 2.5, expected 2.3999999999999999 (" \
    "FAIL  vector[one_ulp_exact]: test vector 4 'one_ulp_exact' (f32, numel 1, step 1): 1 of 1 values outside the tolerance (bit-exact), in param (1 of 1); worst: param[0] = 0.75, expected 0.75000006 (1 ulp)" \
    "FAILED: " " passed, 2 failed"
expect "$broken/broken_vector_key.so" 1 \
    "PASS  vector[exact]" \
    "FAIL  vector[unknown_key]: test vector 3 'unknown_key' names hyperparameter 'learning_rate', which the plugin does not declare (it declares: lr)"
expect "$broken/broken_vector_slots.so" 1 \
    "FAIL  vector[extra_slot]: test vector 3 'extra_slot' gives 1 slot(s) but the optimizer declares 0"
# The crash is the child's: the summary line still comes.
expect "$broken/broken_segv.so" 1 "FAILED: "
expect "$abi10/abi10_heavyball.so" 0 "PASS  abi: built for ABI 1.0" "OK: "
expect /nonexistent/plugin.so 1 "FAIL  elf: cannot open /nonexistent/plugin.so"

set +e
"$validate" >/dev/null 2>&1
usage=$?
set -e
if [ "$usage" -ne 2 ]; then
    echo "validate_broken: no arguments gave exit status $usage, expected 2" >&2
    failures=$((failures + 1))
fi

if [ "$failures" -ne 0 ]; then
    echo "validate_broken: $failures failure(s)" >&2
    exit 1
fi
echo "validate_broken: every flaw reported"
