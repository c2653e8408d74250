#!/usr/bin/env bash
# envrunctl's documentation cannot drift from the binary: every subcommand
# of `envrunctl --help` and every option of `envrunctl SUB --help` appears in
# that subcommand's section of the man page (ctl/envrunctl.1) and in the
# bash completion's list for it (ctl/envrunctl.bash); the man page passes
# groff's warnings; --help exits 0 everywhere and usage errors exit 2 with
# one line. Usage: docs_test.sh ENVRUNCTL SOURCE_DIR
set -u
bin=$1
src=$2
man=$src/ctl/envrunctl.1
comp=$src/ctl/envrunctl.bash
fails=0
fail() {
    echo "FAIL: $*" >&2
    fails=$((fails + 1))
}

# The man page lints clean (groff-base: -ww all warnings, -z no output).
if ! command -v groff >/dev/null; then
    fail "groff not installed (scripts/install-deps.sh: groff-base)"
else
    lint=$(groff -man -ww -z "$man" 2>&1)
    [[ -z $lint ]] || fail "groff warnings in envrunctl.1: $lint"
fi

# Subcommands from the top-level help: the "Commands:" lines.
top=$("$bin" --help) || fail "envrunctl --help exited $?"
mapfile -t subs < <(printf '%s\n' "$top" |
    sed -n '/^Commands:/,/^$/p' | grep -E '^  [a-z]' |
    sed -E 's/^  ([a-z]+)( (list|replay))?.*/\1\2/' | sort -u)
((${#subs[@]} >= 6)) || fail "expected at least 6 subcommands, got ${subs[*]}"
for want in dev send tail leases "dlq list" "dlq replay"; do
    printf '%s\n' "${subs[@]}" | grep -qx "$want" ||
        fail "envrunctl --help lists no '$want'"
done
"$bin" dlq --help >/dev/null || fail "envrunctl dlq --help exited $?"
"$bin" --version | grep -q '^envrunctl ' || fail "envrunctl --version"

# The man page section of a subcommand: from its .SS line to the next .SS
# or .SH.
section() {
    awk -v name="$1" '
        /^\.S[SH] / { on = 0 }
        index($0, ".SS \"" name " ") == 1 || $0 == ".SS \"" name "\"" { on = 1 }
        on { print }' "$man"
}

# The completion's candidates for the words given (the current word last).
complete_words() {
    bash -c '
        source "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        _envrunctl
        printf "%s\n" "${COMPREPLY[@]}"' _ "$comp" "$@"
}

for sub in "${subs[@]}"; do
    # shellcheck disable=SC2086 # "dlq list" is two words on purpose
    help=$("$bin" $sub --help) || fail "envrunctl $sub --help exited $?"
    mapfile -t opts < <(printf '%s\n' "$help" |
        grep -oE '(^|[ [(|])--[a-z][a-z-]*' | grep -oE -- '--[a-z-]+' |
        sort -u)
    ((${#opts[@]} > 0)) || fail "envrunctl $sub --help names no option"
    sect=$(section "$sub")
    [[ -n $sect ]] || fail "envrunctl.1 has no section .SS \"$sub ...\""
    # shellcheck disable=SC2086
    cands=$(complete_words envrunctl $sub --)
    for opt in "${opts[@]}"; do
        roff=${opt//-/\\-}
        grep -qF -- "$roff" <<<"$sect" ||
            fail "envrunctl.1 section '$sub' lacks $opt"
        [[ $opt == --help ]] && continue
        grep -qx -- "$opt" <<<"$cands" ||
            fail "completion of 'envrunctl $sub --' lacks $opt"
    done
    # A bogus option: exit 2, one line naming it.
    # shellcheck disable=SC2086
    err=$("$bin" $sub --no-such-option 2>&1 >/dev/null)
    rc=$?
    [[ $rc -eq 2 ]] || fail "envrunctl $sub --no-such-option exited $rc"
    [[ $(wc -l <<<"$err") -eq 1 && $err == *--no-such-option* ]] ||
        fail "envrunctl $sub --no-such-option said: $err"
done

# The environment and exit codes are documented.
for word in ENVRUN_KAFKA_BROKERS ENVRUN_KAFKA_PROPS ENVRUN_TOPIC_PREFIX \
    ENVRUN_DATABASE_URL '.SH "EXIT STATUS"' '.SH ENVIRONMENT'; do
    grep -qF -- "$word" "$man" || fail "envrunctl.1 lacks $word"
done
err=$("$bin" bogus 2>&1 >/dev/null)
[[ $? -eq 2 && $err == *bogus* ]] || fail "envrunctl bogus: $err"

if ((fails > 0)); then
    echo "$fails failure(s)" >&2
    exit 1
fi
echo "docs_test: ${#subs[@]} subcommands checked"
