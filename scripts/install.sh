#!/usr/bin/env bash
# Installs everything quant4 needs on a fresh machine, then the npm dependencies:
#  - Linux: OpenBLAS with LAPACK (libopenblas-dev) through apt when its headers are missing;
#  - npm ci: dependencies, the native addon (node-gyp, never downloads headers) and the TypeScript build.
# macOS uses the Accelerate framework that ships with Xcode's command-line tools.
set -euo pipefail
cd "$(dirname "$0")/.."

have_openblas() {
  # Both the headers and the library: another BLAS's cblas.h alone would not link -lopenblas.
  [ -n "$(find /usr/include /usr/local/include -name cblas.h 2>/dev/null | head -n 1)" ] &&
    [ -n "$(find /usr/lib /usr/local/lib -maxdepth 3 -name 'libopenblas.so*' 2>/dev/null | head -n 1)" ]
}

if [ "$(uname -s)" = "Linux" ] && ! have_openblas; then
  echo "quant4: installing libopenblas-dev (OpenBLAS + LAPACK) with apt-get" >&2
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas-dev >/dev/null
fi

npm ci --no-fund --no-audit
