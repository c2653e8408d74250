#!/usr/bin/env bash
# docker.build_steps: docker/Dockerfile's build, outside a container. Runs
# scripts/build-release.sh into a temporary prefix (its own build directory),
# checks that the three programs answer --version, that envrun-gateway is
# static, and that every shared library envrun-worker and envrunctl load
# comes from a Debian package the Dockerfile's runtime stage gets: one it
# apt-get installs, one of their dependencies or one of debian:12-slim's own
# (Essential and their dependencies). A library the programs link directly
# must be named in the apt-get install itself (or be libc's).
#
#   check_build_steps.sh [--dockerfile F] [--installed PREFIX] [SOURCE_DIR]
#
# --installed checks an existing prefix instead of building (to see a rule
# fail on a broken copy of the Dockerfile without a rebuild).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/../.." && pwd)
dockerfile=""
installed=""
while (($#)); do
    case $1 in
    --dockerfile) dockerfile=$2; shift 2 ;;
    --installed) installed=$2; shift 2 ;;
    -*) echo "usage: check_build_steps.sh [--dockerfile F] [--installed PREFIX] [SOURCE_DIR]" >&2; exit 2 ;;
    *) src=$(cd "$1" && pwd); shift ;;
    esac
done
dockerfile=${dockerfile:-$src/docker/Dockerfile}

# owner PATH: the Debian package that ships PATH (ldd prints /lib paths of
# files dpkg knows under /usr/lib, and the other way round).
owner() {
    local p=$1 cand out
    for cand in "$p" "$(readlink -f "$p")" "/usr$p" "${p#/usr}"; do
        [[ -n $cand ]] || continue
        if out=$(dpkg -S "$cand" 2>/dev/null); then
            out=${out%%:*}
            echo "${out%%,*}"
            return 0
        fi
    done
    return 1
}

failures=0
fail() {
    echo "docker.build_steps: FAIL: $*"
    failures=$((failures + 1))
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [[ -n $installed ]]; then
    prefix=$installed
else
    prefix=$tmp/prefix
    echo "docker.build_steps: scripts/build-release.sh $prefix"
    if ! BUILD_DIR=$tmp/build JOBS=${JOBS:-2} bash "$src/scripts/build-release.sh" \
        "$prefix" >"$tmp/build.log" 2>&1; then
        tail -n 40 "$tmp/build.log"
        echo "docker.build_steps: FAIL: scripts/build-release.sh failed (the Dockerfile's build stage would too)"
        exit 1
    fi
fi

# --version: "<program> <project version>", exit 0 (contract.md 1).
version=$(sed -n 's/^project(envrun VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
for prog in envrun-worker envrunctl envrun-gateway; do
    bin=$prefix/bin/$prog
    if [[ ! -x $bin ]]; then
        fail "$bin was not installed"
        continue
    fi
    out=$("$bin" --version 2>&1)
    rc=$?
    if ((rc != 0)) || [[ $out != "$prog $version" ]]; then
        fail "$prog --version exited $rc with '${out:0:200}', expected exit 0 and '$prog $version'"
    fi
done
for doc in share/man/man1/envrunctl.1:ctl/envrunctl.1 \
    share/bash-completion/completions/envrunctl:ctl/envrunctl.bash; do
    if [[ -f $src/${doc#*:} && ! -f $prefix/${doc%%:*} ]]; then
        fail "${doc#*:} exists but was not installed as PREFIX/${doc%%:*}"
    fi
done

# envrun-gateway is uploaded into sandboxes: static, no shared libraries.
gw=$prefix/bin/envrun-gateway
if [[ -x $gw ]] && readelf -d "$gw" 2>/dev/null | grep -q '(NEEDED)'; then
    fail "envrun-gateway needs shared libraries ($(readelf -d "$gw" | grep -c '(NEEDED)')); it must be static"
fi

# The build stage gets `install-deps.sh --build-only`: it must hold the
# package of every library CMake looks for (what this machine has beyond it
# would hide a missing one).
if ! build_pkgs=$(bash "$src/scripts/install-deps.sh" --list-build-only); then
    fail "scripts/install-deps.sh --list-build-only failed"
fi
modules=0
while read -r mod; do
    modules=$((modules + 1))
    if ! pc=$(pkg-config --path "$mod" 2>/dev/null) || ! pkg=$(owner "$pc"); then
        fail "CMakeLists.txt looks for $mod, which no Debian package here provides"
    elif ! grep -qxF "$pkg" <<<"$build_pkgs"; then
        fail "CMakeLists.txt looks for $mod (package $pkg), which install-deps.sh --build-only does not install: add $pkg to build_packages"
    fi
done < <(sed -n 's/^pkg_check_modules([A-Z_]* REQUIRED IMPORTED_TARGET \([^ )]*\)).*/\1/p' \
    "$src/CMakeLists.txt")
if ((modules < 5)); then
    fail "found $modules pkg_check_modules(... REQUIRED IMPORTED_TARGET ...) in CMakeLists.txt, expected at least 5"
fi

# The runtime stage's packages and what the image holds with them.
if ! runtime=$(python3 "$here/dockerfile.py" runtime-packages "$dockerfile"); then
    echo "docker.build_steps: FAIL: cannot read the runtime packages of $dockerfile"
    exit 1
fi
if [[ -z $runtime ]]; then
    fail "$dockerfile: the runtime stage apt-get installs nothing"
fi
# shellcheck disable=SC2086 # one package a word
python3 "$here/dockerfile.py" closure $runtime >"$tmp/closure" || exit 1
python3 "$here/dockerfile.py" base-closure >"$tmp/base" || exit 1
printf '%s\n' "$runtime" >"$tmp/runtime"

for prog in envrun-worker envrunctl; do
    bin=$prefix/bin/$prog
    [[ -x $bin ]] || continue
    if ! ldd "$bin" >"$tmp/ldd" 2>&1; then
        fail "ldd $prog failed: $(head -n 3 "$tmp/ldd")"
        continue
    fi
    if grep -q 'not found' "$tmp/ldd"; then
        fail "$prog: $(grep 'not found' "$tmp/ldd" | tr -s ' \t' ' ')"
    fi
    direct=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    before=$failures
    checked=0
    while read -r lib _ path _; do
        if [[ $lib == /* ]]; then
            path=$lib # the dynamic loader: no "=>"
            lib=${lib##*/}
        fi
        [[ $path == /* ]] || continue # linux-vdso.so.1 is no file
        if ! pkg=$(owner "$path"); then
            fail "$prog needs $path, which no Debian package ships"
            continue
        fi
        checked=$((checked + 1))
        if grep -qxF "$lib" <<<"$direct"; then
            if ! grep -qxF "$pkg" "$tmp/runtime" "$tmp/base"; then
                fail "$prog links $lib (package $pkg), which $dockerfile's runtime stage does not apt-get install: add $pkg"
            fi
        elif ! grep -qxF "$pkg" "$tmp/closure"; then
            fail "$prog loads $lib (package $pkg), which nothing $dockerfile's runtime stage installs brings: add $pkg"
        fi
    done <"$tmp/ldd"
    if ((checked < 5)); then
        fail "$prog: only $checked libraries from ldd; expected at least librdkafka, avro, libpq, jansson and libc"
    fi
    if ((failures == before)); then
        echo "docker.build_steps: $prog: $checked shared libraries, each from a package of the runtime image"
    fi
done

if ((failures)); then
    echo "docker.build_steps: $failures check(s) failed"
    exit 1
fi
echo "docker.build_steps: the release build installs, answers --version and finds its libraries in the runtime image"
