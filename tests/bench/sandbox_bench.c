/* sandbox_bench: what a bwrap sandbox costs, at the provider level (no
 * Kafka, no Postgres): acquire-to-ready (er_bwrap_create until a command
 * can be entered), one execute round trip (`true` entered into a running
 * sandbox with its limits, a PID namespace of its own and the tree kill
 * armed), and destroy; beside the baselines, a plain fork/exec/wait of
 * the same `true` and the same through the process helper the drivers use
 * (drivers/proc.c: pipes, deadline, process group), and the worker's own
 * tools' round trip (is_worker_tool: no PID namespace or session of
 * their own, one setpriv; the bridge's queue_v1 calls). Median and p99
 * in microseconds over RUNS (argv[1], default 200; creates: a quarter of
 * that). Needs root and bubblewrap. Numbers, not asserts: label bench. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "drivers/sandbox_int.h"

#define RUNS_DEFAULT 200
#define RUNS_MAX     5000

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

static void report(const char *what, int64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_i64);
    printf("%-34s %6d runs  median %7lld us  p99 %7lld us  max %7lld us\n",
           what, n, (long long)v[n / 2], (long long)v[(n * 99) / 100],
           (long long)v[n - 1]);
}

/* The plainest fork/exec: no pipes, no deadline. */
static int raw_fork_exec(void)
{
    char *const argv[] = { "/bin/true", NULL };
    char *const envp[] = { NULL };
    int status = 0;
    pid_t pid = fork();

    if (pid < 0)
        return -1;
    if (pid == 0) {
        execve(argv[0], argv, envp);
        _exit(127);
    }
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* The same through the process helper the drivers use (pipes captured,
 * deadline armed, own process group). */
static int fork_exec(void)
{
    const char *argv[] = { "/bin/true", NULL };
    struct er_proc_opts opts;
    struct er_proc_result res;
    struct er_err err;
    int rc;

    er_proc_opts_init(&opts);
    opts.argv = argv;
    opts.timeout_ms = 10000;
    er_err_clear(&err);
    rc = er_proc_run(&opts, &res, &err);
    if (rc == 0 && res.exit_code != 0)
        rc = -1;
    er_proc_result_fini(&res);
    return rc;
}

static int sandbox_exec(const char *id, bool is_worker_tool)
{
    const char *args[] = { NULL };
    struct er_driver_exec req = { .command =
                                      is_worker_tool ? "/bin/true" : "true",
                                  .args = args,
                                  .timeout_ms = 10000,
                                  .is_worker_tool = is_worker_tool };
    struct er_driver_exec_result res;
    struct er_err err;
    int rc;

    er_err_clear(&err);
    rc = er_bwrap_exec(id, &req, &res, &err);
    if (rc != 0)
        fprintf(stderr, "sandbox_bench: exec: %s\n", err.msg);
    else if (res.exit_code != 0)
        rc = -1;
    er_driver_exec_result_fini(&res);
    return rc;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : RUNS_DEFAULT;
    char dir[] = "/tmp/sandbox-bench-XXXXXX";
    struct er_bwrap_limits lim = { 8192LL * 1024 * 1024, 1024, 0 };
    int64_t *v;
    int64_t *cr;
    int64_t *de;
    int64_t *tool;
    char id[ER_BWRAP_ID_LEN + 1];
    char cmd[128];
    struct er_err err;
    int creates;
    int i;

    if (runs < 10 || runs > RUNS_MAX)
        runs = RUNS_DEFAULT;
    creates = runs / 4;
    v = calloc((size_t)runs, sizeof(*v));
    cr = calloc((size_t)creates, sizeof(*cr));
    de = calloc((size_t)creates, sizeof(*de));
    tool = calloc((size_t)runs, sizeof(*tool));
    if (v == NULL || cr == NULL || de == NULL || tool == NULL ||
        mkdtemp(dir) == NULL)
        return 1;
    er_log_setup(false, ER_LOG_WARN);
    er_bwrap_set_dir(dir);
    er_driver_set_installation("5e1f0a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2b");
    er_err_clear(&err);
    if (er_bwrap_probe(&err) != 0) {
        fprintf(stderr, "sandbox_bench: no sandboxes here: %s\n", err.msg);
        return 1;
    }

    for (i = 0; i < runs; i++) {
        int64_t t0 = now_us();

        if (raw_fork_exec() != 0)
            return 1;
        v[i] = now_us() - t0;
    }
    report("fork/exec/wait true (baseline)", v, runs);
    for (i = 0; i < runs; i++) {
        int64_t t0 = now_us();

        if (fork_exec() != 0)
            return 1;
        v[i] = now_us() - t0;
    }
    report("er_proc_run true (drivers' helper)", v, runs);

    for (i = 0; i < creates; i++) {
        int64_t t0 = now_us();

        snprintf(id, sizeof(id), "%016x", 0xbe00 + i);
        if (er_bwrap_create(id, &lim, &err) != 0) {
            fprintf(stderr, "sandbox_bench: create: %s\n", err.msg);
            return 1;
        }
        cr[i] = now_us() - t0;
        if (i == 0) {
            int j;

            for (j = 0; j < runs; j++) {
                int64_t t1 = now_us();

                if (sandbox_exec(id, false) != 0)
                    return 1;
                v[j] = now_us() - t1;
            }
            for (j = 0; j < runs; j++) {
                int64_t t1 = now_us();

                if (sandbox_exec(id, true) != 0)
                    return 1;
                tool[j] = now_us() - t1;
            }
        }
        t0 = now_us();
        if (er_bwrap_destroy(id, &err) != 0) {
            fprintf(stderr, "sandbox_bench: destroy: %s\n", err.msg);
            return 1;
        }
        de[i] = now_us() - t0;
    }
    report("bwrap acquire-to-ready (create)", cr, creates);
    report("bwrap execute round trip (true)", v, runs);
    report("bwrap execute, worker's tool (true)", tool, runs);
    report("bwrap destroy", de, creates);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    free(v);
    free(cr);
    free(de);
    free(tool);
    return system(cmd) == 0 ? 0 : 1;
}
