#!/bin/sh
# Runs the Go client's checks and tests against the daemon named by
# OPTIMD_BIN (CTest passes it, with OPTIMD_PLUGIN_DIR and OPTIMD_SOURCE_DIR).
# The first run fetches the pinned modules (go.sum) through the configured
# GOPROXY into the module cache; later runs work offline.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

go=$(command -v go || true)
if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then
    go=/usr/local/go/bin/go
fi
if [ -z "$go" ]; then
    echo "run-tests.sh: the Go toolchain (go) is not installed or not on PATH;" >&2
    echo "install Go 1.21 or later (https://go.dev/dl/) to test clients/go" >&2
    exit 1
fi

# Under CTest the daemon must be there: a missing OPTIMD_BIN would turn the
# daemon tests into skips and the run into a vacuous pass.
if [ -z "${OPTIMD_BIN:-}" ]; then
    echo "run-tests.sh: OPTIMD_BIN is not set (run through ctest, or point it at a built optimd)" >&2
    exit 1
fi

cd "$here"
"$go" version
# gofmt ships next to go.
unformatted=$("$(dirname "$go")/gofmt" -l .)
if [ -n "$unformatted" ]; then
    echo "run-tests.sh: not gofmt-formatted: $unformatted" >&2
    exit 1
fi
"$go" vet ./...
# -count=1: every run starts real daemons; a cached pass proves nothing.
exec "$go" test -count=1 -v ./...
