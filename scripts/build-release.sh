#!/usr/bin/env bash
# The release build, the one recipe docker/Dockerfile and CI
# (tests/docker/check_build_steps.sh) both run: configure (RelWithDebInfo,
# no fault points), build envrun-worker, envrunctl and envrun-gateway, and
# install them into PREFIX/bin (with envrunctl's man page and bash
# completion when the source has them: see the install() rules at the end of
# CMakeLists.txt).
#
#   scripts/build-release.sh PREFIX
#
# Environment: BUILD_DIR (default: build-release in the source tree), JOBS
# (default 2). Needs the packages of `scripts/install-deps.sh --build-only`.
set -euo pipefail

if (($# != 1)) || [[ $1 == -* ]]; then
    echo "usage: build-release.sh PREFIX" >&2
    exit 2
fi
prefix=$1
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$src/build-release}
jobs=${JOBS:-2}

# RelWithDebInfo, not Release: -O3 trips -Werror=null-dereference.
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DER_FAULTS=OFF -DCMAKE_INSTALL_PREFIX="$prefix"
cmake --build "$build" -j"$jobs" \
    --target envrun-worker envrunctl envrun-gateway
cmake --install "$build" --prefix "$prefix"

for prog in envrun-worker envrunctl envrun-gateway; do
    if [[ ! -x $prefix/bin/$prog ]]; then
        echo "build-release: $prefix/bin/$prog was not installed" >&2
        exit 1
    fi
done
echo "build-release: installed into $prefix"
