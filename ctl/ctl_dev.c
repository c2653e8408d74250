/* ctl_dev: `envrunctl dev`: a throwaway dev stack (librdkafka mock cluster
 * over TCP, PostgreSQL on loopback) with optional envrun-worker children,
 * and `--demo`, a scripted acquire / realize / release run printed as a
 * timeline. Single-threaded (librdkafka runs its own threads, so children
 * are started with posix_spawn). Owns the stack, the children and a
 * private directory for their logs, all gone when it returns. */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl/ctl_int.h"
#include "schemas/schemas.h"
#include "worker/worker.h"

#define DEV_WORKERS_MAX     16
#define DEV_PARTITIONS_MAX  64
#define DEV_BROKERS         1
#define DEV_DIR_MAX         128
#define DEV_PATH_MAX        256
#define DEV_URL_MAX         1024
#define DEV_STOP_WAIT_MS    30000
#define DEMO_TIMEOUT_MS     60000
#define DEMO_QUIET_MS       1500 /* after the last result: late events */
#define DEMO_SEND_TIMEOUT   30000
#define DEMO_METADATA_MS    10000
#define DEMO_VALUE_MAX      (4 * 1024 * 1024)
#define DEMO_CMD_CNT        4
#define DEMO_LOG_TAIL_LINES 30

extern char **environ;

static const char usage[] =
    "usage: envrunctl dev [--demo] [--partitions N] [--workers N]\n"
    "Start a librdkafka mock cluster reachable over TCP and a throwaway\n"
    "PostgreSQL cluster, print their addresses as shell exports, and run\n"
    "until SIGINT or SIGTERM; then tear everything down.\n"
    "\n"
    "  --demo            start a worker, run a scripted acquire, realize,\n"
    "                    release and a failing acquire through it, print\n"
    "                    the results and events as a timeline, and exit\n"
    "                    (0 when every command got the expected result)\n"
    "  --partitions N    partitions per topic (default 3)\n"
    "  --workers N       envrun-worker processes to start (default: 1 with\n"
    "                    --demo, else 0), logs in the dev directory\n"
    "The worker binary is the envrun-worker next to envrunctl. Topic prefix:\n"
    "$ENVRUN_TOPIC_PREFIX (envrun.).\n";

struct dev {
    char dir[DEV_DIR_MAX]; /* private directory: logs, the demo workspace */
    char worker_path[PATH_MAX];
    char db_url[DEV_URL_MAX];
    const char *brokers; /* borrowed from kafka */
    const char *prefix;
    struct er_devstack_kafka *kafka;
    struct er_devstack_pg *pg;
    pid_t workers[DEV_WORKERS_MAX];
    int worker_cnt;
};

/* One command of the demo and what came back for it. */
struct demo_cmd {
    const char *label;
    enum er_cmd_kind kind;
    const char *want_outcome;
    const char *want_error; /* NULL: errorCode null */
    char command_id[37];
    bool is_sent;
    bool has_result;
    bool is_expected;
    char lease_id[64];
};

struct demo {
    struct dev *dev;
    rd_kafka_t *producer;
    rd_kafka_t *consumer;
    int64_t t0_ms;
    int64_t deadline_ms;
    int result_cnt;
    int lease_event_cnt;
    int activity_cnt;
    struct demo_cmd cmds[DEMO_CMD_CNT];
};

static void sleep_ms(int ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    /* A signal cuts the sleep short; the callers check the stop flag. */
    nanosleep(&ts, NULL);
}

/* The envrun-worker next to our own executable (/proc/self/exe). */
static int find_worker(struct dev *dev, struct er_err *err)
{
    char self[PATH_MAX];
    ssize_t n;
    char *slash;
    int len;

    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                          "cannot read /proc/self/exe");
    self[n] = '\0';
    slash = strrchr(self, '/');
    if (slash == NULL)
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                          "odd executable path %s", self);
    *slash = '\0';
    len = snprintf(dev->worker_path, sizeof(dev->worker_path),
                   "%s/envrun-worker", self);
    if (len < 0 || (size_t)len >= sizeof(dev->worker_path))
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                          "worker path too long");
    if (access(dev->worker_path, X_OK) != 0)
        return er_err_set(err, ER_ENOTFOUND, ER_ERRCLASS_FATAL,
                          "no executable %s (build it first)",
                          dev->worker_path);
    return 0;
}

