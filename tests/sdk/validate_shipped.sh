#!/bin/sh
# Every plugin shipped in the build's plugin directory passes optimd-validate.
# Usage: validate_shipped.sh OPTIMD_VALIDATE   (OPTIMD_PLUGIN_DIR from CTest)
set -eu
validate=$1
n=0
for so in "$OPTIMD_PLUGIN_DIR"/*.so; do
    [ -e "$so" ] || continue
    n=$((n + 1))
done
# An empty or half-built plugin directory must not pass vacuously.
if [ "$n" -lt 20 ]; then
    echo "validate_shipped: only $n plugins in $OPTIMD_PLUGIN_DIR" >&2
    exit 1
fi
"$validate" -q "$OPTIMD_PLUGIN_DIR"/*.so
echo "validate_shipped: $n plugins pass"
