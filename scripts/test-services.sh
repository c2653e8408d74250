#!/usr/bin/env bash
# Start and stop the real servers the test suite talks to, all throwaway and
# on loopback: a PostgreSQL 15 cluster and an OpenSSH server, each on a free
# port.
#
#   scripts/test-services.sh start DIR   start them; DIR/env holds the exports
#   scripts/test-services.sh stop DIR    stop them and remove DIR
#
# DIR/env sets ENVRUN_TEST_PG_URL (a libpq connection string). initdb refuses
# to run as root, so as root the cluster belongs to the `postgres` user.
# The cluster runs without durability (fsync, synchronous_commit and
# full_page_writes off), which tests do not need; with ENVRUN_PG_DURABLE=1
# at `start` it keeps PostgreSQL's durable defaults instead, as `make bench`
# wants for figures a production server would give.
#
# The sshd (as root only: it needs a local account to log in to) lets the
# user SSH_USER in with a key made for this DIR; start_ssh lists the
# ENVRUN_TEST_SSH_* variables it adds to DIR/env. Several DIRs may run at
# once: each has its own sshd, port, keys and remote workspace root.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_FIRST_PORT=${PG_FIRST_PORT:-55432}
PG_PORT_TRIES=${PG_PORT_TRIES:-50}
SSHD_BIN=${SSHD_BIN:-/usr/sbin/sshd}
SSH_USER=${SSH_USER:-envrun-ssh}
SSH_FIRST_PORT=${SSH_FIRST_PORT:-52222}
SSH_PORT_TRIES=${SSH_PORT_TRIES:-50}

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
    local dir=$1 data port tries durability

    # PostgreSQL's defaults are durable; tests trade that for speed.
    durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    if [[ ${ENVRUN_PG_DURABLE:-} == 1 ]]; then
        durability=""
    fi

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
-c unix_socket_directories=$data $durability -c max_connections=200" \
            start >/dev/null 2>&1; then
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
    if [[ -n $durability ]]; then
        echo "test-services: postgres 15 on 127.0.0.1:$port (data $data)"
    else
        echo "test-services: postgres 15 on 127.0.0.1:$port (data $data, durable)"
    fi
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

# The tag that names this DIR's key in authorized_keys and its remote
# workspace root: its sshd port, unique among the running instances.
ssh_tag_of() {
    if [[ -f $1/ssh/port ]]; then
        echo "envrun-test-$(cat "$1/ssh/port")"
    fi
}

# Edit the user's authorized_keys under a lock, as instances of other
# checkouts add and remove their own lines too. $1: the tag (the key's
# comment); $2: the public key line to add, or empty to only remove.
edit_authorized_keys() {
    local tag=$1 line=$2 home keys
    home=$(getent passwd "$SSH_USER" | cut -d: -f6)
    [[ -n $home && -d $home ]] || return 0
    keys=$home/.ssh/authorized_keys
    install -d -m 0700 -o "$SSH_USER" -g "$SSH_USER" "$home/.ssh"
    (
        flock -w 30 9 || die "cannot lock $keys"
        touch "$keys"
        grep -v -E " $tag\$" "$keys" >"$keys.new" || true
        if [[ -n $line ]]; then
            echo "$line" >>"$keys.new"
        fi
        chown "$SSH_USER:" "$keys.new"
        chmod 0600 "$keys.new"
        mv -f "$keys.new" "$keys"
    ) 9>"$home/.ssh/.envrun-test.lock"
}

# The account the tests log in as: a normal user with a home and bash.
# With UsePAM no, sshd refuses a locked account ('!' in shadow) even for
# public keys, so the password field becomes '*' (no password, not locked).
ensure_ssh_user() {
    local shadow
    if ! getent passwd "$SSH_USER" >/dev/null; then
        useradd -m -s /bin/bash "$SSH_USER" ||
            die "cannot create user $SSH_USER"
    fi
    shadow=$(getent shadow "$SSH_USER" | cut -d: -f2)
    if [[ -z $shadow || $shadow == '!'* ]]; then
        usermod -p '*' "$SSH_USER"
    fi
}

