/* devstack: a throwaway PostgreSQL cluster (initdb + pg_ctl on loopback) and
 * an in-process librdkafka mock cluster reachable over TCP, for envrunctl dev
 * and the integration tests. Not thread-safe per object; each handle owns its
 * directory, child processes' cluster, rd_kafka_t and mock cluster. */

/* nftw() and its FTW_* flags are X/Open System Interfaces, not base POSIX. */
#define _XOPEN_SOURCE 700

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "worker/worker.h"

#define PG_INITDB         "/usr/lib/postgresql/15/bin/initdb"
#define PG_CTL            "/usr/lib/postgresql/15/bin/pg_ctl"
#define PG_USER           "postgres"
#define PG_START_TRIES    5
#define PG_READY_WAIT_MS  30000
#define PG_POLL_MS        50
#define PG_CONNINFO_MAX   512
#define PG_DB_NAME_MAX    63  /* NAMEDATALEN - 1 */
#define DEVSTACK_DIR_MAX  128 /* leaves room for the socket's name */
#define DEVSTACK_PATH_MAX 256
#define KAFKA_TOPIC_MAX   256

struct er_devstack_pg {
    char dir[DEVSTACK_DIR_MAX];       /* private 0700 directory, removed */
    char data_dir[DEVSTACK_PATH_MAX]; /* dir/data: the cluster */
    char log_path[DEVSTACK_PATH_MAX]; /* dir/postgres.log */
    char out_path[DEVSTACK_PATH_MAX]; /* dir/tools.log: initdb, pg_ctl */
    int port;
    char conninfo[PG_CONNINFO_MAX];
    bool is_running;
    bool is_dropping; /* root: children run as the postgres user */
    uid_t uid;
    gid_t gid;
};

struct er_devstack_kafka {
    rd_kafka_t *rk; /* owns the mock cluster; never connects anywhere */
    rd_kafka_mock_cluster_t *mcluster;
    const char *bootstraps; /* owned by mcluster */
};

/* ----------------------------------------------------------------
 * PostgreSQL
 * ---------------------------------------------------------------- */

/* Run argv (argv[0] an absolute path) in a child, as the postgres user when
 * pg->is_dropping, with stdin from /dev/null and stdout/stderr appended to
 * pg->out_path, and wait for it. Returns its exit status, or -1. The caller
 * may have threads (librdkafka), so the child only makes async-signal-safe
 * calls between fork and exec. */
static int run_tool(const struct er_devstack_pg *pg, char *const argv[])
{
    pid_t pid;
    int status = 0;
    int out_fd;
    int null_fd;

    out_fd =
        open(pg->out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (out_fd < 0)
        return -1;
    if (pg->is_dropping && fchown(out_fd, pg->uid, pg->gid) != 0) {
        close(out_fd);
        return -1;
    }
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) {
        close(out_fd);
        return -1;
    }

    pid = fork();
    if (pid < 0) {
        close(out_fd);
        close(null_fd);
        return -1;
    }
    if (pid == 0) {
        /* Supplementary groups stay as they are: setgroups() is not POSIX
         * and root's are root's own group, which postgres ignores. */
        if (pg->is_dropping && (setgid(pg->gid) != 0 || setuid(pg->uid) != 0))
            _exit(126);
        if (dup2(null_fd, STDIN_FILENO) < 0 ||
            dup2(out_fd, STDOUT_FILENO) < 0 || dup2(out_fd, STDERR_FILENO) < 0)
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    close(out_fd);
    close(null_fd);
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    if (!WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

int er_devstack_free_port(void)
{
    struct sockaddr_in addr;
    socklen_t addr_len = sizeof(addr);
    int fd;
    int port = -1;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &addr_len) == 0)
        port = ntohs(addr.sin_port);
    close(fd);
    return port;
}

static void sleep_ms(int ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Poll PQping until the server accepts connections or the deadline. */
static bool wait_ready(const char *conninfo, int timeout_ms)
{
    int64_t deadline = er_time_mono_ms() + timeout_ms;

    for (;;) {
        if (PQping(conninfo) == PQPING_OK)
            return true;
        if (er_time_mono_ms() >= deadline)
            return false;
        sleep_ms(PG_POLL_MS);
    }
}

static int pg_ctl_start(struct er_devstack_pg *pg, int port)
{
    char opts[DEVSTACK_DIR_MAX + 256];
    char *argv[] = { PG_CTL, "-D", pg->data_dir, "-l", pg->log_path, "-o",
                     opts,   "-w", "-t",         "30", "start",      NULL };

    /* pg_ctl hands -o to a shell: the directory is quoted, and it contains
     * no quote (checked at creation). */
    snprintf(opts, sizeof(opts),
             "-c listen_addresses=127.0.0.1 -c port=%d "
             "-c unix_socket_directories='%s' -c fsync=off "
             "-c max_connections=200",
             port, pg->dir);
    return run_tool(pg, argv);
}

static int pg_ctl_stop(struct er_devstack_pg *pg)
{
    char *argv[] = { PG_CTL, "-D", pg->data_dir, "-m",   "fast",
                     "-w",   "-t", "30",         "stop", NULL };

    return run_tool(pg, argv);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0; /* remove as much as possible */
}

void er_devstack_rmtree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Look up the postgres user (only when root: initdb refuses to run as root).
 */
static int lookup_user(struct er_devstack_pg *pg, struct er_err *err)
{
    struct passwd pwd;
    struct passwd *found = NULL;
    char buf[4096];
    int rc;

    rc = getpwnam_r(PG_USER, &pwd, buf, sizeof(buf), &found);
    if (rc != 0 || found == NULL)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                          "user %s not found (initdb refuses to run as root)",
                          PG_USER);
    pg->uid = pwd.pw_uid;
    pg->gid = pwd.pw_gid;
    pg->is_dropping = true;
    return 0;
}

static int make_dir(struct er_devstack_pg *pg, const char *base_dir,
                    struct er_err *err)
{
    char ebuf[128];
    int n;

    if (base_dir == NULL || base_dir[0] == '\0')
        base_dir = getenv("TMPDIR");
    if (base_dir == NULL || base_dir[0] == '\0')
        base_dir = "/tmp";
    n = snprintf(pg->dir, sizeof(pg->dir), "%s/envrun-pg-XXXXXX", base_dir);
    /* Unix socket paths are capped near 108 bytes (sun_path). */
    if (n < 0 || n >= 80 || strchr(base_dir, '\'') != NULL)
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "dev stack base directory unusable: %s", base_dir);
    if (mkdtemp(pg->dir) == NULL) {
        int e = errno;

        pg->dir[0] = '\0';
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                          "mkdtemp under %s failed: %s", base_dir,
                          er_strerror(e, ebuf, sizeof(ebuf)));
    }
    snprintf(pg->data_dir, sizeof(pg->data_dir), "%s/data", pg->dir);
    snprintf(pg->log_path, sizeof(pg->log_path), "%s/postgres.log", pg->dir);
    snprintf(pg->out_path, sizeof(pg->out_path), "%s/tools.log", pg->dir);
    if (pg->is_dropping && chown(pg->dir, pg->uid, pg->gid) != 0) {
        int e = errno;

        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                          "chown %s to %s failed: %s", pg->dir, PG_USER,
                          er_strerror(e, ebuf, sizeof(ebuf)));
    }
    return 0;
}

