/* harness: the integration tests' world (see harness.h): mock cluster,
 * databases, worker processes, a producer and a reader of the topics.
 * Single-threaded. Process-wide state: the PostgreSQL server and the codec,
 * set up on first use and torn down at exit. */
#include "tests/support/harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "worker/worker.h"

#define MAX_WORKERS    16
#define POLL_SLICE_MS  100
#define FLUSH_MS       10000
#define JSON_MAX_BYTES ((size_t)8 * 1024 * 1024)
#define MAX_DBS        8

extern char **environ;

static const char *const topic_suffixes[ER_HARNESS_TOPIC_CNT] = {
    [ER_HARNESS_RESULTS] = "results",
    [ER_HARNESS_LEASE_EVENTS] = "lease-events",
    [ER_HARNESS_ACTIVITY] = "activity",
    [ER_HARNESS_DLQ] = "commands.dlq",
    [ER_HARNESS_COMMANDS] = "commands",
};

struct rec_list {
    struct er_harness_record *v;
    size_t len;
    size_t cap;
};

struct er_harness_priv {
    struct er_devstack_kafka *kafka;
    rd_kafka_t *producer;
    rd_kafka_t *consumer;
    char topics[ER_HARNESS_TOPIC_CNT][128];
    struct rec_list recs[ER_HARNESS_TOPIC_CNT];
    struct er_harness_worker *workers[MAX_WORKERS];
    int worker_cnt;
    int delivery_errors;   /* failed deliveries since the last flush */
    char dbs[MAX_DBS][64]; /* databases made for this test */
    int db_cnt;
};

/* ----------------------------------------------------------------
 * Process-wide state: codec, PostgreSQL server
 * ---------------------------------------------------------------- */

static bool is_process_ready;
static struct er_devstack_pg *process_pg;       /* NULL: external server */
static char process_pg_url[ER_HARNESS_URL_MAX]; /* admin connection */

static void process_fini(void)
{
    er_devstack_pg_stop(process_pg);
    process_pg = NULL;
    er_codec_shutdown();
}

static int process_init(void)
{
    struct er_err err;
    const char *url;

    if (is_process_ready)
        return 0;
    er_err_clear(&err);
    er_log_setup(false, ER_LOG_WARN);
    if (er_codec_init(&err) != 0) {
        fprintf(stderr, "harness: codec init: %s\n", err.msg);
        return -1;
    }
    url = getenv("ENVRUN_TEST_PG_URL");
    if (url != NULL && url[0] != '\0') {
        snprintf(process_pg_url, sizeof(process_pg_url), "%s", url);
    } else {
        process_pg = er_devstack_pg_start(NULL, &err);
        if (process_pg == NULL) {
            fprintf(stderr, "harness: postgres: %s\n", err.msg);
            er_codec_shutdown();
            return -1;
        }
        snprintf(process_pg_url, sizeof(process_pg_url), "%s",
                 er_devstack_pg_conninfo(process_pg));
    }
    atexit(process_fini);
    is_process_ready = true;
    return 0;
}

/* Append value to out as a libpq keyword value in single quotes. */
static int append_quoted(struct er_buf *out, const char *value)
{
    const char *p;

    if (er_buf_append(out, "'", 1) != 0)
        return -1;
    for (p = value; *p != '\0'; p++) {
        if ((*p == '\'' || *p == '\\') && er_buf_append(out, "\\", 1) != 0)
            return -1;
        if (er_buf_append(out, p, 1) != 0)
            return -1;
    }
    return er_buf_append(out, "'", 1);
}

/* The admin conninfo with dbname replaced (works for URIs and keyword
 * strings alike). */
static int conninfo_with_db(const char *conninfo, const char *db, char *out,
                            size_t out_len)
{
    PQconninfoOption *opts = NULL;
    PQconninfoOption *o;
    char *errmsg = NULL;
    struct er_buf buf;
    int rc = -1;

    er_buf_init(&buf, 4096);
    opts = PQconninfoParse(conninfo, &errmsg);
    if (opts == NULL) {
        fprintf(stderr, "harness: bad conninfo: %s\n",
                errmsg != NULL ? errmsg : "out of memory");
        goto out;
    }
    for (o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL || strcmp(o->keyword, "dbname") == 0)
            continue;
        if (er_buf_printf(&buf, "%s=", o->keyword) != 0 ||
            append_quoted(&buf, o->val) != 0 ||
            er_buf_append(&buf, " ", 1) != 0)
            goto out;
    }
    if (er_buf_printf(&buf, "dbname=") != 0 || append_quoted(&buf, db) != 0)
        goto out;
    if (buf.len + 1 > out_len)
        goto out;
    memcpy(out, buf.data, buf.len + 1);
    rc = 0;

out:
    PQfreemem(errmsg);
    PQconninfoFree(opts);
    er_buf_fini(&buf);
    return rc;
}

static int create_db(const char *name, char *url, size_t url_len)
{
    struct er_err err;
    char sql[128];

    er_err_clear(&err);
    if (process_pg != NULL) {
        if (er_devstack_pg_create_db(process_pg, name, url, url_len, &err) !=
            0) {
            fprintf(stderr, "harness: %s\n", err.msg);
            return -1;
        }
        return 0;
    }
    snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s\"", name);
    if (er_harness_pg_exec(process_pg_url, sql, 0, NULL) != 0)
        return -1;
    return conninfo_with_db(process_pg_url, name, url, url_len);
}

/* ----------------------------------------------------------------
 * Small utilities
 * ---------------------------------------------------------------- */

static void sleep_ms(int ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int64_t er_harness_mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool is_name(const char *s, size_t max_len)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return i > 0 && i <= max_len;
}

/* Eight random hex digits (from a v4 UUID). */
static void rand_hex8(char out[9])
{
    char uuid[37];

    er_uuid_v4(uuid);
    memcpy(out, uuid, 8);
    out[8] = '\0';
}

static int rm_tree_files(const char *dir)
{
    /* The log directory holds plain files only: remove them, keep it. */
    char path[ER_HARNESS_PATH_MAX + 256];
    struct stat st;
    int i;

    for (i = 0; i < MAX_WORKERS * 4; i++) {
        snprintf(path, sizeof(path), "%s/worker-%d.log", dir, i);
        if (stat(path, &st) == 0)
            unlink(path);
    }
    return 0;
}

static int mkdir_p(const char *path)
{
    char tmp[ER_HARNESS_PATH_MAX];
    size_t i;
    size_t len = strlen(path);

    if (len == 0 || len >= sizeof(tmp))
        return -1;
    memcpy(tmp, path, len + 1);
    for (i = 1; i <= len; i++) {
        if (tmp[i] != '/' && tmp[i] != '\0')
            continue;
        tmp[i] = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return -1;
        tmp[i] = path[i];
    }
    return 0;
}

/* ----------------------------------------------------------------
 * Kafka clients
 * ---------------------------------------------------------------- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                        void *opaque)
{
    struct er_harness_priv *priv = opaque;

    (void)rk;
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "harness: delivery to %s failed: %s\n",
                rd_kafka_topic_name(msg->rkt), rd_kafka_err2str(msg->err));
        priv->delivery_errors++;
    }
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *val)
{
    char errstr[256];

    if (rd_kafka_conf_set(conf, name, val, errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        fprintf(stderr, "harness: kafka conf %s: %s\n", name, errstr);
        return -1;
    }
    return 0;
}

static rd_kafka_t *make_producer(struct er_harness *h)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;
    char errstr[256];
    const char *linger_ms = getenv("ER_HARNESS_LINGER_MS");

    if (linger_ms == NULL || linger_ms[0] == '\0')
        linger_ms = "1";
    if (conf_set(conf, "bootstrap.servers", h->brokers) != 0 ||
        conf_set(conf, "enable.idempotence", "true") != 0 ||
        conf_set(conf, "linger.ms", linger_ms) != 0 ||
        conf_set(conf, "message.max.bytes", "4000000") != 0 ||
        conf_set(conf, "log_level", "3") != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, h->priv);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        fprintf(stderr, "harness: producer: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

/* A consumer of every topic from offset 0, assigned directly: the group id
 * is needed by librdkafka's assign() but never joined or committed. */
