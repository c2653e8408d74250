/* perf_bench: the performance table of issue [7] (make bench). One worker
 * (concurrency 16) on the mock cluster over TCP and the PostgreSQL of
 * ENVRUN_TEST_PG_URL: RUNS runs of acquire, realize and release at full
 * speed; then paced at half that rate and at 20 commands/s (a run's next
 * command only after its previous result, as a scheduler sends them) for
 * command → result latencies; the worker's CPU and RSS; the RSS 10,000
 * active leases add; then pgbench on the same database with scripts of the
 * worker's statements per command (tests/bench/pgbench/). Prints one
 * Markdown table with each target and whether it was met; targets are not
 * asserted. Exit 0 when it measured, 1 on a failure. Label bench. argv[1]:
 * RUNS (default 2000); PGBENCH: the pgbench binary. Single-threaded. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/support/harness.h"

#define RUNS_DEFAULT       2000
#define CONCURRENCY        16
#define PARTITIONS         8
#define PACED_MS           10000
#define LOW_RATE           20.0
#define IDLE_START_MS      2000
#define IDLE_AFTER_MS      3000
#define LEASES             10000
#define LEASES_TEXT        "10,000"
#define LEASE_BATCH        500
#define LEASE_SETTLE_MS    2000
#define DRAIN_MS           60000
#define PGBENCH_CLIENTS    "16"
#define PGBENCH_SECONDS    "10"
#define PGBENCH_TIMEOUT_MS 120000
#define PGBENCH_DEFAULT    "/usr/lib/postgresql/15/bin/pgbench"
#define SQL_DIR            ER_SOURCE_DIR "/tests/bench/pgbench"

/* Targets of issue [7]. */
#define TARGET_RATIO      1.5
#define TARGET_HALF_P99   20.0
#define TARGET_LOW_P50    5.0
#define TARGET_IDLE_MIB   16.0
#define TARGET_LEASE_KIB  4.0
#define FETCH_WAIT_MS_STR "1"
/* Runs belong to this many companies, as pgbench's acquire.sql does: a
 * company has many agents and runs, and its Local environment is made by
 * its first acquire only. */
#define COMPANIES         100

/* A real broker answers a fetch as soon as records arrive; the mock
 * cluster holds it for fetch.wait.max.ms whatever comes, which every
 * command's latency would include twice (worker, reader). The session
 * settings are the harness's (see er_harness_worker_start). */
static const char *const worker_env[] = {
    "ENVRUN_KAFKA_PROPS=session.timeout.ms=6000,heartbeat.interval.ms=500,"
    "fetch.wait.max.ms=" FETCH_WAIT_MS_STR,
    NULL,
};

/* A new run (new agent and run ids) of one of COMPANIES companies. */
static void run_init(struct er_harness_run *run)
{
    static struct er_harness_run companies[COMPANIES];
    static size_t next;
    struct er_harness_run *co = &companies[next++ % COMPANIES];

    if (co->company_id[0] == '\0')
        er_harness_run_init(co);
    er_harness_run_init_same_company(run, co);
}

/* ----------------------------------------------------------------
 * The worker process: /proc
 * ---------------------------------------------------------------- */

/* A "Name:   123 kB" field of /proc/<pid>/status in KiB; -1 if missing. */
static long status_kib(int pid, const char *field)
{
    char path[64];
    char line[256];
    size_t field_len = strlen(field);
    FILE *f;
    long kib = -1;

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, field, field_len) == 0)
            kib = strtol(line + field_len, NULL, 10);
    }
    fclose(f);
    return kib;
}

/* utime + stime of /proc/<pid>/stat in seconds; -1 on error. */
static double cpu_s(int pid)
{
    char path[64];
    char line[1024];
    const char *p;
    char *end;
    long long ticks = 0;
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f;
    int i;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    p = fgets(line, sizeof(line), f);
    fclose(f);
    if (p == NULL || hz <= 0)
        return -1;
    /* The command name may hold spaces: fields count from after its ')'.
     * The state is field 3, utime 14, stime 15. */
    p = strrchr(line, ')');
    if (p == NULL || p[1] != ' ')
        return -1;
    p += 3; /* past ") " and the one-letter state */
    for (i = 4; i <= 15; i++) {
        long long v = strtoll(p, &end, 10);

        if (end == p)
            return -1;
        if (i >= 14)
            ticks += v;
        p = end;
    }
    return (double)ticks / (double)hz;
}