static bool is_overridden(const char *entry)
{
    static const char *const names[] = {
        "ENVRUN_KAFKA_BROKERS=",   "ENVRUN_KAFKA_PROPS=",
        "ENVRUN_DATABASE_URL=",    "ENVRUN_HTTP_ADDR=",
        "ENVRUN_LOG_FORMAT=",      "ENVRUN_TOPIC_PREFIX=",
        "ENVRUN_WORKSPACE_ROOTS=",
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strncmp(entry, names[i], strlen(names[i])) == 0)
            return true;
    }
    return false;
}

/* Start worker number idx (1-based) with the dev stack's settings; its
 * stdout and stderr go to dev->dir/worker-<idx>.log. */
static int spawn_worker(struct dev *dev, int idx, struct er_err *err)
{
    char log_path[DEV_PATH_MAX];
    char *overrides[6] = { NULL };
    const char *roots = getenv("ENVRUN_WORKSPACE_ROOTS");
    char **envp = NULL;
    char *argv[] = { dev->worker_path, NULL };
    posix_spawn_file_actions_t fa;
    bool has_fa = false;
    size_t env_cnt = 0;
    size_t i;
    size_t n = 0;
    pid_t pid;
    int rc = 0;

    snprintf(log_path, sizeof(log_path), "%s/worker-%d.log", dev->dir, idx);
    for (i = 0; environ[i] != NULL; i++)
        env_cnt++;
    envp = er_calloc(env_cnt + 8, sizeof(*envp));
    overrides[0] = er_strdup("ENVRUN_LOG_FORMAT=text");
    overrides[1] = er_strdup("ENVRUN_HTTP_ADDR=127.0.0.1:0");
    overrides[2] = er_malloc(DEV_URL_MAX + 32);
    overrides[3] = er_malloc(DEV_URL_MAX + 32);
    overrides[4] = er_malloc(DEV_URL_MAX + 32);
    overrides[5] = er_malloc(DEV_URL_MAX + DEV_PATH_MAX + 64);
    for (i = 0; i < 6; i++) {
        if (overrides[i] == NULL)
            break;
    }
    if (envp == NULL || i != 6) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto out;
    }
    snprintf(overrides[2], DEV_URL_MAX + 32, "ENVRUN_KAFKA_BROKERS=%s",
             dev->brokers);
    snprintf(overrides[3], DEV_URL_MAX + 32, "ENVRUN_DATABASE_URL=%s",
             dev->db_url);
    snprintf(overrides[4], DEV_URL_MAX + 32, "ENVRUN_TOPIC_PREFIX=%s",
             dev->prefix);
    /* The dev stack's own workspaces are local paths its workers accept,
     * besides any roots the caller set. */
    snprintf(overrides[5], DEV_URL_MAX + DEV_PATH_MAX + 64,
             "ENVRUN_WORKSPACE_ROOTS=%s%s%s/workspace",
             roots != NULL ? roots : "",
             roots != NULL && roots[0] != '\0' ? ":" : "", dev->dir);
    for (i = 0; environ[i] != NULL; i++) {
        if (!is_overridden(environ[i]))
            envp[n++] = environ[i];
    }
    for (i = 0; i < 6; i++)
        envp[n++] = overrides[i];
    envp[n] = NULL;

    if (posix_spawn_file_actions_init(&fa) != 0) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto out;
    }
    has_fa = true;
    if (posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) !=
            0 ||
        posix_spawn_file_actions_addopen(
            &fa, 1, log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) != 0 ||
        posix_spawn_file_actions_adddup2(&fa, 1, 2) != 0) {
        rc = er_err_set(err, ER_ENOMEM, ER_ERRCLASS_FATAL, "out of memory");
        goto out;
    }
    rc = posix_spawn(&pid, dev->worker_path, &fa, NULL, argv, envp);
    if (rc != 0) {
        char msg[128];

        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "spawn %s: %s",
                        dev->worker_path, er_strerror(rc, msg, sizeof(msg)));
        goto out;
    }
    dev->workers[dev->worker_cnt++] = pid;
    printf("# worker %d: pid %ld, log %s\n", idx, (long)pid, log_path);