static rd_kafka_t *make_consumer(struct er_harness *h)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_t *rk = NULL;
    char errstr[256];
    char group[64];
    char hex[9];
    const char *fetch_wait_ms = getenv("ER_HARNESS_FETCH_WAIT_MS");
    rd_kafka_resp_err_t kerr;
    int t;
    int p;

    /* The mock cluster holds every fetch for fetch.wait.max.ms, which a
     * benchmark's latencies would include. */
    if (fetch_wait_ms == NULL || fetch_wait_ms[0] == '\0')
        fetch_wait_ms = "50";
    rand_hex8(hex);
    snprintf(group, sizeof(group), "er-harness-%s", hex);
    if (conf_set(conf, "bootstrap.servers", h->brokers) != 0 ||
        conf_set(conf, "group.id", group) != 0 ||
        conf_set(conf, "enable.auto.commit", "false") != 0 ||
        conf_set(conf, "enable.auto.offset.store", "false") != 0 ||
        conf_set(conf, "auto.offset.reset", "earliest") != 0 ||
        conf_set(conf, "fetch.wait.max.ms", fetch_wait_ms) != 0 ||
        conf_set(conf, "log_level", "3") != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        fprintf(stderr, "harness: consumer: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    parts = rd_kafka_topic_partition_list_new(ER_HARNESS_TOPIC_CNT *
                                              h->partition_cnt);
    for (t = 0; t < ER_HARNESS_TOPIC_CNT; t++) {
        for (p = 0; p < h->partition_cnt; p++) {
            rd_kafka_topic_partition_list_add(parts, h->priv->topics[t], p)
                ->offset = RD_KAFKA_OFFSET_BEGINNING;
        }
    }
    kerr = rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "harness: assign: %s\n", rd_kafka_err2str(kerr));
        rd_kafka_destroy(rk);
        return NULL;
    }
    return rk;
}

/* ----------------------------------------------------------------
 * Harness
 * ---------------------------------------------------------------- */

/* With ER_HARNESS_PAPERCLIP_SCHEMA set (CTest does, for the era runs of
 * the lifecycle tests), the database starts as that era's control-plane
 * database: the file's tables are made before any worker migrates. */
static int apply_paperclip_schema(const char *url)
{
    const char *path = getenv("ER_HARNESS_PAPERCLIP_SCHEMA");
    char *sql;
    int rc;

    if (path == NULL || path[0] == '\0')
        return 0;
    sql = er_harness_read_text(path, ER_HARNESS_SQL_FILE_MAX);
    rc = sql != NULL ? er_harness_pg_exec(url, sql, 0, NULL) : -1;
    if (rc != 0)
        fprintf(stderr, "harness: cannot apply %s\n", path);
    er_free(sql);
    return rc;
}

struct er_harness *er_harness_new(const char *name, int partition_cnt,
                                  const char *prefix)
{
    struct er_harness *h = NULL;
    struct er_err err;
    char hex[9];
    int t;

    er_err_clear(&err);
    if (!is_name(name, 40) || partition_cnt < 1) {
        fprintf(stderr, "harness: bad test name or partition count\n");
        return NULL;
    }
    if (process_init() != 0)
        return NULL;
    h = er_calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->priv = er_calloc(1, sizeof(*h->priv));
    if (h->priv == NULL)
        goto fail;
    snprintf(h->name, sizeof(h->name), "%s", name);
    snprintf(h->prefix, sizeof(h->prefix), "%s",
             prefix != NULL ? prefix : "envrun.");
    h->partition_cnt = partition_cnt;
    for (t = 0; t < ER_HARNESS_TOPIC_CNT; t++)
        er_harness_topic_name(h, topic_suffixes[t], h->priv->topics[t],
                              sizeof(h->priv->topics[t]));

    snprintf(h->dir, sizeof(h->dir), "%s/it-logs/%s", ER_BUILD_DIR, name);
    if (mkdir_p(h->dir) != 0) {
        fprintf(stderr, "harness: cannot create %s\n", h->dir);
        goto fail;
    }
    rm_tree_files(h->dir);

    rand_hex8(hex);
    snprintf(h->db_name, sizeof(h->db_name), "it_%s_%s", name, hex);
    if (create_db(h->db_name, h->db_url, sizeof(h->db_url)) != 0)
        goto fail;
    snprintf(h->priv->dbs[h->priv->db_cnt++], sizeof(h->priv->dbs[0]), "%s",
             h->db_name);
    if (apply_paperclip_schema(h->db_url) != 0)
        goto fail;

    h->priv->kafka = er_devstack_kafka_start(1, partition_cnt, h->prefix, &err);
    if (h->priv->kafka == NULL) {
        fprintf(stderr, "harness: mock cluster: %s\n", err.msg);
        goto fail;
    }
    h->brokers = er_devstack_kafka_bootstraps(h->priv->kafka);
    h->priv->producer = make_producer(h);
    if (h->priv->producer == NULL)
        goto fail;
    h->priv->consumer = make_consumer(h);
    if (h->priv->consumer == NULL)
        goto fail;
    return h;

fail:
    er_harness_destroy(h);
    return NULL;
}

/* On a server of the test's own (ENVRUN_TEST_PG_URL) drop the databases
 * unless ENVRUN_TEST_KEEP_DB is set; a dev-stack cluster goes at exit. */
static void drop_dbs(struct er_harness *h)
{
    const char *keep = getenv("ENVRUN_TEST_KEEP_DB");
    char sql[128];
    int i;

    if (process_pg != NULL || (keep != NULL && keep[0] != '\0'))
        return;
    for (i = 0; i < h->priv->db_cnt; i++) {
        snprintf(sql, sizeof(sql),
                 "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)",
                 h->priv->dbs[i]);
        er_harness_pg_exec(process_pg_url, sql, 0, NULL);
    }
}

static void record_fini(struct er_harness_record *r)
{
    er_free(r->key);
    er_free(r->value);
    json_decref(r->json);
    er_free(r->hdr_error);
    er_free(r->hdr_error_code);
    er_free(r->hdr_redacted);
    er_free(r->hdr_traceparent);
}

void er_harness_destroy(struct er_harness *h)
{
    int i;
    size_t j;

    if (h == NULL)
        return;
    if (h->priv != NULL) {
        for (i = 0; i < h->priv->worker_cnt; i++) {
            struct er_harness_worker *w = h->priv->workers[i];

            if (w->pid > 0)
                er_harness_worker_stop(w, SIGKILL, 5000);
            er_free(w);
        }
        if (h->priv->consumer != NULL) {
            rd_kafka_consumer_close(h->priv->consumer);
            rd_kafka_destroy(h->priv->consumer);
        }
        if (h->priv->producer != NULL) {
            rd_kafka_flush(h->priv->producer, 1000);
            rd_kafka_destroy(h->priv->producer);
        }
        er_devstack_kafka_stop(h->priv->kafka);
        drop_dbs(h);
        for (i = 0; i < ER_HARNESS_TOPIC_CNT; i++) {
            for (j = 0; j < h->priv->recs[i].len; j++)
                record_fini(&h->priv->recs[i].v[j]);
            er_free(h->priv->recs[i].v);
        }
        er_free(h->priv);
    }
    er_free(h);
}

bool er_harness_stop_workers(struct er_harness *h)
{
    static const char *const marks[] = { "Sanitizer", "runtime error:",
                                         "assertion failed:" };
    bool is_clean = true;
    int i;
    size_t m;

    if (h == NULL || h->priv == NULL)
        return true;
    for (i = 0; i < h->priv->worker_cnt; i++) {
        struct er_harness_worker *w = h->priv->workers[i];
        char *log = NULL;

        if (w->pid > 0) {
            int rc = er_harness_worker_stop(w, SIGTERM, 15000);

            if (rc != 0) {
                fprintf(stderr, "harness: %s: SIGTERM gave exit %d\n",
                        w->log_path, rc);
                is_clean = false;
            }
        }
        log = er_harness_worker_log(w);

        for (m = 0; log != NULL && m < sizeof(marks) / sizeof(marks[0]); m++) {
            const char *hit = strstr(log, marks[m]);

            if (hit != NULL) {
                fprintf(stderr, "harness: %s reports: %.2000s\n", w->log_path,
                        hit);
                is_clean = false;
            }
        }
        er_free(log);
    }
    return is_clean;
}

