/* fault_matrix_test: a worker killed with SIGKILL at each named fault point
 * of a step (common/fault.c: before and after each phase's commit, before
 * and after the driver call, before and after the offset commit, inside
 * the relay between publish and delete), then restarted without the fault.
 * One run's acquire, realize (with a provision command on ssh) and release
 * must end as if nothing had happened: one result per command id (copies
 * byte-identical), one lease, released, its events published once by id
 * with versions 1..3, activity events matching activity_log, every journal
 * entry closed, and on ssh no per-lease directory, control directory or key
 * file left behind, on a bwrap sandbox no sandbox directory or process.
 * The worker binary must be built with ER_FAULTS (make test does). Runs on
 * the local driver, on the ssh driver against the real sshd of
 * scripts/test-services.sh, and on the sandbox driver's bwrap provider. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"
#include "worker/worker.h"

#define DEATH_WAIT_MS 60000
#define FINISH_MS     90000

/* One cell of the matrix: the fault point and which hit of it kills. */
struct cell {
    const char *point; /* ENVRUN_TEST_FAULT value, "name:N" */
    /* True when the provision command's outcome is journaled before the
     * kill, so the restarted worker must not run it again. */
    bool is_after_provision;
};

/* Local steps are one transaction each: no intent phase. Hits count in
 * step order: acquire 1, realize 2, release 3. */
static const struct cell local_cells[] = {
    { "driver.before:1", false },         { "driver.after:1", false },
    { "outcome.before_commit:1", false }, { "outcome.after_commit:1", false },
    { "outcome.before_commit:2", false }, { "outcome.after_commit:3", false },
    { "offset.before_commit:1", false },  { "offset.after_commit:1", false },
    { "relay.after_publish:1", false },
};

/* A remote driver (ssh, the bwrap sandbox): driver calls are acquire 1,
 * realize 2, provision 3, release 4. The offset and relay cells take the
 * first hit: a step can take milliseconds, so the offsets of several
 * commands may go in one commit and one batch may be published at once
 * (a second hit is then never reached). */
static const struct cell remote_cells[] = {
    { "intent.before_commit:1", false },  { "intent.after_commit:1", false },
    { "driver.before:1", false },         { "driver.after:1", false },
    { "outcome.before_commit:1", false }, { "outcome.after_commit:1", false },
    { "intent.after_commit:2", false },   { "driver.after:2", false },
    { "driver.after:3", false },          { "outcome.before_commit:2", true },
    { "outcome.after_commit:2", true },   { "intent.after_commit:3", true },
    { "driver.after:4", true },           { "outcome.before_commit:3", true },
    { "offset.before_commit:1", false },  { "relay.after_publish:1", false },
};

/* The leading decimal number of text, or -1. */
static long count_of(const char *text)
{
    char *end = NULL;
    long v = strtol(text, &end, 10);

    return end != text ? v : -1;
}

static int teardown(void **state)
{
    (void)state;
    return 0;
}

/* "name:N" -> "name_N" in [a-z0-9_] for the harness name. */
static void case_name(const char *driver, const char *point, char *out,
                      size_t out_len)
{
    size_t n = 0;
    size_t i;

    n = (size_t)snprintf(out, out_len, "fm_%s_", driver);
    for (i = 0; point[i] != '\0' && n + 1 < out_len && n < 40; i++) {
        char c = point[i];

        if (c == '.' || c == ':')
            c = '_';
        out[n++] = c;
    }
    out[n] = '\0';
}

static void assert_journal_closed(struct er_harness *h)
{
    json_t *open_ops = er_harness_pg_query(
        h->db_url,
        "SELECT command_id, kind, state FROM envrun.operations WHERE state "
        "NOT IN ('done', 'failed', 'rolled_back')",
        0, NULL);
    char *text;

    ER_HARNESS_NON_NULL(open_ops);
    if (json_array_size(open_ops) == 0) {
        json_decref(open_ops);
        return;
    }
    text = er_harness_json_text(open_ops);
    er_harness_fail(__FILE__, __LINE__, "journal entries left open: %s",
                    text != NULL ? text : "?");
}

