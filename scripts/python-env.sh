#!/usr/bin/env bash
# Creates or updates the virtualenv the Python client's tests run in, and
# installs the client (clients/python) into it.
# Usage: scripts/python-env.sh DIR
#
# The venv uses Debian's /usr/bin/python3 with --system-site-packages, so
# Debian's torch 1.13.1 and numpy are visible in it; the pinned wheels of
# tests/python/requirements.txt come from PyPI. A stamp file holds a hash of
# this script, the pins and the client's sources: when it matches, nothing is
# done, so calling this before every test run is cheap.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pkg=$root/clients/python
req=$root/tests/python/requirements.txt
stamp=$dir/.optimd-env-stamp

# The client's sources (paths relative to $pkg), without build leftovers
# and tool caches (hidden directories).
sources() {
  (cd "$pkg" && find . -type f ! -path '*/__pycache__/*' ! -path './build/*' \
                     ! -path '*.egg-info/*' ! -path './.*/*' -print0 | LC_ALL=C sort -z)
}
hash=$( { cd "$root" && sha256sum scripts/python-env.sh tests/python/requirements.txt;
          cd "$pkg" && sources | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)

if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  exit 0
fi

if [ ! -x "$dir/bin/python" ]; then
  echo "python-env: creating $dir" >&2
  /usr/bin/python3 -m venv --system-site-packages "$dir"
fi
rm -f "$stamp"
pip=("$dir/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
"${pip[@]}" install --only-binary :all: -r "$req"

# Build from a copy: setuptools writes build/ and *.egg-info next to the
# sources, and the checkout stays clean.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sources | (cd "$pkg" && xargs -0 cp --parents -t "$work")
# --no-deps: the dependencies are the pins above and Debian's numpy; the
# import below checks that they are there.
"${pip[@]}" install --force-reinstall --no-deps "$work"
"$dir/bin/python" -c 'import msgpack, numpy, pynng, optimd, torch'

echo "$hash" > "$stamp"
echo "python-env: $dir is ready" >&2