bool er_harness_is_instance_era(const struct er_harness *h)
{
    /* A database with no environments yet gets the seed-era tables. */
    return er_harness_pg_count(
               h->db_url,
               "SELECT CASE WHEN to_regclass('environments') IS NULL THEN 1 "
               "ELSE (SELECT count(*) FROM information_schema.columns WHERE "
               "table_schema = current_schema() AND table_name = "
               "'environments' AND column_name = 'company_id') END",
               0, NULL) == 0;
}

void *er_harness_mock(struct er_harness *h)
{
    return er_devstack_kafka_mock(h->priv->kafka);
}

int er_harness_db_new(struct er_harness *h, const char *tag, char *url,
                      size_t url_len)
{
    char *name;
    char hex[9];
    int n;

    if (!is_name(tag, 10) || h->priv->db_cnt >= MAX_DBS)
        return -1;
    rand_hex8(hex);
    /* Room enough: "it_" + 40 + "_" + 10 + "_" + 8 is 63, PostgreSQL's cap. */
    name = h->priv->dbs[h->priv->db_cnt];
    n = snprintf(name, sizeof(h->priv->dbs[0]), "it_%s_%s_%s", h->name, tag,
                 hex);
    if (n < 0 || (size_t)n >= sizeof(h->priv->dbs[0]) ||
        create_db(name, url, url_len) != 0)
        return -1;
    h->priv->db_cnt++;
    return 0;
}

void er_harness_topic_name(const struct er_harness *h, const char *suffix,
                           char *out, size_t out_len)
{
    snprintf(out, out_len, "%s%s", h->prefix, suffix);
}

/* ----------------------------------------------------------------
 * Workers
 * ---------------------------------------------------------------- */

static char *env_pair(const char *name, const char *value)
{
    size_t len = strlen(name) + strlen(value) + 2;
    char *s = er_malloc(len);

    if (s != NULL)
        snprintf(s, len, "%s=%s", name, value);
    return s;
}

struct er_harness_worker *
er_harness_worker_start(struct er_harness *h,
                        const struct er_harness_worker_opts *opts)
{
    static const struct er_harness_worker_opts no_opts = { 0 };
    struct er_harness_worker *w = NULL;
    char **envp = NULL;
    char *owned[10] = { NULL };
    size_t owned_cnt = 0;
    size_t env_cnt = 0;
    size_t extra_cnt = 0;
    size_t n = 0;
    size_t i;
    char num[32];
    char addr[64];
    const char *bin;
    char *argv[2] = { NULL, NULL };
    int log_fd = -1;
    int null_fd = -1;
    pid_t pid;
    pid_t parent = getpid();

    if (opts == NULL)
        opts = &no_opts;
    if (h->priv->worker_cnt >= MAX_WORKERS) {
        fprintf(stderr, "harness: too many workers\n");
        return NULL;
    }
    bin = getenv("ENVRUN_TEST_WORKER_BIN");
    if (bin == NULL || bin[0] == '\0')
        bin = ER_BUILD_DIR "/envrun-worker";
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "harness: %s is not built\n", bin);
        return NULL;
    }
    w = er_calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->pid = -1;
    snprintf(w->log_path, sizeof(w->log_path), "%s/worker-%d.log", h->dir,
             h->priv->worker_cnt);

    while (environ[env_cnt] != NULL)
        env_cnt++;
    while (opts->env != NULL && opts->env[extra_cnt] != NULL)
        extra_cnt++;
    envp = er_calloc(env_cnt + extra_cnt + 10, sizeof(*envp));
    if (envp == NULL)
        goto fail;
    /* glibc's getenv returns the first match: extras come first so they
     * override the defaults after them. */
    for (i = 0; i < extra_cnt; i++)
        envp[n++] = (char *)(uintptr_t)opts->env[i];
    snprintf(num, sizeof(num), "%d",
             opts->concurrency > 0 ? opts->concurrency : 4);
    if (opts->has_http) {
        w->http_port = er_devstack_free_port();
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", w->http_port);
    } else {
        snprintf(addr, sizeof(addr), "off");
    }
    owned[owned_cnt++] = env_pair("ENVRUN_KAFKA_BROKERS", h->brokers);
    owned[owned_cnt++] = env_pair(
        "ENVRUN_DATABASE_URL", opts->db_url != NULL ? opts->db_url : h->db_url);
    owned[owned_cnt++] = env_pair("ENVRUN_TOPIC_PREFIX", h->prefix);
    owned[owned_cnt++] = env_pair("ENVRUN_HTTP_ADDR", addr);
    owned[owned_cnt++] = env_pair("ENVRUN_LOG_FORMAT", "json");
    owned[owned_cnt++] = env_pair("ENVRUN_CONCURRENCY", num);
    /* The tests' local workspaces live in the harness directory. */
    owned[owned_cnt++] = env_pair("ENVRUN_WORKSPACE_ROOTS", h->dir);
    /* librdkafka 2.0.2's mock cluster can hold a group join (two members
     * starting together, or one after a member left) until a session times
     * out: 45 s by default. A short session keeps every test's group
     * settling within its waits. A test's own ENVRUN_KAFKA_PROPS (an extra,
     * first in envp) wins. */
    owned[owned_cnt++] =
        env_pair("ENVRUN_KAFKA_PROPS",
                 "session.timeout.ms=6000,heartbeat.interval.ms=500");
    for (i = 0; i < owned_cnt; i++) {
        if (owned[i] == NULL)
            goto fail;
        envp[n++] = owned[i];
    }
    for (i = 0; i < env_cnt; i++) {
        if (strncmp(environ[i], "ENVRUN_", 7) != 0)
            envp[n++] = environ[i];
    }
    envp[n] = NULL;

    log_fd = open(w->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (log_fd < 0 || null_fd < 0) {
        fprintf(stderr, "harness: cannot open %s\n", w->log_path);
        goto fail;
    }
    argv[0] = (char *)(uintptr_t)bin;

    pid = fork();
    if (pid < 0)
        goto fail;
    if (pid == 0) {
        /* Die with the test, so a crashed test leaves no worker behind. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        if (dup2(null_fd, STDIN_FILENO) < 0 ||
            dup2(log_fd, STDOUT_FILENO) < 0 || dup2(log_fd, STDERR_FILENO) < 0)
            _exit(126);
        execve(bin, argv, envp);
        _exit(127);
    }
    w->pid = pid;
    h->priv->workers[h->priv->worker_cnt++] = w;
    close(log_fd);
    close(null_fd);
    for (i = 0; i < owned_cnt; i++)
        er_free(owned[i]);
    er_free(envp);
    return w;

fail:
    if (log_fd >= 0)
        close(log_fd);
    if (null_fd >= 0)
        close(null_fd);
    for (i = 0; i < owned_cnt; i++)
        er_free(owned[i]);
    er_free(envp);
    er_free(w);
    return NULL;
}

static int status_code(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

/* Reap the worker if it has exited; true when it has (now or before). */
static bool try_reap(struct er_harness_worker *w)
{
    pid_t r;
    int status = 0;

    if (w->pid <= 0)
        return true;
    r = waitpid(w->pid, &status, WNOHANG);
    if (r == w->pid || (r < 0 && errno == ECHILD)) {
        w->wait_status = status;
        w->pid = -1;
        return true;
    }
    return false;
}

int er_harness_worker_wait_exit(struct er_harness_worker *w, int timeout_ms)
{
    int64_t deadline = er_time_mono_ms() + timeout_ms;

    for (;;) {
        if (try_reap(w))
            return status_code(w->wait_status);
        if (er_time_mono_ms() >= deadline)
            return -2;
        sleep_ms(10);
    }
}

struct er_harness_worker *
er_harness_worker_start_warm(struct er_harness *h,
                             const struct er_harness_worker_opts *opts)
{
    struct er_harness_worker *w = er_harness_worker_start(h, opts);
    struct er_harness_run run;
    struct er_harness_cmd acq;

    if (w == NULL)
        return NULL;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&acq, &run);
    if (er_harness_send(h, &acq.cmd) != 0)
        return NULL;
    if (er_harness_wait_result(h, acq.command_id, ER_HARNESS_FIRST_WAIT_MS) ==
        NULL) {
        fprintf(stderr, "harness: worker gave no first result\n");
        er_harness_worker_dump_log(w, 4000);
        return NULL;
    }
    return w;
}

int er_harness_worker_stop(struct er_harness_worker *w, int sig, int timeout_ms)
{
    int rc;

    if (w->pid <= 0)
        return status_code(w->wait_status);
    kill(w->pid, sig);
    rc = er_harness_worker_wait_exit(w, timeout_ms);
    if (rc != -2)
        return rc;
    fprintf(stderr, "harness: worker %d ignored signal %d for %d ms\n",
            (int)w->pid, sig, timeout_ms);
    kill(w->pid, SIGKILL);
    er_harness_worker_wait_exit(w, 10000);
    return -1;
}

bool er_harness_worker_is_alive(struct er_harness_worker *w)
{
    return !try_reap(w);
}

char *er_harness_worker_log(const struct er_harness_worker *w)
{
    /* A worker that has not written yet has an empty log. */
    char *log = er_harness_read_text(w->log_path, (size_t)256 * 1024 * 1024);

    return log != NULL ? log : er_strdup("");
}

char *er_harness_read_text(const char *path, size_t max_len)
{
    struct er_buf buf;
    char chunk[4096];
    ssize_t r;
    size_t len;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    er_buf_init(&buf, max_len);
    for (;;) {
        r = read(fd, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (er_buf_append(&buf, chunk, (size_t)r) != 0) {
            close(fd);
            er_buf_fini(&buf);
            return NULL;
        }
    }
    close(fd);
    if (r < 0 || er_buf_append(&buf, "", 1) != 0) {
        er_buf_fini(&buf);
        return NULL;
    }
    return (char *)er_buf_take(&buf, &len);
}

bool er_harness_worker_log_contains(const struct er_harness_worker *w,
                                    const char *needle)
{
    char *log = er_harness_worker_log(w);
    bool is_found = log != NULL && strstr(log, needle) != NULL;

    er_free(log);
    return is_found;
}

bool er_harness_worker_wait_log(const struct er_harness_worker *w,
                                const char *needle, int timeout_ms)
{
    int64_t deadline = er_time_mono_ms() + timeout_ms;

    for (;;) {
        if (er_harness_worker_log_contains(w, needle))
            return true;
        if (er_time_mono_ms() >= deadline)
            return false;
        sleep_ms(50);
    }
}

void er_harness_worker_dump_log(const struct er_harness_worker *w,
                                size_t max_bytes)
{
    char *log = er_harness_worker_log(w);
    size_t len;

    if (log == NULL)
        return;
    len = strlen(log);
    fprintf(stderr, "---- %s (last %zu bytes) ----\n%s\n----\n", w->log_path,
            len < max_bytes ? len : max_bytes,
            len > max_bytes ? log + len - max_bytes : log);
    er_free(log);
}

int er_harness_worker_http_get(const struct er_harness_worker *w,
                               const char *path, char **out)
{
    struct sockaddr_in addr;
    struct er_buf buf;
    struct pollfd pfd;
    char req[512];
    char chunk[4096];
    int64_t deadline = er_time_mono_ms() + 5000;
    const char *body;
    char *end = NULL;
    long status = -1;
    ssize_t r;
    int fd;

    *out = NULL;
    if (w->http_port <= 0)
        return -1;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((uint16_t)w->http_port);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        close(fd);
        return -1;
    }
    snprintf(req, sizeof(req),
             "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
             path);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
        close(fd);
        return -1;
    }
    er_buf_init(&buf, (size_t)16 * 1024 * 1024);
    for (;;) {
        int64_t left = deadline - er_time_mono_ms();

        if (left <= 0)
            break;
        pfd.fd = fd;
        pfd.events = POLLIN;
        if (poll(&pfd, 1, (int)left) <= 0)
            break;
        r = read(fd, chunk, sizeof(chunk));
        if (r <= 0 || er_buf_append(&buf, chunk, (size_t)r) != 0)
            break;
    }
    close(fd);
    if (er_buf_append(&buf, "", 1) != 0 || buf.len < 13 ||
        strncmp((const char *)buf.data, "HTTP/1.", 7) != 0) {
        er_buf_fini(&buf);
        return -1;
    }
    status = strtol((const char *)buf.data + 9, &end, 10);
    body = strstr((const char *)buf.data, "\r\n\r\n");
    *out = er_strdup(body != NULL ? body + 4 : "");
    er_buf_fini(&buf);
    return (int)status;
}