/* One cell: kill at cell->point, restart, check. */
static void run_cell(const char *driver, const struct cell *cell)
{
    char name[64];
    char env_line[128];
    char remote[ER_HARNESS_PATH_MAX + 64];
    char env_id[37] = "";
    char overlay[ER_HARNESS_PATH_MAX + 128];
    const char *extra[8];
    const char *ids[3];
    struct er_harness *h;
    struct er_harness_ssh *ssh = NULL;
    struct er_harness_worker *w;
    struct er_harness_worker_opts opts = { 0 };
    struct er_harness_run run;
    struct er_harness_cmd cmds[3];
    char lease_id[37];
    char *dirs_before = NULL;
    char *dirs_after = NULL;
    char *added = NULL;
    bool is_ssh = strcmp(driver, "ssh") == 0;
    bool is_sandbox = strcmp(driver, "sandbox") == 0;
    char sandbox_env[ER_HARNESS_PATH_MAX + 64];
    char sandbox_dir[ER_HARNESS_PATH_MAX + 32];
    char ws[ER_HARNESS_PATH_MAX + 32];
    size_t n = 0;
    int st;
    int i;

    case_name(driver, cell->point, name, sizeof(name));
    print_message("%s: kill at %s\n", name, cell->point);
    h = er_harness_new(name, 1, NULL);
    ER_HARNESS_NON_NULL(h);
    er_harness_run_init(&run);
    if (is_ssh) {
        ssh = er_harness_ssh_new(h);
        ER_HARNESS_NON_NULL(ssh);
        for (i = 0; ssh->worker_env[i] != NULL; i++)
            extra[n++] = ssh->worker_env[i];
        dirs_before = er_harness_ssh_control_dirs();
        ER_HARNESS_NON_NULL(dirs_before);
    }
    if (is_sandbox) {
        char cmd[4 * ER_HARNESS_PATH_MAX];

        /* Under /tmp: the sandbox's own uid must reach its directory. */
        snprintf(sandbox_dir, sizeof(sandbox_dir),
                 "/tmp/envrun-sandboxes-XXXXXX");
        ER_HARNESS_NON_NULL(mkdtemp(sandbox_dir));
        snprintf(ws, sizeof(ws), "%s/ws", h->dir);
        snprintf(cmd, sizeof(cmd),
                 "rm -rf '%s' && mkdir -p '%s' && "
                 "echo hi > '%s/hello.txt'",
                 ws, ws, ws);
        assert_int_equal(system(cmd), 0);
        snprintf(sandbox_env, sizeof(sandbox_env), "ENVRUN_SANDBOX_DIR=%s",
                 sandbox_dir);
        extra[n++] = sandbox_env;
    }
    snprintf(env_line, sizeof(env_line), "ENVRUN_TEST_FAULT=%s", cell->point);
    extra[n++] = env_line;
    extra[n] = NULL;
    opts.env = extra;
    opts.concurrency = 2;

    /* The worker migrates the database first; the commands come after. */
    w = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w);
    if (!er_harness_worker_wait_log(w, "\"started: ", DEATH_WAIT_MS)) {
        er_harness_worker_dump_log(w, 4000);
        er_harness_fail(__FILE__, __LINE__, "the worker did not start");
    }
    if (is_ssh)
        assert_int_equal(er_harness_ssh_per_lease_env(h, ssh, run.company_id,
                                                      "Fault", remote,
                                                      sizeof(remote), env_id),
                         0);
    if (is_sandbox)
        er_harness_env_insert(h, run.company_id, "Fault", "sandbox", "active",
                              "{\"provider\": \"bwrap\"}", env_id);
    er_harness_cmd_acquire(&cmds[0], &run);
    if (is_ssh || is_sandbox)
        cmds[0].cmd.selected_environment_id = env_id;
    er_harness_cmd_realize(&cmds[1], &run, is_sandbox ? ws : h->dir);
    /* The provision command leaves one line per run beside the per-lease
     * directories, so a second run of it shows. */
    snprintf(overlay, sizeof(overlay),
             "{\"provisionCommand\": \"echo ran >> %s/provisioned.txt\"}",
             is_sandbox ? "/tmp" : "..");
    if (is_ssh || is_sandbox)
        cmds[1].cmd.runtime_overlay_json = overlay;
    er_harness_cmd_release(&cmds[2], &run, ER_RELEASE_RELEASED);
    for (i = 0; i < 3; i++) {
        ids[i] = cmds[i].command_id;
        assert_int_equal(er_harness_send(h, &cmds[i].cmd), 0);
    }
    assert_int_equal(er_harness_flush(h), 0);
    st = er_harness_worker_wait_exit(w, DEATH_WAIT_MS);
    if (st != 128 + SIGKILL) {
        er_harness_worker_dump_log(w, 4000);
        er_harness_fail(__FILE__, __LINE__,
                        "the worker did not die at %s (status %d)", cell->point,
                        st);
    }
    assert_true(er_harness_worker_log_contains(w, "reached: SIGKILL"));

    /* The same worker again, without the fault. */
    extra[n - 1] = NULL;
    w = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w);
    if (!er_harness_wait_results(h, ids, 3, FINISH_MS)) {
        er_harness_worker_dump_log(w, 6000);
        er_harness_fail(__FILE__, __LINE__, "not every command has a result");
    }
    /* acquire + release activity, and the release's last lease event. */
    assert_true(
        er_harness_wait_total(h, ER_HARNESS_ACTIVITY, 2, ER_HARNESS_WAIT_MS));
    assert_true(er_harness_wait_total(h, ER_HARNESS_LEASE_EVENTS, 3,
                                      ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    if (!er_harness_stop_workers(h))
        er_harness_fail(__FILE__, __LINE__, "a worker log has a finding");

    er_harness_check_results(h, ids, 3, "ok");
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases",
                                         0, NULL),
                     1);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE status = "
                                         "'released'",
                                         0, NULL),
                     1);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log", 0,
                                         NULL),
                     2);
    er_harness_check_lease_events(h, 3, 0);
    er_harness_check_activity(h);
    assert_journal_closed(h);
    assert_int_equal(er_harness_count(h, ER_HARNESS_DLQ), 0);

    if (is_ssh) {
        char *out = NULL;
        const json_t *res = er_harness_wait_result(h, ids[0], 0);

        ER_HARNESS_NON_NULL(res);
        snprintf(lease_id, sizeof(lease_id), "%s",
                 er_harness_json_str(res, "leaseId"));
        /* The per-lease directory is gone. */
        assert_true(er_harness_ssh_remote_ok(ssh, "test ! -e '%s/%s'", remote,
                                             lease_id));
        {
            char script[2 * ER_HARNESS_PATH_MAX + 256];

            snprintf(script, sizeof(script),
                     "ls -A '%s' | grep -v '^provisioned.txt$' | head -5",
                     remote);
            assert_int_equal(er_harness_ssh_remote(ssh, script, &out), 0);
            ER_HARNESS_NON_NULL(out);
            if (out[0] != '\0')
                er_harness_fail(__FILE__, __LINE__,
                                "left in the remote workspace root:\n%s", out);
            er_free(out);
            out = NULL;
            /* Provision ran once, or twice when the kill cut it off before
             * its outcome was journaled. */
            snprintf(script, sizeof(script), "wc -l < '%s/provisioned.txt'",
                     remote);
            assert_int_equal(er_harness_ssh_remote(ssh, script, &out), 0);
            ER_HARNESS_NON_NULL(out);
            if (cell->is_after_provision ? count_of(out) != 1
                                         : count_of(out) < 1)
                er_harness_fail(__FILE__, __LINE__,
                                "the provision command ran %s times", out);
            er_free(out);
            out = NULL;
            snprintf(script, sizeof(script),
                     "find '%s' /tmp -maxdepth 1 -name 'envrun-key-*' "
                     "2>/dev/null | head -5",
                     ssh->tmp_dir);
            assert_int_equal(er_harness_ssh_local(script, &out), 0);
            ER_HARNESS_NON_NULL(out);
            if (out[0] != '\0')
                er_harness_fail(__FILE__, __LINE__, "key directories left:\n%s",
                                out);
            er_free(out);
        }
        if (er_harness_ssh_control_dir_exists(lease_id))
            er_harness_fail(__FILE__, __LINE__,
                            "the control directory of lease %s is left",
                            lease_id);
        dirs_after = er_harness_ssh_control_dirs();
        ER_HARNESS_NON_NULL(dirs_after);
        added = er_harness_ssh_new_lines(dirs_before, dirs_after);
        ER_HARNESS_NON_NULL(added);
        if (added[0] != '\0')
            er_harness_fail(__FILE__, __LINE__,
                            "control directories left behind:\n%s", added);
    }
    if (is_sandbox) {
        char script[4 * ER_HARNESS_PATH_MAX];
        char *out = NULL;

        /* No sandbox directory (nor a half-made or half-removed one) and
         * no process of one is left. */
        /* The path is put together at run time, so this script's own
         * command line does not match it. A process that exits during the
         * scan is no leak: the shell's message that its cmdline is gone
         * (the redirection fails before a 2>/dev/null after it applies) is
         * kept out of the output by the braces. */
        snprintf(script, sizeof(script),
                 "ls -A '%s' | head -5; p=\"%.*s\"\"%s\"; "
                 "for f in /proc/[0-9]*/cmdline; do "
                 "case $f in /proc/$$/*) continue;; esac; "
                 "if { tr '\\0' ' ' < \"$f\"; } 2>/dev/null | "
                 "grep -q -F -- \"$p\"; "
                 "then echo \"process: $f\"; fi; done",
                 sandbox_dir, 8, sandbox_dir, sandbox_dir + 8);
        assert_int_equal(er_harness_ssh_local(script, &out), 0);
        ER_HARNESS_NON_NULL(out);
        if (out[0] != '\0')
            er_harness_fail(__FILE__, __LINE__, "sandbox left behind:\n%s",
                            out);
        er_free(out);
        snprintf(script, sizeof(script), "rmdir '%s'", sandbox_dir);
        assert_int_equal(system(script), 0);
    }
    er_free(added);
    er_free(dirs_after);
    er_free(dirs_before);
    er_harness_ssh_destroy(ssh);
    er_harness_destroy(h);
}