out:
    if (has_fa)
        posix_spawn_file_actions_destroy(&fa);
    for (i = 0; i < 6; i++)
        er_free(overrides[i]);
    er_free(envp);
    return rc;
}

/* Returns true when worker i has exited (its slot is then cleared) and
 * writes a line saying how; status is its exit code, or 128+signal. */
static bool reap_worker(struct dev *dev, int i, bool is_blocking, int *status)
{
    int st = 0;
    pid_t r;

    if (dev->workers[i] <= 0)
        return true;
    do {
        r = waitpid(dev->workers[i], &st, is_blocking ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return false;
    if (r < 0) {
        *status = 1;
    } else if (WIFEXITED(st)) {
        *status = WEXITSTATUS(st);
    } else if (WIFSIGNALED(st)) {
        *status = 128 + WTERMSIG(st);
    } else {
        *status = 1;
    }
    dev->workers[i] = 0;
    return true;
}

/* SIGTERM every worker, wait up to DEV_STOP_WAIT_MS, then SIGKILL. Returns
 * true when all exited with status 0. */
static bool stop_workers(struct dev *dev)
{
    int64_t deadline = er_time_mono_ms() + DEV_STOP_WAIT_MS;
    bool is_clean = true;
    int i;

    for (i = 0; i < dev->worker_cnt; i++) {
        if (dev->workers[i] > 0)
            kill(dev->workers[i], SIGTERM);
    }
    for (i = 0; i < dev->worker_cnt; i++) {
        pid_t pid = dev->workers[i];
        int status = 0;

        if (pid <= 0)
            continue;
        while (!reap_worker(dev, i, false, &status) &&
               er_time_mono_ms() < deadline)
            sleep_ms(50);
        if (dev->workers[i] > 0) {
            fprintf(stderr,
                    "envrunctl dev: worker %d (pid %ld) ignored "
                    "SIGTERM, killing it\n",
                    i + 1, (long)pid);
            kill(pid, SIGKILL);
            reap_worker(dev, i, true, &status);
        }
        printf("# worker %d (pid %ld) exited with status %d\n", i + 1,
               (long)pid, status);
        if (status != 0)
            is_clean = false;
    }
    return is_clean;
}

/* Print the last lines of each worker's log to stderr (after a failure). */
static void show_worker_logs(const struct dev *dev)
{
    int i;

    for (i = 0; i < dev->worker_cnt; i++) {
        char path[DEV_PATH_MAX];
        char line[1024];
        long starts[DEMO_LOG_TAIL_LINES];
        long total = 0;
        long first;
        FILE *f;

        snprintf(path, sizeof(path), "%s/worker-%d.log", dev->dir, i + 1);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        /* Remember where the last lines start, then print from there. */
        for (;;) {
            long pos = ftell(f);

            if (fgets(line, sizeof(line), f) == NULL)
                break;
            starts[total % DEMO_LOG_TAIL_LINES] = pos;
            total++;
        }
        fprintf(stderr, "---- last lines of %s\n", path);
        first = total > DEMO_LOG_TAIL_LINES ? total - DEMO_LOG_TAIL_LINES : 0;
        if (total > 0 &&
            fseek(f, starts[first % DEMO_LOG_TAIL_LINES], SEEK_SET) == 0) {
            while (fgets(line, sizeof(line), f) != NULL)
                fputs(line, stderr);
        }
        fclose(f);
    }
}

static int dev_start(struct dev *dev, int partition_cnt, struct er_err *err)
{
    const char *tmp = er_ctl_util_env("TMPDIR", "/tmp");
    int n;

    n = snprintf(dev->dir, sizeof(dev->dir), "%s/envrun-dev-XXXXXX", tmp);
    if (n < 0 || (size_t)n >= sizeof(dev->dir))
        return er_err_set(err, ER_E2BIG, ER_ERRCLASS_FATAL,
                          "TMPDIR is too long");
    if (mkdtemp(dev->dir) == NULL) {
        char msg[128];

        dev->dir[0] = '\0';
        return er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "mkdtemp %s: %s", tmp,
                          er_strerror(errno, msg, sizeof(msg)));
    }
    dev->kafka =
        er_devstack_kafka_start(DEV_BROKERS, partition_cnt, dev->prefix, err);
    if (dev->kafka == NULL)
        return err != NULL ? err->code : ER_EKAFKA;
    dev->brokers = er_devstack_kafka_bootstraps(dev->kafka);
    dev->pg = er_devstack_pg_start(NULL, err);
    if (dev->pg == NULL)
        return err != NULL ? err->code : ER_EIO;
    return er_devstack_pg_create_db(dev->pg, "envrun", dev->db_url,
                                    sizeof(dev->db_url), err);
}

/* Tear down in dependency order: workers first (they commit offsets and
 * finish steps against Kafka and Postgres), then the mock cluster and
 * Postgres; the directory goes unless keep_dir (logs for a post-mortem).
 * Returns true when the workers stopped cleanly. */
static bool dev_stop(struct dev *dev, bool keep_dir)
{
    bool is_clean = stop_workers(dev);

    er_devstack_kafka_stop(dev->kafka);
    dev->kafka = NULL;
    er_devstack_pg_stop(dev->pg);
    dev->pg = NULL;
    if (dev->dir[0] != '\0') {
        if (keep_dir)
            printf("# kept %s\n", dev->dir);
        else
            er_devstack_rmtree(dev->dir);
    }
    return is_clean;
}

/* ================================================================
 * The demo
 * ================================================================ */

static const char *jstr(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));

    return s != NULL ? s : "-";
}

