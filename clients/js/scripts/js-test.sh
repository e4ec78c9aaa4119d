#!/usr/bin/env bash
# Builds and runs the TypeScript client's tests for CTest (CMakeLists.txt).
#   js-test.sh build SRC WORK   copy the package at SRC (clients/js) to WORK,
#                               `npm ci` there when package-lock.json (or the
#                               Node version) changed since the last install,
#                               and compile with tsc into WORK/dist
#   js-test.sh run WORK NAME    node --test WORK/dist/test/NAME.test.js
# The build happens in the build tree, so the checkout stays clean and two
# build directories never share a node_modules.
set -euo pipefail

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "js-test: '$1' not found on PATH. The JavaScript client's tests need Node.js >= 18" \
         "and npm (Debian: apt-get install nodejs npm)." >&2
    exit 1
  fi
}
need node
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "js-test: Node.js $(node --version) is too old; the client needs Node.js >= 18." >&2
  exit 1
fi

case "${1:-}" in
build)
  [ $# -eq 3 ] || { echo "usage: $0 build SRC WORK" >&2; exit 2; }
  need npm
  src=$2 work=$3
  mkdir -p "$work"
  # Sources are replaced wholesale so that a file deleted in the checkout
  # does not linger in the build; node_modules is kept.
  rm -rf "$work/src" "$work/test" "$work/examples" "$work/dist"
  cp -R "$src/src" "$src/test" "$src/examples" "$work/"
  cp "$src/package.json" "$src/package-lock.json" "$src/tsconfig.json" "$work/"
  stamp=$work/node_modules/.optimd-stamp
  want=$( { sha256sum "$work/package-lock.json"; node --version; } | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "js-test: npm ci in $work" >&2
    (cd "$work" && npm ci --no-audit --no-fund)
    echo "$want" > "$stamp"
  fi
  (cd "$work" && ./node_modules/.bin/tsc -p .)
  echo "js-test: built $work/dist" >&2
  ;;
run)
  [ $# -eq 3 ] || { echo "usage: $0 run WORK NAME" >&2; exit 2; }
  file=$2/dist/test/$3.test.js
  [ -f "$file" ] || { echo "js-test: $file is missing: the js_build test builds it" >&2; exit 1; }
  cd "$2"
  exec node --test --test-reporter=spec "$file"
  ;;
*)
  echo "usage: $0 build SRC WORK | run WORK NAME" >&2
  exit 2
  ;;
esac
