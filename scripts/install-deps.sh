#!/usr/bin/env bash
# Install the Debian 12 packages envrun needs to build, test, fuzz and run
# its dev stack. Idempotent: asks dpkg what is already there and installs
# only what is missing, so a second run does nothing and needs no network.
# Runs as root (CI, a fresh machine) or through sudo when available.
# --build-only: only what scripts/build-release.sh needs (docker/Dockerfile's
# build stage installs through this, so the two lists cannot drift);
# --list-build-only prints that list, one a line (tests/docker/).
set -euo pipefail

# What scripts/build-release.sh needs: toolchain and -dev packages.
build_packages=(
    build-essential cmake pkg-config
    musl-tools # envrun-gateway is a static musl binary (bridge/gateway/)
    # libraries (DESIGN.md: dependencies; cmocka: CMake requires it)
    librdkafka-dev libavro-dev libjansson-dev libpq-dev libcmocka-dev
    libcurl4-openssl-dev
    python3 # tests/CMakeLists.txt looks for it when configuring
)
packages=(
    "${build_packages[@]}"
    # toolchain
    git clang clang-format libclang-rt-14-dev
    # real servers and tools the tests use
    postgresql valgrind procps
    openssh-server openssh-client bubblewrap
    nodejs # the test provider plugin (tests/plugins) runs on node
    python3-yaml # tests/docker/check_compose.py
    groff-base # tests/ctl/docs_test.sh lints and renders ctl/envrunctl.1
    openssl # registry_test: a self-signed certificate and a TLS server
)
case ${1:-} in
'') ;;
--build-only) packages=("${build_packages[@]}") ;;
--list-build-only)
    printf '%s\n' "${build_packages[@]}"
    exit 0
    ;;
*)
    echo "usage: install-deps.sh [--build-only | --list-build-only]" >&2
    exit 2
    ;;
esac

is_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ $status == "install ok installed" ]]
}

missing=()
for pkg in "${packages[@]}"; do
    if ! is_installed "$pkg"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-deps: all ${#packages[@]} packages present"
    exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: missing ${missing[*]}; run as root" >&2
        exit 1
    fi
    sudo=(sudo)
fi

echo "install-deps: installing ${missing[*]}"

# Keep the packages' maintainer scripts from starting services (the system
# PostgreSQL cluster, sshd on port 22): the tests start their own on free
# ports. A policy-rc.d that is already there (container images ship one) is
# left alone.
policy=/usr/sbin/policy-rc.d
made_policy=0
cleanup() {
    if ((made_policy)); then
        "${sudo[@]}" rm -f "$policy"
    fi
}
trap cleanup EXIT
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 0755 "$policy"
    made_policy=1
fi

apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold)
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}")
"${apt[@]}" update -q
"${apt[@]}" install -y -q --no-install-recommends \
    "${missing[@]}"

for pkg in "${missing[@]}"; do
    if ! is_installed "$pkg"; then
        echo "install-deps: $pkg is still not installed" >&2
        exit 1
    fi
done
echo "install-deps: done"