static double offset_s(const struct demo *demo)
{
    return (double)(er_time_mono_ms() - demo->t0_ms) / 1000.0;
}

static void on_result(struct demo *demo, json_t *v)
{
    const char *command_id = jstr(v, "commandId");
    const char *outcome = jstr(v, "outcome");
    const char *error = jstr(v, "errorCode");
    const char *lease = jstr(v, "leaseId");
    int i;

    demo->result_cnt++;
    printf("+%.3fs %-12s %-8s %-8s", offset_s(demo), "result", jstr(v, "kind"),
           outcome);
    if (strcmp(error, "-") != 0)
        printf(" %s: %s", error, jstr(v, "errorMessage"));
    else
        printf(" lease=%s env=%s driver=%s", lease, jstr(v, "environmentId"),
               jstr(v, "driver"));
    for (i = 0; i < DEMO_CMD_CNT; i++) {
        struct demo_cmd *cmd = &demo->cmds[i];
        bool is_want_error;

        if (!cmd->is_sent || strcmp(cmd->command_id, command_id) != 0)
            continue;
        if (cmd->has_result) {
            printf("  (again: redelivered)");
            break;
        }
        cmd->has_result = true;
        is_want_error = cmd->want_error != NULL;
        cmd->is_expected = strcmp(outcome, cmd->want_outcome) == 0 &&
                           (is_want_error ? strcmp(error, cmd->want_error) == 0
                                          : strcmp(error, "-") == 0);
        if (strcmp(lease, "-") != 0)
            snprintf(cmd->lease_id, sizeof(cmd->lease_id), "%s", lease);
        if (!cmd->is_expected)
            printf("  UNEXPECTED (wanted %s%s%s)", cmd->want_outcome,
                   is_want_error ? " " : "",
                   is_want_error ? cmd->want_error : "");
        break;
    }
    printf("\n");
}