bool er_harness_worker_wait_readyz(struct er_harness_worker *w, int status,
                                   int timeout_ms)
{
    int64_t deadline = er_time_mono_ms() + timeout_ms;

    for (;;) {
        char *body = NULL;
        int got = er_harness_worker_http_get(w, "/readyz", &body);
        struct timespec ts = { 0, 200 * 1000000L };

        er_free(body);
        if (got == status)
            return true;
        if (er_time_mono_ms() >= deadline)
            return false;
        nanosleep(&ts, NULL);
    }
}

bool er_harness_worker_wait_ready(struct er_harness_worker *w, int timeout_ms)
{
    int64_t deadline = er_time_mono_ms() + timeout_ms;

    for (;;) {
        char *body = NULL;
        int status = er_harness_worker_http_get(w, "/readyz", &body);

        er_free(body);
        if (status == 200)
            return true;
        if (!er_harness_worker_is_alive(w) || er_time_mono_ms() >= deadline)
            return false;
        sleep_ms(100);
    }
}

long long er_harness_worker_metric(const struct er_harness_worker *w,
                                   const char *name)
{
    char *body = NULL;
    const char *line;
    size_t name_len = strlen(name);
    long long sum = -1;

    if (er_harness_worker_http_get(w, "/metrics", &body) != 200) {
        er_free(body);
        return -1;
    }
    for (line = body; line != NULL && *line != '\0';) {
        const char *next = strchr(line, '\n');

        /* "name{labels} value" or "name value"; comments start with #. */
        if (strncmp(line, name, name_len) == 0 &&
            (line[name_len] == '{' || line[name_len] == ' ')) {
            const char *val = strchr(line + name_len, ' ');

            if (line[name_len] == '{') {
                const char *close = strchr(line, '}');

                val = close != NULL ? strchr(close, ' ') : NULL;
            }
            if (val != NULL) {
                if (sum < 0)
                    sum = 0;
                sum += strtoll(val + 1, NULL, 10);
            }
        }
        line = next != NULL ? next + 1 : NULL;
    }
    er_free(body);
    return sum;
}

/* ----------------------------------------------------------------
 * Commands
 * ---------------------------------------------------------------- */

void er_harness_run_init(struct er_harness_run *run)
{
    er_uuid_v4(run->company_id);
    er_uuid_v4(run->agent_id);
    er_uuid_v4(run->run_id);
}

void er_harness_run_init_same_company(struct er_harness_run *run,
                                      const struct er_harness_run *other)
{
    memcpy(run->company_id, other->company_id, sizeof(run->company_id));
    er_uuid_v4(run->agent_id);
    er_uuid_v4(run->run_id);
}

static void cmd_base(struct er_harness_cmd *c, struct er_harness_run *run,
                     enum er_cmd_kind kind)
{
    memset(c, 0, sizeof(*c));
    er_uuid_v4(c->command_id);
    c->cmd.command_id = c->command_id;
    c->cmd.issued_at_ms = er_time_now_ms();
    c->cmd.company_id = run->company_id;
    c->cmd.agent_id = run->agent_id;
    c->cmd.heartbeat_run_id = run->run_id;
    c->cmd.kind = kind;
}