struct er_devstack_pg *er_devstack_pg_start(const char *base_dir,
                                            struct er_err *err)
{
    struct er_devstack_pg *pg = NULL;
    char *initdb_argv[] = { PG_INITDB,    "-D",        NULL,
                            "-A",         "trust",     "-U",
                            PG_USER,      "-E",        "UTF8",
                            "--locale=C", "--no-sync", "--no-instructions",
                            NULL };
    int tries;
    int rc;

    pg = er_calloc(1, sizeof(*pg));
    if (pg == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }
    if (geteuid() == 0 && lookup_user(pg, err) != 0)
        goto fail;
    if (make_dir(pg, base_dir, err) != 0)
        goto fail;

    initdb_argv[2] = pg->data_dir;
    rc = run_tool(pg, initdb_argv);
    if (rc != 0) {
        er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                   "initdb failed (status %d), see %s", rc, pg->out_path);
        goto fail;
    }

    /* The port is free when picked but another process may take it before
     * the postmaster binds it: try a few. */
    for (tries = 0; tries < PG_START_TRIES; tries++) {
        pg->port = er_devstack_free_port();
        if (pg->port <= 0)
            continue;
        if (pg_ctl_start(pg, pg->port) == 0)
            break;
    }
    if (tries == PG_START_TRIES) {
        er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                   "pg_ctl start failed %d times, see %s", PG_START_TRIES,
                   pg->log_path);
        goto fail;
    }
    pg->is_running = true;
    snprintf(pg->conninfo, sizeof(pg->conninfo),
             "host=127.0.0.1 port=%d user=%s dbname=postgres "
             "connect_timeout=10",
             pg->port, PG_USER);
    if (!wait_ready(pg->conninfo, PG_READY_WAIT_MS)) {
        er_err_set(err, ER_ETIMEDOUT, ER_ERRCLASS_FATAL,
                   "postgres on port %d not ready after %d ms, see %s",
                   pg->port, PG_READY_WAIT_MS, pg->log_path);
        goto fail;
    }
    return pg;

fail:
    er_devstack_pg_stop(pg);
    return NULL;
}

const char *er_devstack_pg_conninfo(const struct er_devstack_pg *pg)
{
    ER_ASSERT(pg != NULL);
    return pg->conninfo;
}