/* ENVRUN_TEST_FM_ONLY=<point> runs the cells of that point alone (for
 * debugging one cell; CI runs them all). */
static bool is_selected(const struct cell *cell)
{
    const char *only = getenv("ENVRUN_TEST_FM_ONLY");

    return only == NULL || only[0] == '\0' || strcmp(only, cell->point) == 0;
}

/* Run the selected cells of cells[0..cnt) on driver. */
static void run_cells(const char *driver, const struct cell *cells, size_t cnt)
{
    size_t i;

    for (i = 0; i < cnt; i++)
        if (is_selected(&cells[i]))
            run_cell(driver, &cells[i]);
}

#define CNT(a) (sizeof(a) / sizeof((a)[0]))

static void fault_matrix_local(void **state)
{
    (void)state;
    run_cells("local", local_cells, CNT(local_cells));
}

static void fault_matrix_ssh(void **state)
{
    (void)state;
    run_cells("ssh", remote_cells, CNT(remote_cells));
}

static void fault_matrix_sandbox(void **state)
{
    (void)state;
    run_cells("sandbox", remote_cells, CNT(remote_cells));
}

/* argv[1] (local, ssh or sandbox) runs that column alone: CTest runs one
 * column per test, so each stays within its timeout. */
int main(int argc, char **argv)
{
#ifndef ER_FAULTS
    /* Not a skip: without fault points there is nothing to test, and a
     * green run would claim what was not checked. */
    fprintf(stderr, "fault_matrix_test: the build has no fault points; "
                    "configure with -DER_FAULTS=ON (make test does)\n");
    return 1;
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(fault_matrix_local, teardown),
        cmocka_unit_test_teardown(fault_matrix_ssh, teardown),
        cmocka_unit_test_teardown(fault_matrix_sandbox, teardown),
    };

    static char filter[64];

    if (argc > 1) {
        if (strcmp(argv[1], "local") != 0 && strcmp(argv[1], "ssh") != 0 &&
            strcmp(argv[1], "sandbox") != 0) {
            fprintf(stderr, "fault_matrix_test: no column %s\n", argv[1]);
            return 2;
        }
        snprintf(filter, sizeof(filter), "fault_matrix_%s", argv[1]);
        cmocka_set_test_filter(filter);
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
