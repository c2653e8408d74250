/* throughput_bench: end-to-end commands per second of one worker process
 * (mock cluster over TCP, real PostgreSQL): RUNS runs of acquire, realize
 * and release each, sent at once; the clock runs from the first send to the
 * last result. Also reports the worker's peak RSS. Numbers, not asserts:
 * label bench, outside the default test run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/harness.h"

#define RUNS_DEFAULT 300

static long peak_rss_kb(int pid)
{
    char path[64];
    char line[256];
    FILE *f;
    long kb = -1;

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    return kb;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? (int)strtol(argv[1], NULL, 10) : RUNS_DEFAULT;
    int concurrency = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 16;
    struct er_harness *h = NULL;
    struct er_harness_worker *w = NULL;
    struct er_harness_worker_opts opts = { 0 };
    struct er_harness_run warm;
    struct er_harness_cmd c;
    struct er_harness_run *rs = NULL;
    int64_t t0;
    int64_t t1;
    size_t want;
    int i;
    int rc = 1;

    if (runs <= 0 || concurrency <= 0)
        return 2;
    h = er_harness_new("bench_throughput", 8, NULL);
    if (h == NULL)
        return 1;
    opts.concurrency = concurrency;
    w = er_harness_worker_start(h, &opts);
    if (w == NULL)
        goto out;
    /* Warm up: the group join and the first connections. */
    er_harness_run_init(&warm);
    er_harness_cmd_acquire(&c, &warm);
    if (er_harness_send(h, &c.cmd) != 0 ||
        er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS) ==
            NULL) {
        fprintf(stderr, "bench: warm-up command got no result\n");
        goto out;
    }
    rs = calloc((size_t)runs, sizeof(*rs));
    if (rs == NULL)
        goto out;
    t0 = er_time_mono_ms();
    for (i = 0; i < runs; i++) {
        er_harness_run_init(&rs[i]);
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
    want = 1 + (size_t)runs * 3;
    if (!er_harness_wait_total(h, ER_HARNESS_RESULTS, want, 600000)) {
        fprintf(stderr, "bench: only %zu of %zu results\n",
                er_harness_count(h, ER_HARNESS_RESULTS), want);
        goto out;
    }
    t1 = er_time_mono_ms();
    printf("bench throughput: %d runs, %d commands, concurrency %d: "
           "%lld ms, %.0f commands/s; worker peak RSS %ld KiB\n",
           runs, runs * 3, concurrency, (long long)(t1 - t0),
           (double)runs * 3 * 1000.0 / (double)(t1 - t0 > 0 ? t1 - t0 : 1),
           peak_rss_kb((int)w->pid));
    rc = 0;
out:
    free(rs);
    er_harness_destroy(h);
    return rc;
}