static bool is_db_name(const char *name)
{
    size_t i;

    for (i = 0; name[i] != '\0'; i++) {
        char c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return i > 0 && i <= PG_DB_NAME_MAX;
}

int er_devstack_pg_create_db(const struct er_devstack_pg *pg, const char *name,
                             char *out, size_t out_len, struct er_err *err)
{
    char sql[PG_DB_NAME_MAX + 32];
    PGconn *conn = NULL;
    PGresult *res = NULL;
    int n;
    int rc = 0;

    ER_ASSERT(pg != NULL && name != NULL && out != NULL);
    if (!is_db_name(name))
        return er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                          "database name must match [a-z0-9_]{1,63}");
    n = snprintf(out, out_len,
                 "host=127.0.0.1 port=%d user=%s dbname=%s "
                 "connect_timeout=10",
                 pg->port, PG_USER, name);
    if (n < 0 || (size_t)n >= out_len)
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                          "connection string does not fit %zu bytes", out_len);

    conn = PQconnectdb(pg->conninfo);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        rc = er_err_set(err, ER_EPG, ER_ERRCLASS_FATAL,
                        "connect to the dev cluster failed: %s",
                        conn != NULL ? PQerrorMessage(conn) : "no memory");
        goto out;
    }
    /* A quoted identifier: the name is validated above, so no escaping. */
    snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s\"", name);
    res = PQexec(conn, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = er_err_set(err, ER_EPG, ER_ERRCLASS_FATAL,
                        "create database %s failed: %s", name,
                        PQerrorMessage(conn));
        goto out;
    }

out:
    PQclear(res);
    PQfinish(conn);
    return rc;
}

void er_devstack_pg_stop(struct er_devstack_pg *pg)
{
    if (pg == NULL)
        return;
    if (pg->is_running && pg_ctl_stop(pg) != 0)
        ER_LOG_WARN("devstack", "pg_ctl stop failed, see %s", pg->out_path);
    if (pg->dir[0] != '\0')
        er_devstack_rmtree(pg->dir);
    er_free(pg);
}

/* ----------------------------------------------------------------
 * Kafka mock cluster
 * ---------------------------------------------------------------- */

struct er_devstack_kafka *er_devstack_kafka_start(int broker_cnt,
                                                  int partition_cnt,
                                                  const char *topic_prefix,
                                                  struct er_err *err)
{
    static const char *const suffixes[] = { "commands", "results",
                                            "lease-events", "activity",
                                            "commands.dlq" };
    struct er_devstack_kafka *k = NULL;
    rd_kafka_conf_t *conf = NULL;
    char errstr[512];
    char topic[KAFKA_TOPIC_MAX];
    size_t i;

    ER_ASSERT(topic_prefix != NULL);
    if (broker_cnt < 1 || partition_cnt < 1) {
        er_err_set(err, ER_EINVAL, ER_ERRCLASS_FATAL,
                   "mock cluster needs at least one broker and partition");
        return NULL;
    }
    k = er_calloc(1, sizeof(*k));
    if (k == NULL) {
        er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        return NULL;
    }

    /* The handle exists only to own the mock cluster. It has no bootstrap
     * servers, about which it would warn: keep its log to errors. Its
     * brokers' sockets take its socket.nagle.disable: without it a
     * produce's answer could wait ~40 ms for the client's delayed ACK, where
     * a real broker (TCP_NODELAY) answers at once. */
    conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, er_kafka_on_log);
    if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "socket.nagle.disable", "true", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL, "mock conf: %s", errstr);
        goto fail;
    }
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (k->rk == NULL) {
        er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL, "mock owner handle: %s",
                   errstr);
        goto fail;
    }
    conf = NULL; /* rd_kafka_new took it */

    k->mcluster = rd_kafka_mock_cluster_new(k->rk, broker_cnt);
    if (k->mcluster == NULL) {
        er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL,
                   "rd_kafka_mock_cluster_new failed");
        goto fail;
    }
    k->bootstraps = rd_kafka_mock_cluster_bootstraps(k->mcluster);

    for (i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        rd_kafka_resp_err_t kerr;
        int n =
            snprintf(topic, sizeof(topic), "%s%s", topic_prefix, suffixes[i]);

        if (n < 0 || (size_t)n >= sizeof(topic)) {
            er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                       "topic prefix too long");
            goto fail;
        }
        kerr = rd_kafka_mock_topic_create(k->mcluster, topic, partition_cnt, 1);
        if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
            er_err_set(err, ER_EKAFKA, ER_ERRCLASS_FATAL, "mock topic %s: %s",
                       topic, rd_kafka_err2str(kerr));
            goto fail;
        }
    }
    return k;

fail:
    if (conf != NULL)
        rd_kafka_conf_destroy(conf);
    er_devstack_kafka_stop(k);
    return NULL;
}

const char *er_devstack_kafka_bootstraps(const struct er_devstack_kafka *k)
{
    ER_ASSERT(k != NULL && k->bootstraps != NULL);
    return k->bootstraps;
}

void *er_devstack_kafka_mock(struct er_devstack_kafka *k)
{
    ER_ASSERT(k != NULL);
    return k->mcluster;
}

void er_devstack_kafka_stop(struct er_devstack_kafka *k)
{
    if (k == NULL)
        return;
    if (k->mcluster != NULL)
        rd_kafka_mock_cluster_destroy(k->mcluster);
    if (k->rk != NULL)
        rd_kafka_destroy(k->rk);
    er_free(k);
}