/* Print one consumed record as a timeline line. */
static void on_record(struct demo *demo, const rd_kafka_message_t *msg)
{
    const char *topic = er_ctl_util_topic_short(demo->dev->prefix,
                                                rd_kafka_topic_name(msg->rkt));
    struct er_buf text;
    struct er_err err;
    json_t *v = NULL;

    er_buf_init(&text, DEMO_VALUE_MAX);
    er_err_clear(&err);
    if (msg->payload == NULL ||
        er_codec_to_json(msg->payload, msg->len, &text, &err) != 0) {
        printf("+%.3fs %-12s undecodable record at [%d] @%lld: %s\n",
               offset_s(demo), topic, (int)msg->partition,
               (long long)msg->offset, err.msg);
        goto out;
    }
    v = json_loadb((const char *)text.data, text.len, 0, NULL);
    if (v == NULL) {
        printf("+%.3fs %-12s %s\n", offset_s(demo), topic, text.data);
        goto out;
    }
    if (strcmp(topic, "results") == 0) {
        on_result(demo, v);
    } else if (strcmp(topic, "lease-events") == 0) {
        demo->lease_event_cnt++;
        printf("+%.3fs %-12s v%lld %-9s lease=%s env=%s\n", offset_s(demo),
               "lease-event",
               (long long)json_integer_value(json_object_get(v, "version")),
               jstr(v, "status"), jstr(v, "leaseId"), jstr(v, "environmentId"));
    } else if (strcmp(topic, "activity") == 0) {
        demo->activity_cnt++;
        printf("+%.3fs %-12s %-30s %s=%s\n", offset_s(demo), "activity",
               jstr(v, "action"), jstr(v, "entityType"), jstr(v, "entityId"));
    } else {
        printf("+%.3fs %-12s %s\n", offset_s(demo), topic, text.data);
    }

out:
    json_decref(v);
    er_buf_fini(&text);
}

static bool is_worker_dead(struct dev *dev)
{
    int i;
    int status = 0;

    for (i = 0; i < dev->worker_cnt; i++) {
        pid_t pid = dev->workers[i];

        if (pid > 0 && reap_worker(dev, i, false, &status)) {
            fprintf(stderr,
                    "envrunctl dev: worker %d (pid %ld) exited early with "
                    "status %d\n",
                    i + 1, (long)pid, status);
            return true;
        }
    }
    return false;
}

/* Consume and print records until cmd has its result (cmd NULL: until
 * DEMO_QUIET_MS pass without a record), the deadline, a signal or a dead
 * worker. Returns 0 when the wait was satisfied. */
static int demo_wait(struct demo *demo, const struct demo_cmd *cmd)
{
    int64_t last_ms = er_time_mono_ms();

    for (;;) {
        rd_kafka_message_t *msg;

        if (cmd != NULL && cmd->has_result)
            return 0;
        if (er_ctl_util_stop) {
            fprintf(stderr, "envrunctl dev: interrupted\n");
            return ER_EINVAL;
        }
        if (er_time_mono_ms() >= demo->deadline_ms) {
            if (cmd == NULL)
                return 0;
            fprintf(stderr,
                    "envrunctl dev: no result for %s (%s) within "
                    "%d s\n",
                    cmd->label, cmd->command_id, DEMO_TIMEOUT_MS / 1000);
            return ER_ETIMEDOUT;
        }
        if (is_worker_dead(demo->dev))
            return ER_EIO;
        msg = rd_kafka_consumer_poll(demo->consumer, 100);
        if (msg == NULL) {
            if (cmd == NULL && er_time_mono_ms() - last_ms >= DEMO_QUIET_MS)
                return 0;
            continue;
        }
        if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            last_ms = er_time_mono_ms();
            on_record(demo, msg);
        } else {
            fprintf(stderr, "envrunctl dev: consumer: %s\n",
                    rd_kafka_message_errstr(msg));
        }
        rd_kafka_message_destroy(msg);
    }
}

/* JSON text of {"cwd": path}; path is ours (mkdtemp), no escaping needed
 * beyond quotes and backslashes, which mkdtemp names do not contain. */
static int workspace_json(const char *path, char *out, size_t out_len)
{
    int n;

    if (strchr(path, '"') != NULL || strchr(path, '\\') != NULL)
        return ER_EINVAL;
    n = snprintf(out, out_len, "{\"cwd\":\"%s\"}", path);
    return n < 0 || (size_t)n >= out_len ? ER_E2BIG : 0;
}

/* Encode and produce one demo command for run (the key), print it. */
static int demo_send(struct demo *demo, struct demo_cmd *dc,
                     struct er_run_command *cmd, struct er_err *err)
{
    struct er_buf value;
    char topic[512];
    int rc;

