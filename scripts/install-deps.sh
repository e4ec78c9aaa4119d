#!/usr/bin/env bash
# Installs the Debian packages optimd needs, only those that are missing.
# Usage: scripts/install-deps.sh build|test
set -euo pipefail

build_pkgs=(build-essential cmake pkg-config libuv1-dev libnng-dev libmsgpack-dev)
# Parity tests compare against Debian's torch 1.13.1; python3-msgpack lets
# tests speak the wire protocol directly; clang and its libFuzzer runtime
# build the fuzz test.
test_pkgs=("${build_pkgs[@]}" python3 python3-torch python3-numpy python3-msgpack python3-venv clang libclang-rt-14-dev openssl)

# The Go, TypeScript and Rust clients' suites need their toolchains; this
# machine kind ships newer ones than Debian's, which are the fallback when a
# command is missing altogether.
toolchain_pkgs=()
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || toolchain_pkgs+=(golang-go)
command -v npm >/dev/null 2>&1 || toolchain_pkgs+=(nodejs npm)
command -v cargo >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ] || toolchain_pkgs+=(cargo)

case "${1:-build}" in
  build) wanted=("${build_pkgs[@]}") ;;
  test) wanted=("${test_pkgs[@]}" "${toolchain_pkgs[@]}") ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac

missing=()
for p in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}"; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