# Remove a remote workspace root, unmounting first what tests mounted in it
# (a small tmpfs for the full-disk case), deepest first.
clear_ws() {
    local ws=$1 mnt
    [[ -n $ws && -e $ws ]] || return 0
    for mnt in $(awk -v p="$ws/" 'index($2, p) == 1 { print $2 }' \
        /proc/mounts | sort -r); do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null ||
            echo "test-services: cannot unmount $mnt" >&2
    done
    rm -rf --one-file-system "$ws"
}

# Pids of every descendant of pid $1 (the sshd listener's sessions).
descendants_of() {
    local kid
    for kid in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$kid"
        descendants_of "$kid"
    done
}

# True when pid $1 is the sshd started with the configuration file $2.
is_our_sshd() {
    [[ -r /proc/$1/cmdline ]] &&
        tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -F -- "$2"
}

# Start sshd on 127.0.0.1 and a free port, with a host key and a user key
# made here, and append to DIR/env: ENVRUN_TEST_SSH_HOST, _PORT, _USER, _KEY
# (the private key's path), _KNOWN_HOSTS (a known_hosts file for the
# server), _WORKSPACE_ROOT (a directory of the user's for this instance),
# _LOG (sshd's log, LogLevel VERBOSE) and _PID_FILE (the listener's pid).
start_ssh() {
    local dir=$1 sdir home ws port tries pid tag pub ok i

    if [[ $(id -u) -ne 0 ]]; then
        echo "test-services: not root, so no sshd: the ssh tests will fail" >&2
        return 0
    fi
    [[ -x $SSHD_BIN ]] || die "no $SSHD_BIN (run scripts/install-deps.sh)"
    command -v ssh-keygen >/dev/null || die "no ssh-keygen"

    sdir=$dir/ssh
    install -d -m 0700 "$sdir"
    ensure_ssh_user
    home=$(getent passwd "$SSH_USER" | cut -d: -f6)
    [[ -d $home ]] || die "$SSH_USER has no home directory $home"
    # StrictModes refuses keys under a group- or world-writable home.
    chmod go-w "$home"
    install -d -m 0755 -o "$SSH_USER" -g "$SSH_USER" "$home/ws"

    ssh-keygen -q -t ed25519 -N '' -C envrun-test-host \
        -f "$sdir/host_ed25519" >/dev/null || die "ssh-keygen (host) failed"
    # The privilege separation directory (Debian's service unit makes it).
    mkdir -p /run/sshd
    chmod 0755 /run/sshd

    port=$SSH_FIRST_PORT
    tries=0
    ok=0
    while ((tries < SSH_PORT_TRIES)); do
        tries=$((tries + 1))
        if port_in_use "$port"; then
            port=$((port + 1))
            continue
        fi
        cat >"$sdir/sshd_config" <<EOF
# Written by scripts/test-services.sh for the ssh integration tests.
ListenAddress 127.0.0.1:$port
HostKey $sdir/host_ed25519
PidFile $sdir/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers $SSH_USER
StrictModes yes
MaxSessions 50
MaxStartups 100:30:200
LoginGraceTime 30
LogLevel VERBOSE
PrintMotd no
X11Forwarding no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
        "$SSHD_BIN" -t -f "$sdir/sshd_config" 2>"$sdir/sshd-t.log" || {
            cat "$sdir/sshd-t.log" >&2
            die "sshd rejects its configuration"
        }
        rm -f "$sdir/sshd.log" "$sdir/sshd.pid"
        # -D: in the foreground, so a failed bind shows as an exit; setsid:
        # out of make's process group and terminal.
        setsid "$SSHD_BIN" -D -f "$sdir/sshd_config" -E "$sdir/sshd.log" \
            </dev/null >/dev/null 2>&1 &
        pid=$!
        for ((i = 0; i < 100; i++)); do
            if ! kill -0 "$pid" 2>/dev/null; then
                break
            fi
            if [[ -s $sdir/sshd.pid ]] && port_in_use "$port"; then
                ok=1
                break
            fi
            sleep 0.1
        done
        if ((ok)); then
            break
        fi
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        if ! grep -qiE 'bind|already in use' "$sdir/sshd.log" 2>/dev/null; then
            cat "$sdir/sshd.log" >&2 2>/dev/null || true
            die "sshd did not start on port $port"
        fi
        port=$((port + 1))
    done
    ((ok)) || die "no free ssh port in $SSH_FIRST_PORT..$((port - 1))"
    echo "$port" >"$sdir/port"
    # stop_ssh reads the account back: SSH_USER may differ by then.
    echo "$SSH_USER" >"$sdir/user"
    tag=$(ssh_tag_of "$dir")

    # The user's key, authorised under this instance's tag, and a workspace
    # root of this instance's own, so checkouts never meet.
    ssh-keygen -q -t ed25519 -N '' -C "$tag" -f "$sdir/id_ed25519" \
        >/dev/null || die "ssh-keygen (user) failed"
    edit_authorized_keys "$tag" "$(cat "$sdir/id_ed25519.pub")"
    ws=$home/ws/$tag
    clear_ws "$ws"
    install -d -m 0755 -o "$SSH_USER" -g "$SSH_USER" "$ws"

    pub=$(cut -d' ' -f1,2 "$sdir/host_ed25519.pub")
    echo "[127.0.0.1]:$port $pub" >"$sdir/known_hosts"
    chmod 0644 "$sdir/known_hosts"

    # Prove the whole path once: key, host key, account, shell, directory.
    if ! ssh -F /dev/null -i "$sdir/id_ed25519" -p "$port" \
        -o BatchMode=yes -o ConnectTimeout=10 -o IdentitiesOnly=yes \
        -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$sdir/known_hosts" \
        "$SSH_USER@127.0.0.1" "test -w '$ws'" 2>"$sdir/probe.log"; then
        cat "$sdir/probe.log" "$sdir/sshd.log" >&2 2>/dev/null || true
        die "cannot log in to the test sshd as $SSH_USER"
    fi

    cat >>"$dir/env" <<EOF
export ENVRUN_TEST_SSH_HOST='127.0.0.1'
export ENVRUN_TEST_SSH_PORT='$port'
export ENVRUN_TEST_SSH_USER='$SSH_USER'
export ENVRUN_TEST_SSH_KEY='$sdir/id_ed25519'
export ENVRUN_TEST_SSH_KNOWN_HOSTS='$sdir/known_hosts'
export ENVRUN_TEST_SSH_WORKSPACE_ROOT='$ws'
export ENVRUN_TEST_SSH_LOG='$sdir/sshd.log'
export ENVRUN_TEST_SSH_PID_FILE='$sdir/sshd.pid'
EOF
    echo "test-services: sshd on 127.0.0.1:$port (user $SSH_USER, workspace $ws)"
}

