#!/bin/sh
# The plugin template as a user meets it: install the SDK from this build
# into a temporary prefix, copy the template from there to a directory
# outside the source tree, build it against that prefix only, run its own
# tests (including optimd-validate, which must pass its declared test
# vector), build it once more with the pkg-config
# flags alone, then load it into a real daemon and train with it over the
# protocol (sdk_session.py checks every step against the Signum formula).
#
# Usage: template_out_of_tree.sh CMAKE CTEST
# Environment (from CTest): OPTIMD_SOURCE_DIR, OPTIMD_BINARY_DIR, OPTIMD_BIN,
# OPTIMD_PLUGIN_DIR, PYTHONPATH (tests/integration).
set -eu
cmake=$1
ctest=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/optimd-sdk-template-XXXXXX)
trap 'rm -rf "$work"' EXIT

"$cmake" --install "$OPTIMD_BINARY_DIR" --prefix "$work/prefix" --component sdk >/dev/null
template="$work/prefix/share/optimd-sdk/template"
# What is installed is the whole template, unchanged.
diff -r "$OPTIMD_SOURCE_DIR/sdk/template" "$template"
cp -R "$template" "$work/signum"

# CMAKE_PREFIX_PATH is the only way in: no package registry, and nothing of
# the source tree may appear in a compile command.
"$cmake" -S "$work/signum" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
"$cmake" --build "$work/build"
if grep -qF "$OPTIMD_SOURCE_DIR" "$work/build/compile_commands.json"; then
    echo "template_out_of_tree: the template build reached into $OPTIMD_SOURCE_DIR" >&2
    exit 1
fi
"$ctest" --test-dir "$work/build" --output-on-failure
"$ctest" --test-dir "$work/build" -N | grep -q signum_validate
# The template's declared test vector is found and passes, bit for bit.
"$work/prefix/bin/optimd-validate" "$work/build/signum.so" > "$work/validate.out"
grep -F "PASS  vector[f32_by_hand]: test vector 0 'f32_by_hand' (f32, numel 5, step 2): all 10 values match bit for bit (tolerance: bit-exact)" \
    "$work/validate.out" || { cat "$work/validate.out" >&2; exit 1; }

# Without CMake: the pkg-config file has what a plain compiler line needs.
export PKG_CONFIG_PATH="$work/prefix/share/pkgconfig"
mkdir "$work/pc"
# shellcheck disable=SC2046 # word splitting of the flags is intended
cc -std=c11 -O2 -Wall -Wextra -Werror $(pkg-config --cflags optimd-sdk) \
    $(pkg-config --variable=plugin_cflags optimd-sdk) -o "$work/pc/signum.so" \
    "$work/signum/signum.c" $(pkg-config --variable=plugin_ldflags optimd-sdk)
"$(pkg-config --variable=validate optimd-sdk)" -q "$work/pc/signum.so"

mkdir "$work/plugins"
cp "$work/build/signum.so" "$work/plugins/"
PYTHONPATH="$here:${PYTHONPATH:-}" /usr/bin/python3 -c \
    'import sdk_session; sdk_session.main_signum()' "$work/plugins"
