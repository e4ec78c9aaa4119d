#!/usr/bin/env bash
# Creates or updates the virtualenv the examples' tests run in: the Python
# client's (scripts/python-env.sh: Debian's python3 and torch, the client and
# its pins) plus the plotting stack pinned in tests/examples/requirements.txt.
# Usage: tests/examples/example-env.sh DIR
#
# A stamp of this script and the pins makes a second call a no-op, as
# python-env.sh's own stamp does for the client.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
req=$here/requirements.txt
stamp=$dir/.optimd-examples-stamp

"$root/scripts/python-env.sh" "$dir"

hash=$(cat "$here/example-env.sh" "$req" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  exit 0
fi
rm -f "$stamp"
# --no-deps: requirements.txt is the whole closure; letting pip resolve would
# replace Debian's numpy, which Debian's torch is built against.
"$dir/bin/python" -m pip --disable-pip-version-check --no-input --quiet \
  install --only-binary :all: --no-deps -r "$req"
"$dir/bin/python" -c '
import matplotlib, numpy, PIL, torch, optimd
matplotlib.use("Agg")
import matplotlib.pyplot
assert numpy.__version__.startswith("1.24"), numpy.__version__'
echo "$hash" > "$stamp"
echo "example-env: $dir is ready" >&2