stop_ssh() {
    local dir=$1 sdir=$1/ssh pid tag home kids i
    [[ -d $sdir ]] || return 0
    tag=$(ssh_tag_of "$dir")
    if [[ -s $sdir/sshd.pid ]]; then
        pid=$(cat "$sdir/sshd.pid")
        if is_our_sshd "$pid" "$sdir/sshd_config"; then
            # The listener first, so no session starts, then the sessions
            # left (and what they run).
            kids=$(descendants_of "$pid")
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
            if [[ -n $kids ]]; then
                # shellcheck disable=SC2086 # one pid per word
                kill -KILL $kids 2>/dev/null || true
            fi
        fi
    fi
    if [[ -f $sdir/user ]]; then
        SSH_USER=$(cat "$sdir/user")
    fi
    if [[ -n $tag && $(id -u) -eq 0 ]]; then
        edit_authorized_keys "$tag" ""
        home=$(getent passwd "$SSH_USER" | cut -d: -f6)
        if [[ -n $home ]]; then
            clear_ws "$home/ws/$tag"
        fi
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
        dir=$(cd "$dir" && pwd)
        stop_ssh "$dir"
        stop_pg "$dir"
        rm -rf "$dir"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 0755 "$dir"
    # On any failure below, leave nothing behind (the logs went to stderr).
    trap 'stop_ssh "$dir"; stop_pg "$dir"; rm -rf "$dir"' EXIT
    start_pg "$dir"
    start_ssh "$dir"
    trap - EXIT
    ;;
stop)
    if [[ -e $dir ]]; then
        dir=$(cd "$dir" && pwd)
        stop_ssh "$dir"
        stop_pg "$dir"
        rm -rf "$dir"
    fi
    ;;
*)
    usage
    ;;
esac
