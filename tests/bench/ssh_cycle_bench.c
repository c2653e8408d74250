/* ssh_cycle_bench: the wall time of one run's acquire + realize (a small
 * git workspace, provision command `true`) + release on an `ssh`
 * per-lease environment through one worker and the sshd of
 * scripts/test-services.sh, median of CYCLES, with the driver's connection
 * reuse; and, as the baseline, the same remote work done by plain `ssh
 * -o ControlMaster=no` invocations (one connection and authentication
 * each); and, for scale, the same cycle on the company's Local
 * environment (the worker's own cost per cycle: Kafka, PostgreSQL). Numbers,
 * not asserts: label bench. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/harness.h"

#define CYCLES_DEFAULT 5
#define CYCLES_MAX     50
#define WAIT_MS        60000

static struct er_harness *h;
static struct er_harness_ssh *ssh;
static struct er_harness_worker *worker;

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a;
    long long y = *(const long long *)b;

    return (x > y) - (x < y);
}

static long long median(long long *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_ll);
    return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Send c and wait for an ok result; returns the elapsed ms or -1. */
static long long timed(struct er_harness_cmd *c)
{
    int64_t t0 = er_time_mono_ms();
    const json_t *res;
    const char *outcome;

    if (er_harness_send(h, &c->cmd) != 0)
        return -1;
    res = er_harness_wait_result(h, c->command_id, WAIT_MS);
    outcome = er_harness_json_str(res, "outcome");
    if (outcome == NULL || strcmp(outcome, "ok") != 0) {
        fprintf(stderr, "bench: %s: %s\n", outcome != NULL ? outcome : "none",
                er_harness_json_str(res, "errorMessage") != NULL
                    ? er_harness_json_str(res, "errorMessage")
                    : "no result");
        return -1;
    }
    return er_time_mono_ms() - t0;
}

/* One cycle through the worker (env_id NULL: the Local environment, with
 * no provision command); phase times into ms[0..2]. */
static int driver_cycle(const char *company_id, const char *env_id,
                        const char *local, long long ms[3])
{
    struct er_harness_run run;
    struct er_harness_run proto;
    struct er_harness_cmd c;

    memcpy(proto.company_id, company_id, sizeof(proto.company_id));
    er_harness_run_init_same_company(&run, &proto);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    ms[0] = timed(&c);
    er_harness_cmd_realize(&c, &run, local);
    if (env_id != NULL)
        c.cmd.runtime_overlay_json = "{\"provisionCommand\": \"true\"}";
    ms[1] = ms[0] < 0 ? -1 : timed(&c);
    er_harness_cmd_release(&c, &run, ER_RELEASE_RELEASED);
    ms[2] = ms[1] < 0 ? -1 : timed(&c);
    return ms[0] < 0 || ms[1] < 0 || ms[2] < 0 ? -1 : 0;
}

/* The driver's work as plain ssh invocations, ControlMaster off (domain.md
 * 4.2): acquire's mkdir; the bundle upload and import; the working tree
 * overlay and deletions; the provision command; release's rm. $1: run
 * number. */
