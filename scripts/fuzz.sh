#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz/*_fuzz.c) with clang, libFuzzer
# and ASan+UBSan into BUILD_DIR, then run each for SECONDS on a fresh copy of
# its seeds (BUILD_DIR/corpus/<stem>: new inputs land there, not in
# tests/fuzz/corpus). Every target runs even when one fails. An input that
# crashes, leaks, hangs (10 s) or runs out of memory is left as
# BUILD_DIR/<target>-<kind>-<sha1>; the summary names each (and prints a
# small one as base64, so a CI log alone reproduces it). Exits 1 if a target
# failed, 2 on a usage or build error. `make fuzz` and the fuzz stage of
# `make test` run it.
#
# usage: scripts/fuzz.sh BUILD_DIR SECONDS [JOBS]
# then:  BUILD_DIR/tests/<target> BUILD_DIR/<target>-crash-<sha1>  (replay)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

usage="usage: scripts/fuzz.sh BUILD_DIR SECONDS [JOBS]"
build=${1:-}
seconds=${2:-}
jobs=${3:-2}
# -max_total_time=0 would mean no limit: a positive number of seconds only.
if [[ -z $build || ! $seconds =~ ^[1-9][0-9]*$ || ! $jobs =~ ^[1-9][0-9]*$ ]]; then
    echo "$usage" >&2
    exit 2
fi

targets=()
for src in tests/fuzz/*_fuzz.c; do
    targets+=("$(basename "$src" .c)")
done
if ((${#targets[@]} == 0)); then
    echo "fuzz: no tests/fuzz/*_fuzz.c" >&2
    exit 2
fi

CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DER_FUZZ=ON -DER_SANITIZE=address,undefined || exit 2
cmake --build "$build" -j"$jobs" --target "${targets[@]}" || exit 2

# libFuzzer's output without a line per new or reduced input and without
# its dictionary advice (thousands of lines a run); the rest as it comes.
quiet() {
    awk '/^#[0-9]+[ \t]+(NEW|REDUCE) / { next }
        /^###### Recommended dictionary/ { skip = 1 }
        skip { if (/^###### End of recommended dictionary/) skip = 0; next }
        { print; fflush() }'
}

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
stamp=$build/.fuzz-started
touch "$stamp"
failed=()
for name in "${targets[@]}"; do
    stem=${name%_fuzz}
    corpus=$build/corpus/$stem
    rm -rf "$corpus"
    mkdir -p "$corpus"
    if [[ -d tests/fuzz/corpus/$stem ]]; then
        cp -R "tests/fuzz/corpus/$stem/." "$corpus/"
    fi
    echo "== $name for $seconds s"
    "$build/tests/$name" -max_total_time="$seconds" -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$build/$name-" "$corpus" 2>&1 |
        quiet
    if ((PIPESTATUS[0] != 0)); then
        failed+=("$name")
    fi
done

if ((${#failed[@]} == 0)); then
    echo "fuzz: ${#targets[@]} targets, $seconds s each: no failures"
    exit 0
fi
echo "fuzz: FAILED: ${failed[*]}"
for name in "${failed[@]}"; do
    while IFS= read -r art; do
        echo "fuzz: $name artifact: $PWD/$art"
        if (($(stat -c %s "$art") <= 16384)); then
            echo "fuzz: $name artifact base64: $(base64 -w0 "$art")"
        fi
    done < <(find "$build" -maxdepth 1 -type f -name "$name-*" -newer "$stamp")
done
exit 1