    er_buf_init(&value, DEMO_VALUE_MAX);
    if (er_uuid_v4(dc->command_id) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "no random bytes");
        goto out;
    }
    cmd->command_id = dc->command_id;
    cmd->issued_at_ms = er_time_now_ms();
    cmd->kind = dc->kind;
    rc = er_codec_command_encode(cmd, &value, err);
    if (rc != 0)
        goto out;
    rc = er_ctl_util_topic_full(demo->dev->prefix, "commands", topic,
                                sizeof(topic));
    if (rc != 0) {
        rc = er_err_set(err, rc, ER_ERRCLASS_FATAL, "topic prefix too long");
        goto out;
    }
    rc =
        er_ctl_util_produce_sync(demo->producer, topic, cmd->heartbeat_run_id,
                                 strlen(cmd->heartbeat_run_id), value.data,
                                 value.len, NULL, DEMO_SEND_TIMEOUT, NULL, err);
    if (rc != 0)
        goto out;
    dc->is_sent = true;
    printf("+%.3fs %-12s %-8s run=%s cmd=%s\n", offset_s(demo), "command",
           er_codec_kind_name(dc->kind), cmd->heartbeat_run_id, dc->command_id);

out:
    er_buf_fini(&value);
    return rc;
}

static void demo_cmd_init(struct demo_cmd *dc, const char *label,
                          enum er_cmd_kind kind, const char *want_outcome,
                          const char *want_error)
{
    memset(dc, 0, sizeof(*dc));
    dc->label = label;
    dc->kind = kind;
    dc->want_outcome = want_outcome;
    dc->want_error = want_error;
}