void er_harness_cmd_acquire(struct er_harness_cmd *c,
                            struct er_harness_run *run)
{
    cmd_base(c, run, ER_CMD_ACQUIRE);
    c->cmd.adapter_type = "claude_local";
}

void er_harness_cmd_realize(struct er_harness_cmd *c,
                            struct er_harness_run *run, const char *cwd)
{
    json_t *ws;
    size_t len;

    cmd_base(c, run, ER_CMD_REALIZE);
    c->cmd.adapter_type = "claude_local";
    ws = json_pack("{s:s, s:s, s:s}", "cwd", cwd, "source", "task_session",
                   "strategy", "project_primary");
    ER_ASSERT(ws != NULL);
    len = json_dumpb(ws, c->workspace_json, sizeof(c->workspace_json) - 1,
                     JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(ws);
    ER_ASSERT(len < sizeof(c->workspace_json) - 1);
    c->workspace_json[len] = '\0';
    c->cmd.workspace_json = c->workspace_json;
}

void er_harness_cmd_release(struct er_harness_cmd *c,
                            struct er_harness_run *run,
                            enum er_release_status status)
{
    cmd_base(c, run, ER_CMD_RELEASE);
    c->cmd.release_status = status;
}

int er_harness_partition_of(const struct er_harness *h, const char *key)
{
    return (int)rd_kafka_msg_partitioner_consistent_random(
        NULL, key, strlen(key), h->partition_cnt, NULL, NULL);
}

int er_harness_produce(struct er_harness *h, const char *suffix,
                       const char *key, const void *value, size_t value_len)
{
    char topic[128];
    size_t key_len = key != NULL ? strlen(key) : 0;
    rd_kafka_vu_t vu[4];
    rd_kafka_error_t *error;

    er_harness_topic_name(h, suffix, topic, sizeof(topic));
    /* The array form: the producev() macros use statement expressions,
     * which clang's -Wpedantic rejects. */
    memset(vu, 0, sizeof(vu));
    vu[0].vtype = RD_KAFKA_VTYPE_TOPIC;
    vu[0].u.cstr = topic;
    vu[1].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vu[1].u.i = RD_KAFKA_MSG_F_COPY;
    vu[2].vtype = RD_KAFKA_VTYPE_KEY;
    vu[2].u.mem.ptr = (void *)(uintptr_t)key;
    vu[2].u.mem.size = key_len;
    vu[3].vtype = RD_KAFKA_VTYPE_VALUE;
    vu[3].u.mem.ptr = (void *)(uintptr_t)value;
    vu[3].u.mem.size = value_len;
    error = rd_kafka_produceva(h->priv->producer, vu, 4);
    if (error != NULL) {
        fprintf(stderr, "harness: produce to %s: %s\n", topic,
                rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        return -1;
    }
    rd_kafka_poll(h->priv->producer, 0);
    return 0;
}

int er_harness_send(struct er_harness *h, const struct er_run_command *cmd)
{
    struct er_buf buf;
    struct er_err err;
    const char *key;
    int rc;

    er_err_clear(&err);
    er_buf_init(&buf, (size_t)4 * 1024 * 1024);
    if (er_codec_command_encode(cmd, &buf, &err) != 0) {
        fprintf(stderr, "harness: encode: %s\n", err.msg);
        er_buf_fini(&buf);
        return -1;
    }
    key =
        cmd->heartbeat_run_id != NULL ? cmd->heartbeat_run_id : cmd->command_id;
    rc = er_harness_produce(h, "commands", key, buf.data, buf.len);
    er_buf_fini(&buf);
    return rc;
}

int er_harness_flush(struct er_harness *h)
{
    rd_kafka_resp_err_t kerr;

    kerr = rd_kafka_flush(h->priv->producer, FLUSH_MS);
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "harness: flush: %s\n", rd_kafka_err2str(kerr));
        return -1;
    }
    if (h->priv->delivery_errors != 0) {
        h->priv->delivery_errors = 0;
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------------
 * Reading
 * ---------------------------------------------------------------- */

static char *header_dup(rd_kafka_headers_t *hdrs, const char *name)
{
    const void *val = NULL;
    size_t size = 0;

    if (hdrs == NULL || rd_kafka_header_get_last(hdrs, name, &val, &size) !=
                            RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    return er_strndup(val != NULL ? val : "", val != NULL ? size : 0);
}

static void take_message(struct er_harness *h, rd_kafka_message_t *msg)
{
    struct er_harness_record rec;
    struct rec_list *list = NULL;
    rd_kafka_headers_t *hdrs = NULL;
    const char *topic = rd_kafka_topic_name(msg->rkt);
    int64_t recv_us = er_harness_mono_us();
    struct er_buf buf;
    struct er_err err;
    int t;

    for (t = 0; t < ER_HARNESS_TOPIC_CNT; t++) {
        if (strcmp(topic, h->priv->topics[t]) == 0)
            list = &h->priv->recs[t];
    }
    if (list == NULL)
        return;
    memset(&rec, 0, sizeof(rec));
    if (msg->key != NULL) {
        rec.key = er_strndup(msg->key, msg->key_len);
        rec.key_len = msg->key_len;
    }
    if (msg->len > 0) {
        rec.value = er_malloc(msg->len);
        ER_ASSERT(rec.value != NULL);
        memcpy(rec.value, msg->payload, msg->len);
        rec.value_len = msg->len;
    }
    rec.partition = msg->partition;
    rec.offset = msg->offset;
    rec.recv_us = recv_us;
    if (rd_kafka_message_headers(msg, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        rec.hdr_error = header_dup(hdrs, "envrun.error");
        rec.hdr_error_code = header_dup(hdrs, "envrun.error.code");
        rec.hdr_redacted = header_dup(hdrs, "envrun.redacted");
        rec.hdr_traceparent = header_dup(hdrs, "traceparent");
    }
    er_err_clear(&err);
    er_buf_init(&buf, JSON_MAX_BYTES);
    if (rec.value != NULL) {
        /* A test with a schema registry installs a client to it, so that
         * Confluent-framed records decode too. */
        struct er_registry *reg = er_registry_installed();
        struct er_buf plain;
        const uint8_t *v = rec.value;
        size_t v_len = rec.value_len;

        er_buf_init(&plain, rec.value_len + ER_CODEC_HDR_LEN);
        if (reg != NULL &&
            er_registry_unframe(reg, v, v_len, &plain, &err) == 1) {
            v = plain.data;
            v_len = plain.len;
        }
        if (er_codec_to_json(v, v_len, &buf, &err) == 0)
            rec.json = json_loadb((const char *)buf.data, buf.len, 0, NULL);
        er_buf_fini(&plain);
    }
    er_buf_fini(&buf);

    if (list->len == list->cap) {
        size_t cap = list->cap == 0 ? 64 : list->cap * 2;
        struct er_harness_record *v = er_realloc(list->v, cap * sizeof(*v));

        ER_ASSERT(v != NULL);
        list->v = v;
        list->cap = cap;
    }
    list->v[list->len++] = rec;
}

void er_harness_poll(struct er_harness *h, int timeout_ms)
{
    int64_t deadline = er_time_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);

    /* The whole timeout: a quiet period that ended at the first record
     * would miss the late duplicates it is there to catch. */
    for (;;) {
        int64_t left = deadline - er_time_mono_ms();
        rd_kafka_message_t *msg =
            rd_kafka_consumer_poll(h->priv->consumer, left > 0 ? (int)left : 0);

        if (msg != NULL) {
            if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR)
                take_message(h, msg);
            else if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "harness: consume: %s\n",
                        rd_kafka_message_errstr(msg));
            rd_kafka_message_destroy(msg);
            continue;
        }
        if (left <= 0)
            return;
    }
}

bool er_harness_wait(struct er_harness *h, er_harness_pred_fn pred, void *arg,
                     int timeout_ms)
{
    int64_t deadline = er_time_mono_ms() + timeout_ms;

    er_harness_flush(h);
    for (;;) {
        int64_t left;

        if (pred(h, arg))
            return true;
        left = deadline - er_time_mono_ms();
        if (left <= 0)
            return pred(h, arg);
        er_harness_poll(h, left < POLL_SLICE_MS ? (int)left : POLL_SLICE_MS);
    }
}

size_t er_harness_count(const struct er_harness *h, enum er_harness_topic topic)
{
    return h->priv->recs[topic].len;
}

const struct er_harness_record *er_harness_get(const struct er_harness *h,
                                               enum er_harness_topic topic,
                                               size_t i)
{
    ER_ASSERT(i < h->priv->recs[topic].len);
    return &h->priv->recs[topic].v[i];
}

size_t er_harness_find(const struct er_harness *h, enum er_harness_topic topic,
                       const char *field, const char *value,
                       const struct er_harness_record **out, size_t out_max)
{
    const struct rec_list *list = &h->priv->recs[topic];
    size_t n = 0;
    size_t i;

    for (i = 0; i < list->len; i++) {
        const char *s = er_harness_json_str(list->v[i].json, field);

        if (s == NULL || strcmp(s, value) != 0)
            continue;
        if (out != NULL && n < out_max)
            out[n] = &list->v[i];
        n++;
    }
    return n;
}

size_t er_harness_find_key(const struct er_harness *h,
                           enum er_harness_topic topic, const char *key,
                           const struct er_harness_record **out, size_t out_max)
{
    const struct rec_list *list = &h->priv->recs[topic];
    size_t n = 0;
    size_t i;

    for (i = 0; i < list->len; i++) {
        if (list->v[i].key == NULL || strcmp(list->v[i].key, key) != 0)
            continue;
        if (out != NULL && n < out_max)
            out[n] = &list->v[i];
        n++;
    }
    return n;
}

static bool has_bytes(const uint8_t *p, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    size_t i;

    if (p == NULL || n == 0 || len < n)
        return false;
    for (i = 0; i + n <= len; i++) {
        if (memcmp(p + i, needle, n) == 0)
            return true;
    }
    return false;
}

bool er_harness_topic_contains(const struct er_harness *h,
                               enum er_harness_topic topic, const char *needle)
{
    const struct rec_list *list = &h->priv->recs[topic];
    size_t i;

