#!/bin/sh
# Runs the commands of docs/writing-a-plugin.md, so the page cannot rot:
# every ```sh block directly preceded by a `<!-- ci -->` line, in order, in
# one shell with `set -eu`, after the variables of the page's step 0 are set
# to this build and to temporary directories.
#
# Usage: run_doc.sh DOC CMAKE
# Environment (from CTest): OPTIMD_BINARY_DIR, OPTIMD_BIN, OPTIMD_OPTIMCTL.
set -eu
doc=$1
cmake_dir=$(dirname "$2")
work=$(mktemp -d /tmp/optimd-sdk-doc-XXXXXX)
script="$work/doc.sh"

{
    echo 'set -eu'
    echo "OPTIMD_BUILD='$OPTIMD_BINARY_DIR'"
    echo "OPTIMD='$OPTIMD_BIN'"
    echo "OPTIMCTL='$OPTIMD_OPTIMCTL'"
    echo "PREFIX='$work/prefix'"
    echo "WORK='$work/work'"
    echo 'mkdir -p "$WORK"'
    # A daemon the page started is stopped whatever happens.
    echo 'OPTIMD_PID='
    echo 'trap '"'"'[ -n "$OPTIMD_PID" ] && kill "$OPTIMD_PID" 2>/dev/null || true'"'"' EXIT'
    awk '
        /^<!-- ci -->$/ { marked = 1; next }
        /^```sh$/ && marked { in_block = 1; marked = 0; blocks++; print "echo \"--- block " blocks "\""; next }
        /^```$/ && in_block { in_block = 0; next }
        in_block { print; next }
        { marked = 0 }
        END { if (blocks < 8) { print "echo \"run_doc: only " blocks " ci blocks\" >&2; exit 1" } }
    ' "$doc"
} > "$script"

# The page assumes the tools on a developer's PATH; cmake and ctest are the
# ones this build uses.
status=0
(cd "$work" && PATH="$cmake_dir:$PATH" sh -x "$script") > "$work/out.log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
    cat "$work/out.log" >&2
    [ -f "$work/work/optimd.log" ] && { echo "--- optimd.log" >&2; cat "$work/work/optimd.log" >&2; }
    echo "run_doc: the commands of $doc failed (status $status); the script was $script" >&2
    exit 1
fi
echo "run_doc: $(grep -c '^--- block' "$work/out.log") blocks"
grep 'off the rule' "$work/out.log"
rm -rf "$work"
echo "run_doc: every ci block of $doc ran"