/* This process's user + system CPU in seconds: the mock cluster, the
 * producer and the reader. */
static double self_cpu_s(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double mib(long kib)
{
    return (double)kib / 1024.0;
}

/* ----------------------------------------------------------------
 * Paced phases
 * ---------------------------------------------------------------- */

/* One command sent in a paced phase. */
struct sent {
    char id[37];
    int64_t sent_us; /* er_harness_mono_us() just before the send */
    int64_t recv_us; /* its result's er_harness_record.recv_us; 0: none */
    size_t run;      /* index into paced.runs */
};

/* One heartbeat run of a paced phase; next is the command it sends next:
 * 0 acquire, 1 realize, 2 release, 3 none. */
struct prun {
    struct er_harness_run run;
    int next;
};

struct paced {
    struct sent *cmds;
    size_t cmd_cnt;
    size_t cmd_max;
    size_t *slots; /* open addressing on the command id: cmds index + 1 */
    size_t slot_cnt;
    struct prun *runs;
    size_t run_cnt;
    size_t *ready; /* ring of runs whose last result came, with a next */
    size_t ready_head;
    size_t ready_len;
    size_t rec_next; /* results scanned so far */
    size_t recv_cnt;
    size_t not_ok_cnt; /* results whose outcome is not ok */
};

/* What a paced phase measured; latencies in ms. */
struct lat {
    double rate;   /* commands/s asked for */
    double actual; /* commands sent / time from first to last send */
    size_t cmd_cnt;
    size_t not_ok_cnt;
    double p50;
    double p99;
    double max;
};

static size_t id_hash(const char *id)
{
    uint64_t h = 14695981039346656037u; /* FNV-1a */

    for (; *id != '\0'; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211u;
    return (size_t)h;
}

static void paced_insert(struct paced *pc, size_t idx)
{
    size_t i = id_hash(pc->cmds[idx].id) & (pc->slot_cnt - 1);

    while (pc->slots[i] != 0)
        i = (i + 1) & (pc->slot_cnt - 1);
    pc->slots[i] = idx + 1;
}

static struct sent *paced_find(struct paced *pc, const char *id)
{
    size_t i = id_hash(id) & (pc->slot_cnt - 1);

    while (pc->slots[i] != 0) {
        struct sent *s = &pc->cmds[pc->slots[i] - 1];

        if (strcmp(s->id, id) == 0)
            return s;
        i = (i + 1) & (pc->slot_cnt - 1);
    }
    return NULL;
}

static void ready_push(struct paced *pc, size_t run)
{
    pc->ready[(pc->ready_head + pc->ready_len) % pc->cmd_max] = run;
    pc->ready_len++;
}

/* Match the results that arrived since the last scan to their commands
 * (by commandId); a run whose result came and which has a next command
 * becomes ready. */
static void paced_scan(struct er_harness *h, struct paced *pc)
{
    size_t cnt = er_harness_count(h, ER_HARNESS_RESULTS);

    for (; pc->rec_next < cnt; pc->rec_next++) {
        const struct er_harness_record *rec =
            er_harness_get(h, ER_HARNESS_RESULTS, pc->rec_next);
        const char *id = er_harness_json_str(rec->json, "commandId");
        const char *outcome = er_harness_json_str(rec->json, "outcome");
        struct sent *s = id != NULL ? paced_find(pc, id) : NULL;

        if (s == NULL || s->recv_us != 0)
            continue; /* another phase's, or a second copy */
        s->recv_us = rec->recv_us;
        pc->recv_cnt++;
        if (outcome == NULL || strcmp(outcome, "ok") != 0)
            pc->not_ok_cnt++;
        if (pc->runs[s->run].next < 3)
            ready_push(pc, s->run);
    }
}

static int paced_send(struct er_harness *h, struct paced *pc)
{
    struct er_harness_cmd c;
    struct sent *s;
    struct prun *r;
    size_t run;

    ER_ASSERT(pc->cmd_cnt < pc->cmd_max);
    if (pc->ready_len > 0) {
        run = pc->ready[pc->ready_head];
        pc->ready_head = (pc->ready_head + 1) % pc->cmd_max;
        pc->ready_len--;
    } else {
        run = pc->run_cnt++;
        run_init(&pc->runs[run].run);
        pc->runs[run].next = 0;
    }
    r = &pc->runs[run];
    switch (r->next) {
    case 0:
        er_harness_cmd_acquire(&c, &r->run);
        break;
    case 1:
        er_harness_cmd_realize(&c, &r->run, h->dir);
        break;
    default:
        er_harness_cmd_release(&c, &r->run, ER_RELEASE_RELEASED);
        break;
    }
    r->next++;
    s = &pc->cmds[pc->cmd_cnt];
    memcpy(s->id, c.command_id, sizeof(s->id));
    s->run = run;
    s->recv_us = 0;
    s->sent_us = er_harness_mono_us();
    if (er_harness_send(h, &c.cmd) != 0)
        return -1;
    paced_insert(pc, pc->cmd_cnt);
    pc->cmd_cnt++;
    return 0;
}

/* Poll (recording what arrives) until the monotonic time until_us. */
static void poll_until(struct er_harness *h, struct paced *pc, int64_t until_us)
{
    for (;;) {
        int64_t left_us;

        paced_scan(h, pc);
        left_us = until_us - er_harness_mono_us();
        if (left_us <= 0)
            return;
        /* Whole milliseconds in er_harness_poll, the rest in short polls;
         * records are stamped as they are handed over either way. */
        er_harness_poll(h, (int)(left_us / 1000));
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/* Nearest rank: the smallest value with at least q of the samples at or
 * below it. */
static double pct_ms(const int64_t *v, size_t n, double q)
{
    size_t rank = (size_t)((double)n * q + 0.999999);

    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)v[rank - 1] / 1000.0;
}

/* Send commands at rate per second for dur_ms, one per tick, each to a
 * run whose previous result has come (else to a new run), then wait for
 * every result. Returns 0 with out filled, or -1 after printing why. */
static int paced_phase(struct er_harness *h, double rate, int dur_ms,
                       struct lat *out)
{
    struct paced pc;
    int64_t *lat_us = NULL;
    int64_t t0;
    int64_t last_send = 0;
    int64_t deadline;
    double tick_us = 1e6 / rate;
    size_t n = (size_t)(rate * dur_ms / 1000.0);
    size_t i;
    int rc = -1;

    memset(&pc, 0, sizeof(pc));
    memset(out, 0, sizeof(*out));
    out->rate = rate;
    if (n < 1)
        n = 1;
    pc.cmd_max = n;
    pc.slot_cnt = 64; /* a power of two, at least twice the commands */
    while (pc.slot_cnt < 2 * n)
        pc.slot_cnt *= 2;
    pc.cmds = er_calloc(n, sizeof(*pc.cmds));
    pc.slots = er_calloc(pc.slot_cnt, sizeof(*pc.slots));
    pc.runs = er_calloc(n, sizeof(*pc.runs));
    pc.ready = er_calloc(n, sizeof(*pc.ready));
    lat_us = er_calloc(n, sizeof(*lat_us));
    if (pc.cmds == NULL || pc.slots == NULL || pc.runs == NULL ||
        pc.ready == NULL || lat_us == NULL) {
        fprintf(stderr, "perf_bench: out of memory\n");
        goto out;
    }
    pc.rec_next = er_harness_count(h, ER_HARNESS_RESULTS);
    t0 = er_harness_mono_us();
    for (i = 0; i < n; i++) {
        /* Ticks on a fixed grid: a late tick does not delay the rest. */
        poll_until(h, &pc, t0 + (int64_t)((double)i * tick_us));
        last_send = er_harness_mono_us();
        if (paced_send(h, &pc) != 0)
            goto out;
    }
    deadline = er_harness_mono_us() + (int64_t)DRAIN_MS * 1000;
    /* No er_harness_flush here: while it waits, nothing is read, and
     * what arrives meanwhile would be stamped late. */
    while (pc.recv_cnt < pc.cmd_cnt && er_harness_mono_us() < deadline)
        poll_until(h, &pc, er_harness_mono_us() + 10000);
    if (pc.recv_cnt < pc.cmd_cnt) {
        fprintf(stderr,
                "perf_bench: %zu of %zu commands at %.0f/s got no "
                "result in %d s\n",
                pc.cmd_cnt - pc.recv_cnt, pc.cmd_cnt, rate, DRAIN_MS / 1000);
        goto out;
    }
    for (i = 0; i < pc.cmd_cnt; i++)
        lat_us[i] = pc.cmds[i].recv_us - pc.cmds[i].sent_us;
    qsort(lat_us, pc.cmd_cnt, sizeof(*lat_us), cmp_i64);
    out->cmd_cnt = pc.cmd_cnt;
    out->not_ok_cnt = pc.not_ok_cnt;
    out->actual = last_send > t0 ? (double)(pc.cmd_cnt - 1) * 1e6 /
                                       (double)(last_send - t0)
                                 : rate;
    out->p50 = pct_ms(lat_us, pc.cmd_cnt, 0.50);
    out->p99 = pct_ms(lat_us, pc.cmd_cnt, 0.99);
    out->max = (double)lat_us[pc.cmd_cnt - 1] / 1000.0;
    rc = 0;

out:
    er_free(pc.cmds);
    er_free(pc.slots);
    er_free(pc.runs);
    er_free(pc.ready);
    er_free(lat_us);
    return rc;
}

/* ----------------------------------------------------------------
 * Full speed and active leases
 * ---------------------------------------------------------------- */

/* Results from index from on whose outcome is not ok; *last_us: the
 * latest receive time among them. */
static size_t results_not_ok(struct er_harness *h, size_t from,
                             int64_t *last_us)
{
    size_t cnt = er_harness_count(h, ER_HARNESS_RESULTS);
    size_t bad = 0;
    size_t i;

    *last_us = 0;
    for (i = from; i < cnt; i++) {
        const struct er_harness_record *rec =
            er_harness_get(h, ER_HARNESS_RESULTS, i);
        const char *outcome = er_harness_json_str(rec->json, "outcome");

        if (outcome == NULL || strcmp(outcome, "ok") != 0)
            bad++;
        if (rec->recv_us > *last_us)
            *last_us = rec->recv_us;
    }
    return bad;
}

/* What the full-speed phase measured. */
struct full {
    double rate;           /* commands/s */
    double cpu_per_k;      /* the worker's CPU s per 1,000 commands */
    double self_cpu_per_k; /* this process's */
    size_t not_ok_cnt;
};

/* Send runs × (acquire, realize, release) at once; the rate runs from the
 * first send to the last result. */
static int full_speed(struct er_harness *h, int pid, int runs, struct full *out)
{
    struct er_harness_run *rs = NULL;
    struct er_harness_cmd c;
    size_t from = er_harness_count(h, ER_HARNESS_RESULTS);
    size_t want = from + (size_t)runs * 3;
    int64_t t0;
    int64_t t1;
    double cpu0;
    double cpu1;
    double self0;
    double self1;
    int i;
    int rc = -1;

    rs = er_calloc((size_t)runs, sizeof(*rs));
    if (rs == NULL)
        return -1;
    cpu0 = cpu_s(pid);
    self0 = self_cpu_s();
    t0 = er_harness_mono_us();
    for (i = 0; i < runs; i++) {
        run_init(&rs[i]);
        er_harness_cmd_acquire(&c, &rs[i]);
        if (er_harness_send(h, &c.cmd) != 0)
            goto out;
        er_harness_cmd_realize(&c, &rs[i], h->dir);
        if (er_harness_send(h, &c.cmd) != 0)
            goto out;
        er_harness_cmd_release(&c, &rs[i], ER_RELEASE_RELEASED);
        if (er_harness_send(h, &c.cmd) != 0)
            goto out;
    }
    if (!er_harness_wait_total(h, ER_HARNESS_RESULTS, want, 600000)) {
        fprintf(stderr, "perf_bench: only %zu of %zu results at full speed\n",
                er_harness_count(h, ER_HARNESS_RESULTS) - from, want - from);
        goto out;
    }
    cpu1 = cpu_s(pid);
    self1 = self_cpu_s();
    out->not_ok_cnt = results_not_ok(h, from, &t1);
    out->rate = (double)runs * 3 * 1e6 / (double)(t1 > t0 ? t1 - t0 : 1);
    out->cpu_per_k = cpu0 >= 0 && cpu1 >= 0
                         ? (cpu1 - cpu0) * 1000.0 / ((double)runs * 3)
                         : -1;
    out->self_cpu_per_k = (self1 - self0) * 1000.0 / ((double)runs * 3);
    rc = 0;
out:
    er_free(rs);
    return rc;
}

/* LEASES acquires of new runs, never released, in batches. */
static int acquire_leases(struct er_harness *h, size_t *not_ok)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    size_t from = er_harness_count(h, ER_HARNESS_RESULTS);
    size_t sent = 0;
    int64_t last_us;

    while (sent < LEASES) {
        size_t batch =
            LEASES - sent < LEASE_BATCH ? LEASES - sent : LEASE_BATCH;
        size_t i;

        for (i = 0; i < batch; i++) {
            run_init(&run);
            er_harness_cmd_acquire(&c, &run);
            if (er_harness_send(h, &c.cmd) != 0)
                return -1;
        }
        sent += batch;
        if (!er_harness_wait_total(h, ER_HARNESS_RESULTS, from + sent,
                                   120000)) {
            fprintf(stderr, "perf_bench: only %zu of %zu lease results\n",
                    er_harness_count(h, ER_HARNESS_RESULTS) - from, sent);
            return -1;
        }
    }
    *not_ok = results_not_ok(h, from, &last_us);
    return 0;
}

/* ----------------------------------------------------------------
 * pgbench
 * ---------------------------------------------------------------- */

/* The file's text (er_free), NULL after printing why. */
static char *read_text(const char *path)
{
    struct er_buf buf;
    char chunk[4096];
    size_t len;
    size_t n;
    FILE *f = fopen(path, "r");

    if (f == NULL) {
        fprintf(stderr, "perf_bench: cannot open %s\n", path);
        return NULL;
    }
    er_buf_init(&buf, (size_t)1024 * 1024);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (er_buf_append(&buf, chunk, n) != 0) {
            fclose(f);
            er_buf_fini(&buf);
            return NULL;
        }
    }
    fclose(f);
    if (er_buf_append(&buf, "", 1) != 0) {
        er_buf_fini(&buf);
        return NULL;
    }
    return (char *)er_buf_take(&buf, &len);
}

/* seed.sql, then pgbench in mode (simple, prepared) on the database at
 * db_url; returns its tps without the connection time, or -1 after
 * printing why. */
static double pgbench_tps(char *db_url, const char *mode)
{
    const char *bin = getenv("PGBENCH");
    char bin_arg[1024];
    char mode_arg[16];
    char acquire[sizeof(SQL_DIR) + 32];
    char realize[sizeof(SQL_DIR) + 32];
    char release[sizeof(SQL_DIR) + 32];
    char *seed = NULL;
    char *argv[20];
    char *out = NULL;
    const char *tps;
    double v = -1;
    int n = 0;
    int code;

    if (bin == NULL || bin[0] == '\0')
        bin = PGBENCH_DEFAULT;
    seed = read_text(SQL_DIR "/seed.sql");
    if (seed == NULL || er_harness_pg_exec(db_url, seed, 0, NULL) != 0) {
        fprintf(stderr, "perf_bench: %s/seed.sql failed\n", SQL_DIR);
        er_free(seed);
        return -1;
    }
    er_free(seed);
    /* execv's argv is not const: copies, not casts. */
    snprintf(bin_arg, sizeof(bin_arg), "%s", bin);
    snprintf(mode_arg, sizeof(mode_arg), "%s", mode);
    snprintf(acquire, sizeof(acquire), "%s/acquire.sql@1", SQL_DIR);
    snprintf(realize, sizeof(realize), "%s/realize.sql@1", SQL_DIR);
    snprintf(release, sizeof(release), "%s/release.sql@1", SQL_DIR);
    argv[n++] = bin_arg;
    argv[n++] = "-n";
    argv[n++] = "-c";
    argv[n++] = PGBENCH_CLIENTS;
    argv[n++] = "-j";
    argv[n++] = "2";
    argv[n++] = "-T";
    argv[n++] = PGBENCH_SECONDS;
    argv[n++] = "-M";
    argv[n++] = mode_arg;
    argv[n++] = "-f";
    argv[n++] = acquire;
    argv[n++] = "-f";
    argv[n++] = realize;
    argv[n++] = "-f";
    argv[n++] = release;
    argv[n++] = db_url;
    argv[n] = NULL;
    code = er_harness_run_argv(argv, NULL, true, PGBENCH_TIMEOUT_MS, &out);
    tps = out != NULL ? strstr(out, "tps = ") : NULL;
    if (code == 0 && tps != NULL)
        v = strtod(tps + 6, NULL);
    if (v <= 0) {
        fprintf(stderr,
                "perf_bench: %s -M %s: exit %d, no tps (PGBENCH names "
                "another binary)\n%.3000s\n",
                bin, mode, code, out != NULL ? out : "");
        v = -1;
    }
    er_free(out);
    return v;
}

/* ----------------------------------------------------------------
 * main
 * ---------------------------------------------------------------- */

/* A tps figure, or "failed". */
static void tps_text(char *out, size_t out_len, double tps)
{
    if (tps > 0)
        snprintf(out, out_len, "%.0f tps", tps);
    else
        snprintf(out, out_len, "failed");
}

static const char *yes_no(bool is_met)
{
    return is_met ? "yes" : "no";
}

/* The database's durability settings into the header; false when fsync or
 * synchronous_commit is off. */
static bool db_settings(struct er_harness *h, char *out, size_t out_len)
{
    json_t *rows =
        er_harness_pg_query(h->db_url,
                            "SELECT current_setting('fsync') AS fsync, "
                            "current_setting('synchronous_commit') AS sc, "
                            "current_setting('full_page_writes') AS fpw",
                            0, NULL);
    const json_t *row = rows != NULL ? json_array_get(rows, 0) : NULL;
    const char *fsync = er_harness_json_str(row, "fsync");
    const char *sc = er_harness_json_str(row, "sc");
    const char *fpw = er_harness_json_str(row, "fpw");
    bool is_durable = fsync != NULL && sc != NULL && strcmp(fsync, "on") == 0 &&
                      strcmp(sc, "off") != 0;

    snprintf(out, out_len, "fsync=%s synchronous_commit=%s full_page_writes=%s",
             fsync != NULL ? fsync : "?", sc != NULL ? sc : "?",
             fpw != NULL ? fpw : "?");
    json_decref(rows);
    return is_durable;
}

int main(int argc, char **argv)
{
    struct er_harness *h = NULL;
    struct er_harness_worker *w = NULL;
    struct er_harness_worker_opts opts = { 0 };
    struct er_harness_run warm;
    struct er_harness_cmd c;
    struct full full;
    struct lat half;
    struct lat low;
    char settings[160];
    char ratio_met[64];
    char simple_text[32];
    char prepared_text[32];
    char db_url[ER_HARNESS_URL_MAX];
    char db_name[64];
    char sql[128];
    const char *keep;
    const char *admin_url;
    char *end = NULL;
    long runs = RUNS_DEFAULT;
    double idle_cpu_ms_s = -1;
    double cpu0;
    double cpu1;
    double simple_tps;
    double prepared_tps;
    double best_tps;
    double lease_kib;
    long rss_start;
    long rss_after;
    long hwm;
    long rss_leases0;
    long rss_leases1;
    size_t lease_not_ok = 0;
    size_t not_ok;
    size_t dlq_cnt;
    bool is_durable;
    bool is_clean;
    bool is_kept;
    int pid;
    int rc = 1;

    if (argc > 2 || (argc == 2 && ((runs = strtol(argv[1], &end, 10)) <= 0 ||
                                   *end != '\0' || runs > 1000000))) {
        fprintf(stderr, "usage: perf_bench [RUNS]   (RUNS 1..1000000, "
                        "default 2000)\n");
        return 2;
    }
    /* The reader's fetch wait, like the worker's (worker_env). */
    setenv("ER_HARNESS_FETCH_WAIT_MS", FETCH_WAIT_MS_STR, 1);
    /* The scheduler's producer sends each command at once: it waits for
     * the result before the run's next command, so there is nothing to
     * batch it with. */
    setenv("ER_HARNESS_LINGER_MS", "0", 1);
    h = er_harness_new("perf_bench", PARTITIONS, NULL);
    if (h == NULL)
        return 1;
    is_durable = db_settings(h, settings, sizeof(settings));
    printf("perf_bench: %ld runs, 1 worker (concurrency %d), mock cluster "
           "over TCP, PostgreSQL %s; fetch waits %s ms (worker and reader: "
           "the mock cluster holds a fetch that long even when records "
           "arrive, a real broker answers at once)\n",
           runs, CONCURRENCY, settings, FETCH_WAIT_MS_STR);
    if (!is_durable)
        printf("perf_bench: WARNING: fsync or synchronous_commit is off, so "
               "the figures over-report what a durable server gives (make "
               "bench starts one with ENVRUN_PG_DURABLE=1)\n");
    fflush(stdout);

    opts.concurrency = CONCURRENCY;
    opts.env = worker_env;
    w = er_harness_worker_start(h, &opts);
    if (w == NULL)
        goto out;
    pid = (int)w->pid;
    /* Warm up: the group join and the first connections. */
    er_harness_run_init(&warm);
    er_harness_cmd_acquire(&c, &warm);
    if (er_harness_send(h, &c.cmd) != 0 ||
        er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS) ==
            NULL) {
        fprintf(stderr, "perf_bench: warm-up command got no result\n");
        er_harness_worker_dump_log(w, 4000);
        goto out;
    }
    cpu0 = cpu_s(pid);
    er_harness_poll(h, IDLE_START_MS);
    rss_start = status_kib(pid, "VmRSS:");
    cpu1 = cpu_s(pid);
    if (cpu0 >= 0 && cpu1 >= 0)
        idle_cpu_ms_s = (cpu1 - cpu0) * 1000.0 * 1000.0 / IDLE_START_MS;

    fprintf(stderr, "perf_bench: full speed, %ld runs\n", runs);
    if (full_speed(h, pid, (int)runs, &full) != 0)
        goto out;
    fprintf(stderr, "perf_bench: paced at %.0f/s, then at %.0f/s\n",
            full.rate / 2, LOW_RATE);
    if (paced_phase(h, full.rate / 2 > 1 ? full.rate / 2 : 1, PACED_MS,
                    &half) != 0 ||
        paced_phase(h, LOW_RATE, PACED_MS, &low) != 0)
        goto out;
    er_harness_poll(h, IDLE_AFTER_MS);
    rss_after = status_kib(pid, "VmRSS:");
    hwm = status_kib(pid, "VmHWM:");

    fprintf(stderr, "perf_bench: %s active leases\n", LEASES_TEXT);
    rss_leases0 = status_kib(pid, "VmRSS:");
    if (acquire_leases(h, &lease_not_ok) != 0)
        goto out;
    er_harness_poll(h, LEASE_SETTLE_MS);
    rss_leases1 = status_kib(pid, "VmRSS:");
    lease_kib = (double)(rss_leases1 - rss_leases0) / LEASES;

    /* pgbench gets the machine to itself: no worker, and no mock cluster
     * or reader polling every millisecond in this process. The database
     * stays for it and is dropped after, as er_harness_destroy would. */
    is_clean = er_harness_stop_workers(h);
    dlq_cnt = er_harness_count(h, ER_HARNESS_DLQ);
    snprintf(db_url, sizeof(db_url), "%s", h->db_url);
    snprintf(db_name, sizeof(db_name), "%s", h->db_name);
    keep = getenv("ENVRUN_TEST_KEEP_DB");
    is_kept = keep != NULL && keep[0] != '\0';
    setenv("ENVRUN_TEST_KEEP_DB", "1", 1);
    er_harness_destroy(h);
    h = NULL;
    fprintf(stderr, "perf_bench: pgbench -M simple, then -M prepared\n");
    simple_tps = pgbench_tps(db_url, "simple");
    prepared_tps = pgbench_tps(db_url, "prepared");
    admin_url = getenv("ENVRUN_TEST_PG_URL");
    if (!is_kept && admin_url != NULL && admin_url[0] != '\0') {
        snprintf(sql, sizeof(sql),
                 "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", db_name);
        er_harness_pg_exec(admin_url, sql, 0, NULL);
    }
    best_tps = simple_tps > prepared_tps ? simple_tps : prepared_tps;
    if (best_tps > 0)
        snprintf(ratio_met, sizeof(ratio_met), "%s (%.2f ×)",
                 yes_no(full.rate / best_tps >= TARGET_RATIO),
                 full.rate / best_tps);
    else
        snprintf(ratio_met, sizeof(ratio_met), "n/a (pgbench failed)");
    tps_text(simple_text, sizeof(simple_text), simple_tps);
    tps_text(prepared_text, sizeof(prepared_text), prepared_tps);

    printf("\n| measure | envrun | reference | target | met |\n"
           "|---|---|---|---|---|\n");
    printf("| commands/s, full speed (%ld runs × 3 commands) | %.0f | "
           "pgbench, %s clients, the worker's statements per command, one "
           "transaction each: simple %s, prepared %s | ≥ %.1f × pgbench (the "
           "better mode) | %s |\n",
           runs, full.rate, PGBENCH_CLIENTS, simple_text, prepared_text,
           TARGET_RATIO, ratio_met);
    printf("| command → result at half load (%.0f/s), p50 / p99 / max | "
           "%.1f / %.1f / %.1f ms | %zu commands, %.0f/s sent | p99 ≤ %.0f ms "
           "| %s |\n",
           half.rate, half.p50, half.p99, half.max, half.cmd_cnt, half.actual,
           TARGET_HALF_P99, yes_no(half.p99 <= TARGET_HALF_P99));
    printf("| command → result at %.0f/s, p50 / p99 / max | %.1f / %.1f / "
           "%.1f ms | %zu commands | p50 ≤ %.0f ms | %s |\n",
           LOW_RATE, low.p50, low.p99, low.max, low.cmd_cnt, TARGET_LOW_P50,
           yes_no(low.p50 <= TARGET_LOW_P50));
    printf("| worker CPU s per 1,000 commands (full speed) | %.2f | idle: "
           "%.0f ms CPU per s (its 1 ms fetch loop); the bench process (mock "
           "cluster, producer, reader): %.2f s per 1,000 | — | — |\n",
           full.cpu_per_k, idle_cpu_ms_s, full.self_cpu_per_k);
    printf("| worker RSS: peak / idle at start / idle after load | %.1f / "
           "%.1f / %.1f MiB | | idle ≤ %.0f MiB | %s |\n",
           mib(hwm), mib(rss_start), mib(rss_after), TARGET_IDLE_MIB,
           yes_no(mib(rss_start) <= TARGET_IDLE_MIB &&
                  mib(rss_after) <= TARGET_IDLE_MIB));
    printf("| %s active leases | %+.2f KiB each | RSS %.1f → %.1f MiB | "
           "≤ %.0f KiB each | %s |\n",
           LEASES_TEXT, lease_kib, mib(rss_leases0), mib(rss_leases1),
           TARGET_LEASE_KIB, yes_no(lease_kib <= TARGET_LEASE_KIB));
    not_ok = full.not_ok_cnt + half.not_ok_cnt + low.not_ok_cnt + lease_not_ok;
    if (not_ok != 0)
        printf("\nperf_bench: WARNING: %zu results were not ok (full speed "
               "%zu, half load %zu, %.0f/s %zu, leases %zu)\n",
               not_ok, full.not_ok_cnt, half.not_ok_cnt, LOW_RATE,
               low.not_ok_cnt, lease_not_ok);
    if (dlq_cnt != 0)
        printf("perf_bench: WARNING: %zu commands were dead-lettered\n",
               dlq_cnt);
    fflush(stdout);
    rc = is_clean && best_tps > 0 ? 0 : 1;
out:
    er_harness_destroy(h);
    return rc;
}