    for (i = 0; i < list->len; i++) {
        const struct er_harness_record *r = &list->v[i];

        if (has_bytes((const uint8_t *)r->key, r->key_len, needle) ||
            has_bytes(r->value, r->value_len, needle))
            return true;
    }
    return false;
}

struct key_arg {
    enum er_harness_topic topic;
    const char *key;
    size_t n;
};

static bool has_key(struct er_harness *h, void *arg)
{
    const struct key_arg *a = arg;

    return er_harness_find_key(h, a->topic, a->key, NULL, 0) >= a->n;
}

bool er_harness_wait_key(struct er_harness *h, enum er_harness_topic topic,
                         const char *key, size_t n, int timeout_ms)
{
    struct key_arg a = { topic, key, n };

    return er_harness_wait(h, has_key, &a, timeout_ms);
}

struct total_arg {
    enum er_harness_topic topic;
    size_t n;
};

static bool has_total(struct er_harness *h, void *arg)
{
    const struct total_arg *a = arg;

    return h->priv->recs[a->topic].len >= a->n;
}

bool er_harness_wait_total(struct er_harness *h, enum er_harness_topic topic,
                           size_t n, int timeout_ms)
{
    struct total_arg a = { topic, n };

    return er_harness_wait(h, has_total, &a, timeout_ms);
}

struct count_arg {
    enum er_harness_topic topic;
    const char *field;
    const char *value;
    size_t n;
};

static bool has_count(struct er_harness *h, void *arg)
{
    const struct count_arg *a = arg;

    return er_harness_find(h, a->topic, a->field, a->value, NULL, 0) >= a->n;
}

bool er_harness_wait_count(struct er_harness *h, enum er_harness_topic topic,
                           const char *field, const char *value, size_t n,
                           int timeout_ms)
{
    struct count_arg a = { topic, field, value, n };

    return er_harness_wait(h, has_count, &a, timeout_ms);
}

const json_t *er_harness_roundtrip(struct er_harness *h,
                                   const struct er_harness_worker *w,
                                   const struct er_harness_cmd *c,
                                   int timeout_ms)
{
    const json_t *res;

    if (er_harness_send(h, &c->cmd) != 0)
        er_harness_fail(__FILE__, __LINE__, "cannot send %s", c->command_id);
    res = er_harness_wait_result(h, c->command_id, timeout_ms);
    if (res == NULL) {
        if (w != NULL)
            er_harness_worker_dump_log(w, 6000);
        er_harness_fail(__FILE__, __LINE__, "no result for %s in %d ms",
                        c->command_id, timeout_ms);
    }
    return res;
}

const json_t *er_harness_realize(struct er_harness *h,
                                 const struct er_harness_worker *w,
                                 struct er_harness_run *run, const char *cwd,
                                 const char *overlay, int timeout_ms)
{
    struct er_harness_cmd c;

    er_harness_cmd_realize(&c, run, cwd);
    c.cmd.runtime_overlay_json = (char *)(uintptr_t)overlay;
    return er_harness_roundtrip(h, w, &c, timeout_ms);
}

const json_t *er_harness_release(struct er_harness *h,
                                 const struct er_harness_worker *w,
                                 struct er_harness_run *run,
                                 enum er_release_status status, int timeout_ms)
{
    struct er_harness_cmd c;

