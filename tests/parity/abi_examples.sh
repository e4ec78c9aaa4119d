#!/bin/sh
# Builds the example plugins of docs/abi.md §12 exactly as that page says,
# checks that each exports only `optimd_plugin`, and runs the descriptor
# checks of parity_plugins on them, so the page cannot drift from the ABI.
#
# Usage: abi_examples.sh SOURCE_DIR C_COMPILER PARITY_PLUGINS_BINARY
set -eu
src=$1
cc=$2
checker=$3
work=$(mktemp -d /tmp/optimd-abi-examples-XXXXXX)
trap 'rm -rf "$work"' EXIT

# Every ```c block whose first line is "/* <name>.c..." becomes <name>.c.
awk -v out="$work" '
    /^```c$/ { in_block = 1; file = ""; next }
    /^```$/  { if (file != "") close(file); in_block = 0; file = ""; next }
    in_block && file == "" {
        if (match($0, /^\/\* [a-z0-9_]+\.c/)) file = out "/" substr($0, 4, RLENGTH - 3)
        else in_block = 0
    }
    in_block && file != "" { print > file }
' "$src/docs/abi.md"

printf '{ global: optimd_plugin; local: *; };\n' > "$work/optimd_plugin.map"
mkdir "$work/plugins"
count=0
for c_file in "$work"/*.c; do
    [ -e "$c_file" ] || break
    name=$(basename "$c_file" .c)
    # The command line of docs/abi.md §12, plus -Werror.
    "$cc" -std=c11 -O2 -Wall -Wextra -Werror -fPIC -fvisibility=hidden -ffp-contract=off \
        -I "$src/sdk/include" -shared -o "$work/plugins/$name.so" "$c_file" \
        -Wl,-z,defs -Wl,--version-script="$work/optimd_plugin.map" -lm
    exported=$(nm -D --defined-only "$work/plugins/$name.so" | awk '{ print $NF }')
    if [ "$exported" != "optimd_plugin" ]; then
        echo "abi_examples: $name.so exports: $exported" >&2
        exit 1
    fi
    count=$((count + 1))
done
if [ "$count" -ne 2 ]; then
    echo "abi_examples: expected 2 example plugins in docs/abi.md, found $count" >&2
    exit 1
fi
OPTIMD_PLUGIN_DIR="$work/plugins" "$checker" --descriptors-only
echo "abi_examples: $count example plugins built and checked"
