#!/usr/bin/env bash
# The bash completion of envrunctl (ctl/envrunctl.bash): sourced in bash,
# COMPREPLY holds the subcommands, options per subcommand, topic names after
# tail and the values of --format, --outcome, --kind, --status and
# --error-code. Usage: completion_test.sh SOURCE_DIR
set -u
comp=$1/ctl/envrunctl.bash
fails=0

# The sorted candidates, one line, for the words given (current word last).
candidates() {
    bash -c '
        source "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        _envrunctl
        printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " "' _ "$comp" "$@"
}

expect() { # want, words...
    local want=$1 got
    shift
    got=$(candidates "$@")
    got=${got% }
    if [[ $got != "$want" ]]; then
        echo "FAIL: [$*] completes to '$got', want '$want'" >&2
        fails=$((fails + 1))
    fi
}

expect_has() { # word, words...
    local want=$1 got
    shift
    got=" $(candidates "$@")"
    if [[ $got != *" $want "* ]]; then
        echo "FAIL: [$*] completes to '$got', lacks '$want'" >&2
        fails=$((fails + 1))
    fi
}

bash -c "source '$comp'; complete -p envrunctl" | grep -q -- '-F _envrunctl' ||
    { echo "FAIL: no complete -F _envrunctl" >&2; fails=$((fails + 1)); }

expect "--help --version dev dlq leases send tail" envrunctl ""
expect "dlq" envrunctl dl
expect "--help list replay" envrunctl dlq ""
expect "activity commands commands.dlq lease-events results" envrunctl tail ""
expect "commands commands.dlq" envrunctl tail --from-beginning com
expect "commands commands.dlq" envrunctl tail --max 5 com
expect "--follow --format --from-beginning" envrunctl tail results --f
expect "json table" envrunctl tail results --format ""
expect "table" envrunctl dlq list --format t
expect "deferred error ok" envrunctl tail results --outcome ""
expect "acquire realize release" envrunctl send --kind ""
expect "expired failed released" envrunctl send --status ""
expect "active expired failed released" envrunctl leases --status ""
expect "invalid_command" envrunctl dlq replay --error-code inv
expect "--dry-run" envrunctl dlq replay --d
expect_has "--offset" envrunctl dlq replay --all --
expect_has "--file" envrunctl send --
expect_has "--database-url" envrunctl leases --
expect "" envrunctl tail results --run ""
# A file name after --file.
expect_has "$1/ctl/envrunctl.bash" envrunctl send --file "$1/ctl/envrunctl.b"

if ((fails > 0)); then
    echo "$fails failure(s)" >&2
    exit 1
fi
echo "completion_test: ok"