    er_harness_cmd_release(&c, run, status);
    return er_harness_roundtrip(h, w, &c, timeout_ms);
}

const json_t *er_harness_wait_result(struct er_harness *h,
                                     const char *command_id, int timeout_ms)
{
    const struct er_harness_record *rec = NULL;

    if (!er_harness_wait_count(h, ER_HARNESS_RESULTS, "commandId", command_id,
                               1, timeout_ms))
        return NULL;
    if (er_harness_find(h, ER_HARNESS_RESULTS, "commandId", command_id, &rec,
                        1) < 1 ||
        rec == NULL)
        return NULL;
    return rec->json;
}

struct ids_arg {
    const char *const *ids;
    size_t id_cnt;
    size_t next; /* ids before this one have results */
};

static bool has_all_results(struct er_harness *h, void *arg)
{
    struct ids_arg *a = arg;

    while (a->next < a->id_cnt &&
           er_harness_find(h, ER_HARNESS_RESULTS, "commandId", a->ids[a->next],
                           NULL, 0) > 0)
        a->next++;
    return a->next == a->id_cnt;
}

bool er_harness_wait_results(struct er_harness *h, const char *const *ids,
                             size_t id_cnt, int timeout_ms)
{
    struct ids_arg a = { ids, id_cnt, 0 };

    return er_harness_wait(h, has_all_results, &a, timeout_ms);
}

/* ----------------------------------------------------------------
 * JSON
 * ---------------------------------------------------------------- */

const json_t *er_harness_json_at(const json_t *root, const char *path)
{
    const json_t *node = root;
    const char *seg = path;

    while (node != NULL && seg != NULL && *seg != '\0') {
        const char *dot = strchr(seg, '.');
        size_t len = dot != NULL ? (size_t)(dot - seg) : strlen(seg);
        char key[128];

        if (len >= sizeof(key))
            return NULL;
        memcpy(key, seg, len);
        key[len] = '\0';
        if (json_is_array(node)) {
            char *end = NULL;
            long idx = strtol(key, &end, 10);

            if (end == key || *end != '\0' || idx < 0)
                return NULL;
            node = json_array_get(node, (size_t)idx);
        } else {
            node = json_object_get(node, key);
        }
        seg = dot != NULL ? dot + 1 : NULL;
    }
    return node;
}

const char *er_harness_json_str(const json_t *root, const char *path)
{
    return json_string_value(er_harness_json_at(root, path));
}

json_t *er_harness_json_parse_field(const json_t *obj, const char *field)
{
    const char *text = er_harness_json_str(obj, field);

    if (text == NULL)
        return NULL;
    return json_loads(text, JSON_DECODE_ANY, NULL);
}

char *er_harness_json_text(const json_t *v)
{
    if (v == NULL)
        return NULL;
    return json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

/* ----------------------------------------------------------------
 * Assertions
 * ---------------------------------------------------------------- */

void er_harness_fail(const char *file, int line, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    print_error("%s\n", msg);
    _fail(file, line);
    /* _fail long-jumps to the runner; it never comes back here. */
    er_assert_fail("cmocka _fail returned", file, line);
}

static void fail_at(const json_t *root, const char *path, const char *what,
                    const char *file, int line)
{
    char *text = er_harness_json_text(root);
    char msg[1024];

    snprintf(msg, sizeof(msg), "%s", text != NULL ? text : "(null)");
    free(text);
    er_harness_fail(file, line, "%s at \"%s\" in %s", what, path, msg);
}

void er_harness_assert_str(const json_t *root, const char *path,
                           const char *expected, const char *file, int line)
{
    const json_t *v = er_harness_json_at(root, path);
    char what[1024];

    if (expected == NULL) {
        if (!json_is_null(v))
            fail_at(root, path, "expected null", file, line);
        return;
    }
    if (!json_is_string(v)) {
        snprintf(what, sizeof(what), "expected string \"%.900s\"", expected);
        fail_at(root, path, what, file, line);
        return;
    }
    if (strcmp(json_string_value(v), expected) != 0) {
        snprintf(what, sizeof(what), "expected \"%.450s\", got \"%.450s\"",
                 expected, json_string_value(v));
        fail_at(root, path, what, file, line);
    }
}

void er_harness_assert_int(const json_t *root, const char *path,
                           long long expected, const char *file, int line)
{
    const json_t *v = er_harness_json_at(root, path);
    char what[128];

    if (!json_is_integer(v) || json_integer_value(v) != expected) {
        snprintf(what, sizeof(what), "expected integer %lld", expected);
        fail_at(root, path, what, file, line);
    }
}

void er_harness_assert_ok(const json_t *res, const char *file, int line)
{
    const char *outcome = er_harness_json_str(res, "outcome");
    const char *code = er_harness_json_str(res, "errorCode");
    const char *msg = er_harness_json_str(res, "errorMessage");

    if (outcome == NULL || strcmp(outcome, "ok") != 0)
        er_harness_fail(file, line, "outcome %s: %s: %s",
                        outcome != NULL ? outcome : "(none)",
                        code != NULL ? code : "-", msg != NULL ? msg : "-");
}

void er_harness_assert_contains(const char *text, const char *needle,
                                const char *file, int line)
{
    if (text == NULL || strstr(text, needle) == NULL)
        er_harness_fail(file, line, "\"%.2000s\" does not contain \"%s\"",
                        text != NULL ? text : "(null)", needle);
}

void er_harness_assert_true(const json_t *root, const char *path,
                            const char *file, int line)
{
    if (!json_is_true(er_harness_json_at(root, path)))
        fail_at(root, path, "expected true", file, line);
}

void er_harness_assert_json(const json_t *root, const char *path,
                            const char *expected_json, const char *file,
                            int line)
{
    const json_t *v = er_harness_json_at(root, path);
    char *text = v != NULL ? er_harness_json_text(v) : NULL;
    char what[1024];
    bool is_equal = text != NULL && strcmp(text, expected_json) == 0;

    snprintf(what, sizeof(what), "expected %.450s, got %.450s", expected_json,
             text != NULL ? text : "(missing)");
    free(text);
    if (!is_equal)
        fail_at(root, path, what, file, line);
}

/* ----------------------------------------------------------------
 * PostgreSQL
 * ---------------------------------------------------------------- */

static PGconn *pg_connect(const char *conninfo)
{
    PGconn *conn = PQconnectdb(conninfo);

    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "harness: connect: %s\n",
                conn != NULL ? PQerrorMessage(conn) : "out of memory");
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

json_t *er_harness_pg_query(const char *conninfo, const char *sql, int nparams,
                            const char *const *params)
{
    PGconn *conn = NULL;
    PGresult *res = NULL;
    json_t *rows = NULL;
    int r;
    int c;

    conn = pg_connect(conninfo);
    if (conn == NULL)
        return NULL;
    res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (res == NULL || (PQresultStatus(res) != PGRES_TUPLES_OK &&
                        PQresultStatus(res) != PGRES_COMMAND_OK)) {
        fprintf(stderr, "harness: query failed: %s\n  %s\n",
                PQerrorMessage(conn), sql);
        goto out;
    }
    rows = json_array();
    for (r = 0; r < PQntuples(res); r++) {
        json_t *row = json_object();

        for (c = 0; c < PQnfields(res); c++) {
            json_object_set_new(row, PQfname(res, c),
                                PQgetisnull(res, r, c)
                                    ? json_null()
                                    : json_string(PQgetvalue(res, r, c)));
        }
        json_array_append_new(rows, row);
    }

out:
    PQclear(res);
    PQfinish(conn);
    return rows;
}

long long er_harness_pg_count(const char *conninfo, const char *sql,
                              int nparams, const char *const *params)
{
    PGconn *conn = NULL;
    PGresult *res = NULL;
    long long n = -1;

    conn = pg_connect(conninfo);
    if (conn == NULL)
        return -1;
    res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "harness: query failed: %s\n  %s\n",
                PQerrorMessage(conn), sql);
        goto out;
    }
    if (PQntuples(res) > 0 && PQnfields(res) > 0 && !PQgetisnull(res, 0, 0))
        n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);

out:
    PQclear(res);
    PQfinish(conn);
    return n;
}

long long er_harness_pg_rows_containing(const char *conninfo,
                                        const char *needle)
{
    json_t *tables;
    long long total = 0;
    size_t i;

    tables = er_harness_pg_query(
        conninfo,
        "SELECT format('%I.%I', table_schema, table_name) AS t FROM "
        "information_schema.tables WHERE table_schema IN ('public', "
        "'envrun') AND table_type = 'BASE TABLE'",
        0, NULL);
    if (tables == NULL)
        return -1;
    for (i = 0; i < json_array_size(tables); i++) {
        char sql[512];
        long long n;

        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM %s x WHERE strpos(x::text, $1) > 0",
                 er_harness_json_str(json_array_get(tables, i), "t"));
        n = er_harness_pg_count(conninfo, sql, 1, &needle);
        if (n < 0) {
            total = -1;
            break;
        }
        total += n;
    }
    json_decref(tables);
    return total;
}

int er_harness_pg_exec(const char *conninfo, const char *sql, int nparams,
                       const char *const *params)
{
    PGconn *conn = NULL;
    PGresult *res = NULL;
    ExecStatusType st;
    int rc = -1;

    conn = pg_connect(conninfo);
    if (conn == NULL)
        return -1;
    if (nparams == 0)
        res = PQexec(conn, sql);
    else
        res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "harness: exec failed: %s\n  %s\n",
                PQerrorMessage(conn), sql);
        goto out;
    }
    rc = 0;

out:
    PQclear(res);
    PQfinish(conn);
    return rc;
}

json_t *er_harness_pg_one_row(const char *conninfo, const char *sql,
                              const char *param)
{
    json_t *rows = er_harness_pg_query(conninfo, sql, 1, &param);
    json_t *row;

    if (rows == NULL || json_array_size(rows) != 1)
        er_harness_fail(__FILE__, __LINE__, "%zu rows instead of one: %s",
                        rows != NULL ? json_array_size(rows) : 0, sql);
    row = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    return row;
}

void er_harness_env_insert(const struct er_harness *h, const char *company_id,
                           const char *name, const char *driver,
                           const char *status, const char *config,
                           char env_id[37])
{
    if (er_uuid_v4(env_id) != 0 ||
        er_harness_pg_exec(h->db_url,
                           "INSERT INTO environments (id, company_id, name, "
                           "driver, status, config) "
                           "VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                           6,
                           (const char *[]){ env_id, company_id, name, driver,
                                             status, config }) != 0)
        er_harness_fail(__FILE__, __LINE__, "environment %s not inserted",
                        name);
}