/* The scripted run. Returns 0 when every command got its expected result. */
static int demo_run(struct dev *dev, struct er_err *err)
{
    struct demo demo;
    struct er_run_command cmd;
    struct er_buf table;
    char company[37];
    char agent[37];
    char run[37];
    char probe_run[37];
    char missing_env[37];
    char ws_dir[DEV_PATH_MAX];
    char ws_json[DEV_PATH_MAX + 16];
    char full[3][512];
    char adapter[] = "claude_local";
    const char *topics[3];
    int i;
    int rc;
    int got = 0;
    int ok = 0;

    memset(&demo, 0, sizeof(demo));
    er_buf_init(&table, 1024 * 1024);
    demo.dev = dev;
    demo_cmd_init(&demo.cmds[0], "acquire (Local environment)", ER_CMD_ACQUIRE,
                  "ok", NULL);
    demo_cmd_init(&demo.cmds[1], "realize", ER_CMD_REALIZE, "ok", NULL);
    demo_cmd_init(&demo.cmds[2], "release", ER_CMD_RELEASE, "ok", NULL);
    demo_cmd_init(&demo.cmds[3], "acquire (missing environment)",
                  ER_CMD_ACQUIRE, "error", "environment_not_found");
    if (er_uuid_v4(company) != 0 || er_uuid_v4(agent) != 0 ||
        er_uuid_v4(run) != 0 || er_uuid_v4(probe_run) != 0 ||
        er_uuid_v4(missing_env) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL, "no random bytes");
        goto out;
    }
    snprintf(ws_dir, sizeof(ws_dir), "%s/workspace", dev->dir);
    if (mkdir(ws_dir, 0755) != 0 ||
        workspace_json(ws_dir, ws_json, sizeof(ws_json)) != 0) {
        rc = er_err_set(err, ER_EIO, ER_ERRCLASS_FATAL,
                        "cannot make the demo workspace %s", ws_dir);
        goto out;
    }

    demo.producer = er_ctl_util_kafka_new(dev->brokers, true, err);
    if (demo.producer == NULL) {
        rc = err != NULL ? err->code : ER_EKAFKA;
        goto out;
    }
    demo.consumer = er_ctl_util_kafka_new(dev->brokers, false, err);
    if (demo.consumer == NULL) {
        rc = err != NULL ? err->code : ER_EKAFKA;
        goto out;
    }
    (void)er_ctl_util_topic_full(dev->prefix, "results", full[0], 512);
    (void)er_ctl_util_topic_full(dev->prefix, "lease-events", full[1], 512);
    (void)er_ctl_util_topic_full(dev->prefix, "activity", full[2], 512);
    for (i = 0; i < 3; i++)
        topics[i] = full[i];
    rc = er_ctl_util_assign_all(demo.consumer, topics, 3, true,
                                DEMO_METADATA_MS, err);
    if (rc != 0)
        goto out;

    printf("# company %s, agent %s\n# run %s (acquire, realize, release), "
           "run %s (acquire of a missing environment)\n",
           company, agent, run, probe_run);
    printf("# the worker joins its consumer group first (about 3 s on the "
           "mock cluster)\n");
    fflush(stdout);
    demo.t0_ms = er_time_mono_ms();
    demo.deadline_ms = demo.t0_ms + DEMO_TIMEOUT_MS;

    /* The failing acquire runs under its own run id, in parallel. */
    memset(&cmd, 0, sizeof(cmd));
    cmd.company_id = company;
    cmd.agent_id = agent;
    cmd.heartbeat_run_id = probe_run;
    cmd.adapter_type = adapter;
    cmd.selected_environment_id = missing_env;
    rc = demo_send(&demo, &demo.cmds[3], &cmd, err);
    if (rc != 0)
        goto out;

    memset(&cmd, 0, sizeof(cmd));
    cmd.company_id = company;
    cmd.agent_id = agent;
    cmd.heartbeat_run_id = run;
    cmd.adapter_type = adapter;
    rc = demo_send(&demo, &demo.cmds[0], &cmd, err);
    if (rc == 0)
        rc = demo_wait(&demo, &demo.cmds[0]);
    if (rc != 0)
        goto out;

    memset(&cmd, 0, sizeof(cmd));
    cmd.company_id = company;
    cmd.agent_id = agent;
    cmd.heartbeat_run_id = run;
    cmd.adapter_type = adapter;
    cmd.lease_id =
        demo.cmds[0].lease_id[0] != '\0' ? demo.cmds[0].lease_id : NULL;
    cmd.workspace_json = ws_json;
    rc = demo_send(&demo, &demo.cmds[1], &cmd, err);
    if (rc == 0)
        rc = demo_wait(&demo, &demo.cmds[1]);
    if (rc != 0)
        goto out;

    memset(&cmd, 0, sizeof(cmd));
    cmd.company_id = company;
    cmd.agent_id = agent;
    cmd.heartbeat_run_id = run;
    cmd.release_status = ER_RELEASE_RELEASED;
    rc = demo_send(&demo, &demo.cmds[2], &cmd, err);
    if (rc == 0)
        rc = demo_wait(&demo, &demo.cmds[2]);
    if (rc == 0)
        rc = demo_wait(&demo, &demo.cmds[3]);
    if (rc == 0)
        rc = demo_wait(&demo, NULL); /* late events */

    if (er_ctl_leases_table(dev->db_url, company, NULL, NULL, 10, &table,
                            NULL) == 0) {
        printf("\nleases of company %s in postgres:\n", company);
        fwrite(table.data, 1, table.len, stdout);
    }

out:
    for (i = 0; i < DEMO_CMD_CNT; i++) {
        if (demo.cmds[i].has_result)
            got++;
        if (demo.cmds[i].is_expected)
            ok++;
    }
    printf("\nsummary: %d commands sent, %d results (%d as expected), "
           "%d lease events, %d activity events\n",
           DEMO_CMD_CNT, got, ok, demo.lease_event_cnt, demo.activity_cnt);
    if (rc == 0 && ok != DEMO_CMD_CNT)
        rc = ER_EINVAL;
    if (demo.consumer != NULL) {
        rd_kafka_consumer_close(demo.consumer);
        rd_kafka_destroy(demo.consumer);
    }
    if (demo.producer != NULL)
        rd_kafka_destroy(demo.producer);
    er_buf_fini(&table);
    return rc;
}

