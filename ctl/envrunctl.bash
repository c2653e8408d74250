# bash completion for envrunctl (issue [9]). Source it, or install it as
# /usr/share/bash-completion/completions/envrunctl. Keep the option lists in
# step with `envrunctl SUB --help`: tests/ctl/docs_test.sh compares them.

_envrunctl_opts_dev="--demo --partitions --workers --help"
_envrunctl_opts_send="--brokers --topic-prefix --kind --company --agent --run
 --command-id --environment --adapter-type --issue --execution-workspace
 --execution-workspace-mode --expires-in --lease --workspace-json
 --runtime-overlay-json --status --failure-reason --raw-file --file --help"
_envrunctl_opts_tail="--brokers --topic-prefix --from-beginning --follow --max
 --timeout-ms --run --lease --company --outcome --format --help"
_envrunctl_opts_leases="--database-url --company --run --status --limit --format --help"
_envrunctl_opts_dlq_list="--brokers --topic-prefix --format --max --timeout-ms
 --partition --error-code --help"
_envrunctl_opts_dlq_replay="--all --offset --partition --error-code --dry-run
 --force --brokers --topic-prefix --format --timeout-ms --help"

_envrunctl()
{
    local cur prev sub words_left i
    COMPREPLY=()
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}

    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W "dev send tail leases dlq --help --version" \
            -- "$cur"))
        return 0
    fi
    sub=${COMP_WORDS[1]}
    if [[ $sub == dlq ]]; then
        if [[ $COMP_CWORD -eq 2 ]]; then
            COMPREPLY=($(compgen -W "list replay --help" -- "$cur"))
            return 0
        fi
        sub="dlq_${COMP_WORDS[2]}"
    fi

    # Values of the options that take one.
    case $prev in
    --format)
        COMPREPLY=($(compgen -W "json table" -- "$cur"))
        return 0 ;;
    --outcome)
        COMPREPLY=($(compgen -W "ok error deferred" -- "$cur"))
        return 0 ;;
    --kind)
        COMPREPLY=($(compgen -W "acquire realize release" -- "$cur"))
        return 0 ;;
    --status)
        if [[ $sub == send ]]; then
            COMPREPLY=($(compgen -W "released expired failed" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "active released expired failed" \
                -- "$cur"))
        fi
        return 0 ;;
    --error-code)
        COMPREPLY=($(compgen -W "undecodable unknown_schema too_large
            invalid_command" -- "$cur"))
        return 0 ;;
    --file|--raw-file)
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0 ;;
    --brokers|--topic-prefix|--company|--agent|--run|--command-id|\
    --environment|--adapter-type|--issue|--execution-workspace|\
    --execution-workspace-mode|--expires-in|--lease|--workspace-json|\
    --runtime-overlay-json|--failure-reason|--max|--timeout-ms|--partition|\
    --offset|--database-url|--limit|--partitions|--workers)
        return 0 ;;
    esac

    if [[ $sub == tail && $cur != -* ]]; then
        # The topic: the first word after tail that is neither an option
        # nor an option's value.
        words_left=0
        for ((i = 2; i < COMP_CWORD; i++)); do
            case ${COMP_WORDS[i]} in
            --from-beginning|--follow|--help|--*=*) ;;
            --*) ((i++)) ;;
            *) words_left=1 ;;
            esac
        done
        if [[ $words_left -eq 0 ]]; then
            COMPREPLY=($(compgen -W "commands results lease-events activity
                commands.dlq" -- "$cur"))
            return 0
        fi
    fi

    local var="_envrunctl_opts_${sub//-/_}"
    if [[ -n ${!var-} ]]; then
        COMPREPLY=($(compgen -W "${!var}" -- "$cur"))
    fi
    return 0
}

complete -F _envrunctl envrunctl