static int baseline_cycle(const char *local, const char *remote, int n,
                          long long *ms)
{
    char script[8192];
    char *out = NULL;
    int64_t t0;
    int rc;

    snprintf(
        script, sizeof(script),
        "set -e\n"
        "S() { ssh -F /dev/null -i '%s' -p %d -o BatchMode=yes "
        "-o ConnectTimeout=10 -o IdentitiesOnly=yes "
        "-o StrictHostKeyChecking=yes -o UserKnownHostsFile='%s' "
        "-o ControlMaster=no -o ControlPath=none '%s@%s' \"$@\"; }\n"
        "cwd=$(S \"sh -lc 'mkdir -p %s/base-%d && cd %s/base-%d && pwd'\")\n"
        "tmp=$(mktemp -d)\n"
        "git -C '%s' bundle create -q \"$tmp/b.bundle\" HEAD\n"
        "S \"mkdir -p $cwd/.paperclip-runtime && cat > "
        "$cwd/.paperclip-runtime/import.bundle\" < \"$tmp/b.bundle\"\n"
        "S \"cd $cwd && git init -q && git fetch -q "
        ".paperclip-runtime/import.bundle HEAD:refs/paperclip/ssh-sync/import "
        "&& git checkout -q -B main refs/paperclip/ssh-sync/import && git "
        "reset -q --hard && git clean -q -fdx -e .paperclip-runtime && rm -f "
        ".paperclip-runtime/import.bundle\"\n"
        "(cd '%s' && { git diff -z --name-only --diff-filter=d HEAD; git "
        "ls-files -z -o --exclude-standard; } | tar --null -T - -cf -) | "
        "S \"tar -xf - -C $cwd\"\n"
        "S \"cd $cwd && rm -f $(cd '%s' && git ls-files -d | tr '\\n' ' ')\"\n"
        "S \"cd $cwd && SHELL=/bin/bash bash -lc true\"\n"
        "S \"rm -rf $cwd\"\n"
        "rm -rf \"$tmp\"\n",
        ssh->key_path, ssh->port, ssh->known_hosts_path, ssh->user, ssh->host,
        remote, n, remote, n, local, local, local);
    t0 = er_time_mono_ms();
    rc = er_harness_ssh_local(script, &out);
    *ms = er_time_mono_ms() - t0;
    if (rc != 0)
        fprintf(stderr, "bench: baseline failed (exit %d): %s\n", rc,
                out != NULL ? out : "");
    er_free(out);
    return rc == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    int cycles = argc > 1 ? (int)strtol(argv[1], NULL, 10) : CYCLES_DEFAULT;
    struct er_harness_worker_opts opts = { 0 };
    struct er_harness_run warm;
    struct er_harness_cmd c;
    const char *env[4];
    char env_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char local[ER_HARNESS_PATH_MAX + 32];
    char needle[128];
    long long total[CYCLES_MAX];
    long long phase[3][CYCLES_MAX];
    long long base[CYCLES_MAX];
    long long ms[3];
    long long from;
    json_t *config = NULL;
    int auths;
    int sessions;
    int i;
    int rc = 1;

    if (cycles <= 0 || cycles > CYCLES_MAX)
        return 2;
    h = er_harness_new("bench_ssh_cycle", 2, NULL);
    if (h == NULL)
        return 1;
    ssh = er_harness_ssh_new(h);
    if (ssh == NULL)
        goto out;
    /* Info logs: debug lines would cost time the numbers should not. */
    env[0] = ssh->env_text[0];
    env[1] = ssh->env_text[1];
    env[2] = "ENVRUN_LOG_LEVEL=info";
    env[3] = NULL;
    opts.env = env;
    worker = er_harness_worker_start(h, &opts);
    if (worker == NULL)
        goto out;
    er_harness_run_init(&warm);
    er_harness_cmd_acquire(&c, &warm);
    if (er_harness_send(h, &c.cmd) != 0 ||
        er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS) ==
            NULL) {
        fprintf(stderr, "bench: warm-up command got no result\n");
        goto out;
    }

    snprintf(local, sizeof(local), "%s/ws-bench", h->dir);
    if (er_harness_ssh_git_workspace(local, "main") != 0)
        goto out;
    snprintf(remote, sizeof(remote), "%s/bench", ssh->root);
    config = er_harness_ssh_config(ssh, remote, "per_lease");
    if (er_harness_ssh_env_insert(h, warm.company_id, "SSH bench", config,
                                  env_id) != 0)
        goto out;

    /* One cycle unmeasured: first connections, page cache. */
    if (driver_cycle(warm.company_id, env_id, local, ms) != 0)
        goto out;
    snprintf(needle, sizeof(needle), "Accepted publickey for %s ", ssh->user);
    from = er_harness_ssh_log_size(ssh);
    for (i = 0; i < cycles; i++) {
        if (driver_cycle(warm.company_id, env_id, local, ms) != 0)
            goto out;
        phase[0][i] = ms[0];
        phase[1][i] = ms[1];
        phase[2][i] = ms[2];
        total[i] = ms[0] + ms[1] + ms[2];
    }
    auths = er_harness_ssh_log_count(ssh, from, needle);
    sessions = er_harness_ssh_log_count(ssh, from, "Starting session: ");
    printf("ssh_cycle_bench: driver (connection reuse): median %lld ms per "
           "cycle of %d (acquire %lld, realize %lld, release %lld); %.1f "
           "authentications and %.1f sessions per cycle\n",
           median(total, cycles), cycles, median(phase[0], cycles),
           median(phase[1], cycles), median(phase[2], cycles),
           (double)auths / cycles, (double)sessions / cycles);

    if (baseline_cycle(local, remote, -1, &ms[0]) != 0)
        goto out;
    from = er_harness_ssh_log_size(ssh);
    for (i = 0; i < cycles; i++) {
        if (baseline_cycle(local, remote, i, &base[i]) != 0)
            goto out;
    }
    auths = er_harness_ssh_log_count(ssh, from, needle);
    printf("ssh_cycle_bench: baseline (plain ssh, ControlMaster=no): median "
           "%lld ms per cycle of %d; %.1f authentications per cycle\n",
           median(base, cycles), cycles, (double)auths / cycles);

    for (i = 0; i < cycles; i++) {
        if (driver_cycle(warm.company_id, NULL, local, ms) != 0)
            goto out;
        total[i] = ms[0] + ms[1] + ms[2];
    }
    printf("ssh_cycle_bench: reference (Local environment, no ssh): median "
           "%lld ms per cycle of %d\n",
           median(total, cycles), cycles);
    rc = er_harness_stop_workers(h) ? 0 : 1;

out:
    json_decref(config);
    er_harness_ssh_destroy(ssh);
    er_harness_destroy(h);
    return rc;
}