int er_ctl_dev_main(int argc, char **argv)
{
    struct dev dev;
    struct er_err err;
    const char *partitions_s = NULL;
    const char *workers_s = NULL;
    bool is_demo = false;
    int64_t partition_cnt = 3;
    int64_t worker_cnt = -1;
    size_t pos_cnt = 0;
    bool is_ok = false;
    bool is_clean;
    int i;
    int exit_code = ER_CTL_EXIT_USAGE;
    const struct er_ctl_opt opts[] = {
        { "demo", NULL, &is_demo, NULL },
        { "partitions", &partitions_s, NULL, NULL },
        { "workers", &workers_s, NULL, NULL },
    };

    memset(&dev, 0, sizeof(dev));
    er_err_clear(&err);
    switch (er_ctl_util_parse("dev", argc, argv, opts,
                              sizeof(opts) / sizeof(opts[0]), NULL, 0,
                              &pos_cnt)) {
    case ER_CTL_PARSE_OK:
        break;
    case ER_CTL_PARSE_HELP:
        fputs(usage, stdout);
        return ER_CTL_EXIT_OK;
    case ER_CTL_PARSE_USAGE:
        return ER_CTL_EXIT_USAGE;
    }
    if (partitions_s != NULL &&
        er_ctl_util_parse_int(partitions_s, 1, DEV_PARTITIONS_MAX,
                              &partition_cnt) != 0) {
        er_ctl_util_usage_error("dev",
                                "--partitions: expected an integer "
                                "1..%d",
                                DEV_PARTITIONS_MAX);
        return ER_CTL_EXIT_USAGE;
    }
    if (workers_s != NULL &&
        er_ctl_util_parse_int(workers_s, is_demo ? 1 : 0, DEV_WORKERS_MAX,
                              &worker_cnt) != 0) {
        er_ctl_util_usage_error("dev",
                                "--workers: expected an integer "
                                "%d..%d",
                                is_demo ? 1 : 0, DEV_WORKERS_MAX);
        return ER_CTL_EXIT_USAGE;
    }
    if (worker_cnt < 0)
        worker_cnt = is_demo ? 1 : 0;
    if (er_ctl_util_prefix_get("dev", NULL, &dev.prefix) != 0)
        return ER_CTL_EXIT_USAGE;

    exit_code = ER_CTL_EXIT_FAIL;
    er_ctl_util_signals_install();
    if (worker_cnt > 0 && find_worker(&dev, &err) != 0)
        goto out;
    if (dev_start(&dev, (int)partition_cnt, &err) != 0)
        goto out;
    printf("export ENVRUN_KAFKA_BROKERS='%s'\n", dev.brokers);
    printf("export ENVRUN_DATABASE_URL='%s'\n", dev.db_url);
    printf("export ENVRUN_TOPIC_PREFIX='%s'\n", dev.prefix);
    printf("# dev directory %s\n", dev.dir);
    printf("# workers' ENVRUN_WORKSPACE_ROOTS includes %s/workspace\n",
           dev.dir);
    fflush(stdout);
    for (i = 0; i < worker_cnt; i++) {
        if (spawn_worker(&dev, i + 1, &err) != 0)
            goto out;
    }
    fflush(stdout);

    if (is_demo) {
        if (demo_run(&dev, &err) == 0)
            is_ok = true;
    } else {
        printf("# running; stop with Ctrl-C or SIGTERM\n");
        fflush(stdout);
        while (!er_ctl_util_stop) {
            sleep_ms(200);
            if (is_worker_dead(&dev))
                break;
        }
        is_ok = er_ctl_util_stop != 0;
    }

out:
    if (err.code != 0)
        fprintf(stderr, "envrunctl dev: %s\n", err.msg);
    if (!is_ok && dev.worker_cnt > 0)
        show_worker_logs(&dev);
    is_clean = stop_workers(&dev);
    if (!is_clean && is_ok) {
        fprintf(stderr, "envrunctl dev: a worker did not stop cleanly\n");
        show_worker_logs(&dev);
        is_ok = false;
    }
    dev_stop(&dev, !is_ok);
    fflush(stdout);
    if (is_ok)
        exit_code = ER_CTL_EXIT_OK;
    return exit_code;
}
