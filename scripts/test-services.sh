#!/usr/bin/env bash
# Start and stop the real servers the test suite talks to, all throwaway and
# on loopback: a PostgreSQL 15 cluster on a free port.
#
#   scripts/test-services.sh start DIR   start them; DIR/env holds the exports
#   scripts/test-services.sh stop DIR    stop them and remove DIR
#
# DIR/env sets ENVRUN_TEST_PG_URL (a libpq connection string). initdb refuses
# to run as root, so as root the cluster belongs to the `postgres` user.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_FIRST_PORT=${PG_FIRST_PORT:-55432}
PG_PORT_TRIES=${PG_PORT_TRIES:-50}

die() {
    echo "test-services: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}

# Run a command as the cluster's owner: `postgres` when we are root.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The data directory of the cluster started into DIR (see start_pg).
pg_data_of() {
    local dir=$1
    if [[ -f $dir/pgdata ]]; then
        cat "$dir/pgdata"
    else
        echo "$dir/pg"
    fi
}

start_pg() {
    local dir=$1 data port tries

    [[ -x $PG_BIN/initdb ]] || die "no PostgreSQL 15 in $PG_BIN (run scripts/install-deps.sh)"

    # The cluster lives in DIR/pg when its owner can reach DIR and the unix
    # socket path fits the 107-byte limit; otherwise (a clone under a private
    # home directory, a long path) in a private directory under /tmp that
    # DIR/pgdata points to.
    data=$dir/pg
    mkdir -p "$data"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$data"
    fi
    chmod 0700 "$data"
    if ! as_owner test -w "$data" || ((${#data} > 80)) || [[ $data == *' '* ]]; then
        rm -rf "$data"
        data=$(mktemp -d /tmp/envrun-pg.XXXXXXXX)
        if [[ $(id -u) -eq 0 ]]; then
            chown postgres: "$data"
        fi
        echo "$data" >"$dir/pgdata"
    fi

    as_owner "$PG_BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 \
        --locale=C.UTF-8 --no-instructions >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        die "initdb failed"
    }

    # Try ports upwards until the server binds one: another cluster or a
    # second checkout may hold the first few.
    port=$PG_FIRST_PORT
    tries=0
    while :; do
        if ((tries >= PG_PORT_TRIES)); then
            die "no free port in $PG_FIRST_PORT..$((PG_FIRST_PORT + tries - 1))"
        fi
        tries=$((tries + 1))
        if port_in_use "$port"; then
            port=$((port + 1))
            continue
        fi
        rm -f "$data/server.log" # judge this attempt by its own messages
        if as_owner "$PG_BIN/pg_ctl" -D "$data" -l "$data/server.log" -w \
            -t 60 -o "-c listen_addresses=127.0.0.1 -c port=$port \
-c unix_socket_directories=$data -c fsync=off -c synchronous_commit=off \
-c full_page_writes=off -c max_connections=200" start >/dev/null 2>&1; then
            break
        fi
        if ! grep -qiE 'could not (bind|create).*(socket|address)|already in use' \
            "$data/server.log" 2>/dev/null; then
            cat "$data/server.log" >&2 2>/dev/null || true
            die "postgres did not start on port $port"
        fi
        port=$((port + 1))
    done

    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30 ||
        die "postgres on port $port is not ready"

    cat >"$dir/env" <<EOF
export ENVRUN_TEST_PG_URL='host=127.0.0.1 port=$port user=postgres dbname=postgres'
EOF
    echo "test-services: postgres 15 on 127.0.0.1:$port (data $data)"
}

stop_pg() {
    local dir=$1 data
    data=$(pg_data_of "$dir")
    if [[ -f $data/postmaster.pid ]]; then
        as_owner "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop \
            >/dev/null 2>&1 || echo "test-services: pg_ctl stop failed" >&2
    fi
    if [[ -f $dir/pgdata ]]; then
        rm -rf "$data"
    fi
}

[[ $# -eq 2 ]] || usage
cmd=$1
dir=$2
[[ -n $dir && $dir != / ]] || usage

case $cmd in
start)
    # A leftover from an interrupted run is stopped and wiped first.
    if [[ -e $dir ]]; then
        stop_pg "$dir"
        rm -rf "$dir"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 0755 "$dir"
    # On any failure below, leave nothing behind (the logs went to stderr).
    trap 'stop_pg "$dir"; rm -rf "$dir"' EXIT
    start_pg "$dir"
    trap - EXIT
    ;;
stop)
    if [[ -e $dir ]]; then
        stop_pg "$dir"
        rm -rf "$dir"
    fi
    ;;
*)
    usage
    ;;
esac