void er_harness_fresh_dir(const char *path)
{
    char cmd[ER_HARNESS_PATH_MAX + 64];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    if (strchr(path, '\'') != NULL || system(cmd) != 0 ||
        mkdir(path, 0700) != 0)
        er_harness_fail(__FILE__, __LINE__, "cannot make the directory %s",
                        path);
}

void er_harness_pg_control_plane_lease(const struct er_harness *h,
                                       const char *company_id,
                                       const char *env_id, const char *ws_id,
                                       char lease_id[37])
{
    const char *p[4];

    er_uuid_v4(lease_id);
    p[0] = lease_id;
    p[1] = company_id;
    p[2] = env_id;
    p[3] = ws_id;
    if (er_harness_pg_exec(h->db_url,
                           "INSERT INTO environment_leases (id, company_id, "
                           "environment_id, execution_workspace_id, "
                           "heartbeat_run_id, status, lease_policy, provider) "
                           "VALUES ($1::uuid, $2::uuid, $3::uuid, $4::uuid, "
                           "gen_random_uuid(), 'active', 'ephemeral', 'ssh')",
                           4, p) != 0)
        er_harness_fail(__FILE__, __LINE__,
                        "the control plane's lease could not be inserted");
}

bool er_harness_pg_wait_count(struct er_harness *h, const char *sql,
                              int nparams, const char *const *params,
                              long long want, int timeout_ms)
{
    int64_t deadline = er_time_mono_ms() + timeout_ms;
    long long n;

    for (;;) {
        n = er_harness_pg_count(h->db_url, sql, nparams, params);
        if (n == want)
            return true;
        if (er_time_mono_ms() >= deadline)
            break;
        er_harness_poll(h, 200);
    }
    fprintf(stderr, "%s: %lld, want %lld\n", sql, n, want);
    return false;
}

/* ================================================================
 * Invariants after crashes
 * ================================================================ */

void er_harness_check_results(struct er_harness *h, const char *const *ids,
                              size_t id_cnt, const char *outcome)
{
    const struct er_harness_record *recs[16];
    size_t n;
    size_t i;
    size_t j;
    size_t redelivered = 0;

    for (i = 0; i < id_cnt; i++) {
        n = er_harness_find(h, ER_HARNESS_RESULTS, "commandId", ids[i], recs,
                            16);
        assert_true(n >= 1 && n <= 16);
        if (outcome != NULL)
            ER_HARNESS_ASSERT_STR(recs[0]->json, "outcome", outcome);
        for (j = 1; j < n; j++) {
            assert_int_equal(recs[j]->value_len, recs[0]->value_len);
            assert_memory_equal(recs[j]->value, recs[0]->value,
                                recs[0]->value_len);
        }
        redelivered += n - 1;
    }
    print_message("%s: %zu results re-sent after a restart\n", h->name,
                  redelivered);
}

void er_harness_check_lease_events(struct er_harness *h, long long released_cnt,
                                   long long other_cnt)
{
    json_t *leases = json_object(); /* leaseId -> {eventId: index} */
    json_t *rows;
    size_t i;
    size_t cnt = er_harness_count(h, ER_HARNESS_LEASE_EVENTS);
    const char *lease_id;
    json_t *events;

    for (i = 0; i < cnt; i++) {
        const struct er_harness_record *rec =
            er_harness_get(h, ER_HARNESS_LEASE_EVENTS, i);
        const char *lid = er_harness_json_str(rec->json, "leaseId");
        const char *eid = er_harness_json_str(rec->json, "eventId");
        json_t *seen;

        ER_HARNESS_NON_NULL(lid);
        ER_HARNESS_NON_NULL(eid);
        ER_HARNESS_NON_NULL(rec->key);
        assert_string_equal(rec->key, lid);
        events = json_object_get(leases, lid);
        if (events == NULL) {
            events = json_object();
            json_object_set_new(leases, lid, events);
        }
        seen = json_object_get(events, eid);
        if (seen != NULL) {
            const struct er_harness_record *first = er_harness_get(
                h, ER_HARNESS_LEASE_EVENTS, (size_t)json_integer_value(seen));

            assert_int_equal(first->value_len, rec->value_len);
            assert_memory_equal(first->value, rec->value, rec->value_len);
            continue;
        }
        json_object_set_new(events, eid, json_integer((json_int_t)i));
    }

    rows = er_harness_pg_query(h->db_url,
                               "SELECT id::text, status FROM "
                               "environment_leases",
                               0, NULL);
    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), json_object_size(leases));
    for (i = 0; i < json_array_size(rows); i++) {
        const json_t *row = json_array_get(rows, i);
        const char *status = er_harness_json_str(row, "status");
        long long want =
            strcmp(status, "released") == 0 ? released_cnt : other_cnt;
        bool has_version[65] = { false };
        const char *eid;
        json_t *idx;
        const char *last_status = NULL;

        lease_id = er_harness_json_str(row, "id");
        events = json_object_get(leases, lease_id);
        if (events == NULL)
            er_harness_fail(__FILE__, __LINE__, "lease %s has no events",
                            lease_id);
        /* Without an expectation, the count is the version the database
         * gave the lease's last event. */
        if (want <= 0)
            want = er_harness_pg_count(
                h->db_url,
                "SELECT version FROM envrun.lease_state WHERE lease_id = "
                "$1::uuid",
                1, &lease_id);
        if (want < 1 || want > 64)
            er_harness_fail(__FILE__, __LINE__,
                            "lease %s: %lld events expected", lease_id, want);
        if ((long long)json_object_size(events) != want)
            er_harness_fail(__FILE__, __LINE__,
                            "lease %s (%s) has %zu distinct events, want %lld",
                            lease_id, status, json_object_size(events), want);
        json_object_foreach(events, eid, idx)
        {
            const struct er_harness_record *rec = er_harness_get(
                h, ER_HARNESS_LEASE_EVENTS, (size_t)json_integer_value(idx));
            json_int_t version =
                json_integer_value(er_harness_json_at(rec->json, "version"));

            if (version < 1 || version > want || has_version[version])
                er_harness_fail(__FILE__, __LINE__,
                                "lease %s: event %s has version %lld", lease_id,
                                eid, (long long)version);
            has_version[version] = true;
            if (version == want)
                last_status = er_harness_json_str(rec->json, "status");
        }
        ER_HARNESS_NON_NULL(last_status);
        assert_string_equal(last_status, status);
    }
    json_decref(rows);
    json_decref(leases);
}

void er_harness_check_activity(struct er_harness *h)
{
    json_t *ids = json_object(); /* id -> true */
    json_t *rows;
    size_t cnt = er_harness_count(h, ER_HARNESS_ACTIVITY);
    size_t i;

    for (i = 0; i < cnt; i++) {
        const struct er_harness_record *rec =
            er_harness_get(h, ER_HARNESS_ACTIVITY, i);
        const char *id = er_harness_json_str(rec->json, "id");

        ER_HARNESS_NON_NULL(id);
        json_object_set_new(ids, id, json_true());
    }
    rows = er_harness_pg_query(h->db_url, "SELECT id::text FROM activity_log",
                               0, NULL);
    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), json_object_size(ids));
    for (i = 0; i < json_array_size(rows); i++) {
        const char *id = er_harness_json_str(json_array_get(rows, i), "id");

        if (json_object_get(ids, id) == NULL)
            er_harness_fail(__FILE__, __LINE__,
                            "activity_log row %s has no event", id);
    }
    json_decref(rows);
    json_decref(ids);
}

bool er_harness_process_with(const char *needle)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    bool is_found = false;

    ER_HARNESS_NON_NULL(d);
    while (!is_found && (e = readdir(d)) != NULL) {
        char path[300];
        char buf[4096];
        size_t n;
        size_t i;
        FILE *f;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        for (i = 0; i < n; i++)
            buf[i] = buf[i] == '\0' ? ' ' : buf[i];
        buf[n] = '\0';
        is_found = strstr(buf, needle) != NULL;
    }
    closedir(d);
    return is_found;
}
