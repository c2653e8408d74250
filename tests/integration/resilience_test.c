/* resilience_test: the worker under outages and slow or paused peers. The
 * database refuses connections mid-stream and comes back; the broker goes
 * down and comes back; one of three workers is paused (SIGSTOP) in the
 * middle of a step past its session timeout and resumed; one run's
 * provision command takes longer than the group's poll interval. In each,
 * every command gets its result, nothing is lost or published twice with
 * different content, and a worker that lost its partition records nothing
 * for it. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "tests/support/harness.h"
#include "worker/worker.h"

#define RUNS      12
#define FINISH_MS 120000

static int teardown(void **state)
{
    int rc = *state != NULL && er_harness_stop_workers(*state) ? 0 : -1;

    er_harness_destroy(*state);
    *state = NULL;
    return rc;
}

/* RUNS runs of acquire, realize, release (local); cmds[r * 3 + k]. */
static void plan(struct er_harness *h, struct er_harness_run *runs,
                 struct er_harness_cmd *cmds, const char **ids)
{
    int r;

    for (r = 0; r < RUNS; r++) {
        er_harness_run_init(&runs[r]);
        er_harness_cmd_acquire(&cmds[r * 3], &runs[r]);
        er_harness_cmd_realize(&cmds[r * 3 + 1], &runs[r], h->dir);
        er_harness_cmd_release(&cmds[r * 3 + 2], &runs[r], ER_RELEASE_RELEASED);
    }
    for (r = 0; r < RUNS * 3; r++)
        ids[r] = cmds[r].command_id;
}

/* Send step k of every run. */
static void send_wave(struct er_harness *h, struct er_harness_cmd *cmds, int k)
{
    int r;

    for (r = 0; r < RUNS; r++)
        assert_int_equal(er_harness_send(h, &cmds[r * 3 + k].cmd), 0);
    assert_int_equal(er_harness_flush(h), 0);
}

/* Everything answered once in effect, every lease released with three
 * events, activity matching its rows. */
static void check_all(struct er_harness *h, struct er_harness_worker *w,
                      const char *const *ids)
{
    if (!er_harness_wait_results(h, ids, RUNS * 3, FINISH_MS)) {
        er_harness_worker_dump_log(w, 6000);
        er_harness_fail(__FILE__, __LINE__, "not every command has a result");
    }
    assert_true(er_harness_wait_total(h, ER_HARNESS_ACTIVITY, 2 * RUNS,
                                      ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    er_harness_check_results(h, ids, RUNS * 3, "ok");
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE status = "
                                         "'released'",
                                         0, NULL),
                     RUNS);
    er_harness_check_lease_events(h, 3, 0);
    er_harness_check_activity(h);
}

/* The server's maintenance database (ENVRUN_TEST_PG_URL names it). */
static const char *admin_url(void)
{
    const char *url = getenv("ENVRUN_TEST_PG_URL");

    if (url == NULL || url[0] == '\0')
        er_harness_fail(__FILE__, __LINE__, "ENVRUN_TEST_PG_URL is not set");
    return url;
}

/* Refuse (or allow again) connections to the test's database and end the
 * ones it has: from the worker's side, the database went away. */
static void db_set_reachable(struct er_harness *h, bool is_reachable)
{
    char sql[256];
    const char *params[] = { h->db_name };

    snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS %s",
             h->db_name, is_reachable ? "true" : "false");
    assert_int_equal(er_harness_pg_exec(admin_url(), sql, 0, NULL), 0);
    if (!is_reachable)
        assert_int_equal(
            er_harness_pg_exec(admin_url(),
                               "SELECT pg_terminate_backend(pid) FROM "
                               "pg_stat_activity WHERE datname = $1",
                               1, params),
            0);
}

static void database_outage_mid_stream_loses_nothing(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_worker_opts opts = { .concurrency = 4, .has_http = true };
    struct er_harness_run runs[RUNS];
    struct er_harness_cmd cmds[RUNS * 3];
    const char *ids[RUNS * 3];

    h = er_harness_new("resil_db", 2, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    plan(h, runs, cmds, ids);
    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);
    send_wave(h, cmds, 0);
    assert_true(er_harness_wait_total(h, ER_HARNESS_RESULTS, 1 + RUNS / 2,
                                      ER_HARNESS_WAIT_MS));
    db_set_reachable(h, false);
    send_wave(h, cmds, 1);
    /* Down for a while: the steps retry, /readyz says so. */
    assert_true(er_harness_worker_wait_readyz(w, 503, ER_HARNESS_WAIT_MS));
    er_harness_poll(h, 2000);
    assert_true(er_harness_worker_is_alive(w));
    db_set_reachable(h, true);
    send_wave(h, cmds, 2);
    check_all(h, w, ids);
    assert_true(er_harness_worker_wait_ready(w, ER_HARNESS_WAIT_MS));
}

/* Produce requests fail, then the broker is down for a while, mid-stream.
 * The harness's own clients do not recover from the mock's down/up, so
 * the outcome is read from the database: every command processed once,
 * and the outbox empty, that is every record acknowledged by the broker
 * (the relay deletes a row only then). */
static void broker_outage_mid_stream_loses_nothing(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_worker_opts opts = { .concurrency = 4, .has_http = true };
    struct er_harness_run runs[RUNS];
    struct er_harness_cmd cmds[RUNS * 3];
    const char *ids[RUNS * 3];
    rd_kafka_mock_cluster_t *mock;
    int k;

    h = er_harness_new("resil_kafka", 2, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    plan(h, runs, cmds, ids);
    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);
    mock = er_harness_mock(h);
    ER_HARNESS_NON_NULL(mock);
    for (k = 0; k < 3; k++)
        send_wave(h, cmds, k);
    assert_true(er_harness_wait_total(h, ER_HARNESS_RESULTS, 1 + RUNS / 2,
                                      ER_HARNESS_WAIT_MS));
    rd_kafka_mock_push_request_errors(
        mock, 0 /* ApiKey Produce */, 3,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS);
    assert_int_equal(rd_kafka_mock_broker_set_down(mock, 1), 0);
    assert_true(er_harness_worker_wait_readyz(w, 503, ER_HARNESS_WAIT_MS));
    er_harness_poll(h, 2000);
    assert_true(er_harness_worker_is_alive(w));
    assert_int_equal(rd_kafka_mock_broker_set_up(mock, 1), 0);
    /* The plan's commands and the warm-up acquire. */
    if (!er_harness_pg_wait_count(h,
                                  "SELECT count(*) FROM "
                                  "envrun.processed_commands",
                                  0, NULL, RUNS * 3 + 1, FINISH_MS) ||
        !er_harness_pg_wait_count(h, "SELECT count(*) FROM envrun.outbox", 0,
                                  NULL, 0, FINISH_MS)) {
        er_harness_worker_dump_log(w, 6000);
        er_harness_fail(__FILE__, __LINE__, "the stream did not complete");
    }
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE status = "
                                         "'released'",
                                         0, NULL),
                     RUNS);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log", 0,
                                         NULL),
                     2 * RUNS + 1);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "envrun.outbox_quarantine",
                                         0, NULL),
                     0);
    assert_true(er_harness_worker_wait_ready(w, FINISH_MS));
}

/* The worker whose log shows command_id was processed. */
static int owner_of(struct er_harness_worker *const *ws, int cnt,
                    const char *command_id)
{
    int i;

    for (i = 0; i < cnt; i++) {
        if (er_harness_worker_log_contains(ws[i], command_id))
            return i;
    }
    return -1;
}

/* A run on a per-lease ssh environment whose realize is running its
 * provision command on the host. */
struct provisioning {
    struct er_harness_run run;
    struct er_harness_cmd acq;
    struct er_harness_cmd real;
    struct er_harness_cmd rel; /* not sent */
    const char *ids[3];
    char env_id[37];
    char remote[ER_HARNESS_PATH_MAX + 16]; /* remoteWorkspacePath */
    int owner;                             /* index into ws */
};

/* Make environment name, acquire (ok), send the realize with provisionCmd
 * and return once its `sleep` runs on the host; p->owner is the worker of
 * ws that answered the acquire. */
static void start_provisioning(struct er_harness *h, struct er_harness_ssh *ssh,
                               struct er_harness_worker *const *ws, int ws_cnt,
                               const char *name, const char *provision_json,
                               struct provisioning *p)
{
    const json_t *res;
    int64_t deadline;

    er_harness_run_init(&p->run);
    assert_int_equal(er_harness_ssh_per_lease_env(h, ssh, p->run.company_id,
                                                  name, p->remote,
                                                  sizeof(p->remote), p->env_id),
                     0);
    er_harness_cmd_acquire(&p->acq, &p->run);
    p->acq.cmd.selected_environment_id = p->env_id;
    er_harness_cmd_realize(&p->real, &p->run, h->dir);
    p->real.cmd.runtime_overlay_json = (char *)(uintptr_t)provision_json;
    er_harness_cmd_release(&p->rel, &p->run, ER_RELEASE_RELEASED);
    p->ids[0] = p->acq.command_id;
    p->ids[1] = p->real.command_id;
    p->ids[2] = p->rel.command_id;
    assert_int_equal(er_harness_send(h, &p->acq.cmd), 0);
    res = er_harness_wait_result(h, p->acq.command_id, FINISH_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    p->owner = owner_of(ws, ws_cnt, p->acq.command_id);
    assert_true(p->owner >= 0);

    assert_int_equal(er_harness_send(h, &p->real.cmd), 0);
    assert_int_equal(er_harness_flush(h), 0);
    deadline = er_time_mono_ms() + ER_HARNESS_WAIT_MS;
    while (er_harness_ssh_sessions(ssh, "sleep") < 1) {
        if (er_time_mono_ms() >= deadline) {
            er_harness_worker_dump_log(ws[p->owner], 4000);
            er_harness_fail(__FILE__, __LINE__,
                            "the provision command never started");
        }
        er_harness_poll(h, 50);
    }
}

/* One of three workers is paused in the middle of a realize (its provision
 * command sleeping on the ssh host) past its session timeout. Its
 * partitions move; the new owner resumes the realize from the journal and
 * answers. Resumed, the paused worker finds its partition gone and records
 * nothing: the realize has exactly one result content. */
static void paused_worker_publishes_nothing_stale(void **state)
{
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_worker *ws[3];
    struct er_harness_worker_opts opts = { .concurrency = 2 };
    struct provisioning p;
    const json_t *res;
    int owner;
    int i;

    h = er_harness_new("resil_pause", 6, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ssh = er_harness_ssh_new(h);
    ER_HARNESS_NON_NULL(ssh);
    opts.env = ssh->worker_env;
    for (i = 0; i < 3; i++) {
        ws[i] = i == 0 ? er_harness_worker_start_warm(h, &opts)
                       : er_harness_worker_start(h, &opts);
        ER_HARNESS_NON_NULL(ws[i]);
    }
    /* Let the group settle on three members. */
    er_harness_poll(h, 8000);
    /* Pause the owner once its provision command runs on the host. */
    start_provisioning(h, ssh, ws, 3, "Paused",
                       "{\"provisionCommand\": \"sleep 6 && echo ran >> "
                       "../ran.txt\"}",
                       &p);
    owner = p.owner;
    assert_int_equal(kill(ws[owner]->pid, SIGSTOP), 0);
    /* The others take its partitions (6 s session) and answer. */
    res = er_harness_wait_result(h, p.real.command_id, FINISH_MS);
    if (res == NULL) {
        er_harness_worker_dump_log(ws[(owner + 1) % 3], 4000);
        er_harness_worker_dump_log(ws[(owner + 2) % 3], 4000);
    }
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(kill(ws[owner]->pid, SIGCONT), 0);
    if (!er_harness_worker_wait_log(ws[owner], "left unrecorded", FINISH_MS)) {
        er_harness_worker_dump_log(ws[owner], 6000);
        er_harness_fail(__FILE__, __LINE__,
                        "the resumed worker did not drop its late step");
    }
    assert_int_equal(er_harness_send(h, &p.rel.cmd), 0);
    assert_true(er_harness_wait_results(h, p.ids, 3, FINISH_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    er_harness_check_results(h, p.ids, 3, "ok");
    er_harness_check_lease_events(h, 3, 0);
    er_harness_check_activity(h);
    assert_true(er_harness_ssh_remote_ok(ssh, "test ! -e '%s/%s'", p.remote,
                                         er_harness_json_str(res, "leaseId")));
    assert_true(er_harness_stop_workers(h));
    er_harness_ssh_kill_sessions(ssh);
    er_harness_ssh_destroy(ssh);
}

/* A provision command longer than max.poll.interval.ms on one run: the
 * other runs are answered meanwhile and the worker stays in its group. */
static void long_provision_blocks_nothing(void **state)
{
    static const char props[] =
        "ENVRUN_KAFKA_PROPS=session.timeout.ms=6000,heartbeat.interval.ms="
        "500,max.poll.interval.ms=8000";
    const char *env[8];
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_worker *w;
    struct er_harness_worker_opts opts = { .concurrency = 4 };
    struct er_harness_run slow;
    struct er_harness_run others[4];
    struct er_harness_cmd acq;
    struct er_harness_cmd real;
    struct er_harness_cmd quick[4];
    const char *quick_ids[4];
    char env_id[37];
    char remote[ER_HARNESS_PATH_MAX + 16];
    const json_t *res;
    int64_t t0;
    int i;

    h = er_harness_new("resil_long", 2, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ssh = er_harness_ssh_new(h);
    ER_HARNESS_NON_NULL(ssh);
    er_harness_ssh_worker_env_with(ssh, props, env);
    opts.env = env;
    w = er_harness_worker_start_warm(h, &opts);
    ER_HARNESS_NON_NULL(w);
    er_harness_run_init(&slow);
    assert_int_equal(er_harness_ssh_per_lease_env(h, ssh, slow.company_id,
                                                  "Slow", remote,
                                                  sizeof(remote), env_id),
                     0);
    er_harness_cmd_acquire(&acq, &slow);
    acq.cmd.selected_environment_id = (char *)(uintptr_t)env_id;
    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    res = er_harness_wait_result(h, acq.command_id, FINISH_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");

    er_harness_cmd_realize(&real, &slow, h->dir);
    real.cmd.runtime_overlay_json =
        (char *)(uintptr_t) "{\"provisionCommand\": \"sleep 20\"}";
    assert_int_equal(er_harness_send(h, &real.cmd), 0);
    assert_int_equal(er_harness_flush(h), 0);
    er_harness_poll(h, 1000);
    t0 = er_time_mono_ms();
    for (i = 0; i < 4; i++) {
        er_harness_run_init(&others[i]);
        er_harness_cmd_acquire(&quick[i], &others[i]);
        quick_ids[i] = quick[i].command_id;
        assert_int_equal(er_harness_send(h, &quick[i].cmd), 0);
    }
    assert_true(er_harness_wait_results(h, quick_ids, 4, ER_HARNESS_WAIT_MS));
    print_message("long_provision: 4 other runs answered in %lld ms while "
                  "the provision ran\n",
                  (long long)(er_time_mono_ms() - t0));
    assert_null(er_harness_wait_result(h, real.command_id, 0));
    res = er_harness_wait_result(h, real.command_id, FINISH_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_true(er_time_mono_ms() - t0 >= 15000);
    /* Never evicted: no revoke, no second assignment. */
    assert_false(er_harness_worker_log_contains(w, "revoked"));
    assert_false(er_harness_worker_log_contains(w, "poll interval"));
    /* The slow lease is never released: cut its connection so later tests
     * see a quiet server. */
    assert_true(er_harness_stop_workers(h));
    er_harness_ssh_kill_sessions(ssh);
    er_harness_ssh_destroy(ssh);
}

/* The control plane (which does not take envrun's workspace lock) leases
 * the execution workspace while the ssh driver is acquiring for another
 * run: the acquire answers deferred (lease_conflict), and what its driver
 * made on the host (the per-lease directory, the connection) is released
 * and its journal entry ends rolled_back. The driver is held up by a
 * marker-gated sleep in the ssh user's ~/.zprofile, which its login shell
 * reads. */
static void workspace_taken_during_acquire_is_rolled_back(void **state)
{
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_worker_opts opts = { .concurrency = 2 };
    struct er_harness_run run;
    struct er_harness_run other;
    struct er_harness_cmd acq;
    const json_t *res;
    char env_id[37];
    char ws_id[37];
    char other_lease[37];
    char remote[ER_HARNESS_PATH_MAX + 16];
    const char *p[4];
    json_t *rows;
    char lease_id[37];

    h = er_harness_new("resil_undo", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    ssh = er_harness_ssh_new(h);
    ER_HARNESS_NON_NULL(ssh);
    opts.env = ssh->worker_env;
    ER_HARNESS_NON_NULL(er_harness_worker_start_warm(h, &opts));
    er_harness_run_init(&run);
    er_harness_run_init_same_company(&other, &run);
    assert_int_equal(er_harness_ssh_per_lease_env(h, ssh, run.company_id,
                                                  "Taken", remote,
                                                  sizeof(remote), env_id),
                     0);
    assert_true(er_harness_ssh_remote_ok(
        ssh, "printf '%%s\\n' '[ -e \"$HOME/.envrun-slow-acquire\" ] && "
             "sleep 3' > \"$HOME/.zprofile\" && touch "
             "\"$HOME/.envrun-slow-acquire\""));
    er_uuid_v4(ws_id);
    er_harness_cmd_acquire(&acq, &run);
    acq.cmd.selected_environment_id = env_id;
    acq.cmd.execution_workspace_id = ws_id;
    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    assert_int_equal(er_harness_flush(h), 0);

    /* Once the acquire is journaled (the driver is working), the control
     * plane leases the workspace for another live run. */
    p[0] = acq.command_id;
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM envrun.operations WHERE command_id = $1 AND "
        "kind = 'acquire' AND state = 'started'",
        1, p, 1, ER_HARNESS_WAIT_MS));
    er_harness_pg_control_plane_lease(h, run.company_id, env_id, ws_id,
                                      other_lease);
    assert_true(er_harness_ssh_remote_ok(
        ssh, "rm -f \"$HOME/.envrun-slow-acquire\" \"$HOME/.zprofile\""));

    res = er_harness_wait_result(h, acq.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "deferred");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_conflict");
    /* No lease row of ours; the driver's directory is released. */
    p[0] = acq.command_id;
    rows = er_harness_pg_query(h->db_url,
                               "SELECT lease_id::text AS lease_id FROM "
                               "envrun.operations WHERE command_id = $1 AND "
                               "kind = 'acquire'",
                               1, p);
    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), 1);
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(json_array_get(rows, 0), "lease_id"));
    json_decref(rows);
    assert_true(er_harness_pg_wait_count(
        h,
        "SELECT count(*) FROM envrun.operations WHERE command_id = $1 AND "
        "state = 'rolled_back'",
        1, p, 1, ER_HARNESS_WAIT_MS));
    p[0] = lease_id;
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE id = "
                                         "$1::uuid",
                                         1, p),
                     0);
    assert_true(
        er_harness_ssh_remote_ok(ssh, "test ! -e '%s/%s'", remote, lease_id));
    assert_false(er_harness_ssh_control_dir_exists(lease_id));
    er_harness_ssh_destroy(ssh);
}

/* A case with 2 partitions, the test sshd and one warm worker with opts
 * (its env set here): *h (also *state) and *ssh get the harness and host. */
static struct er_harness_worker *
one_ssh_worker(void **state, const char *name, struct er_harness **h,
               struct er_harness_ssh **ssh, struct er_harness_worker_opts *opts)
{
    struct er_harness_worker *w;

    *h = er_harness_new(name, 2, NULL);
    ER_HARNESS_NON_NULL(*h);
    *state = *h;
    *ssh = er_harness_ssh_new(*h);
    ER_HARNESS_NON_NULL(*ssh);
    opts->env = (*ssh)->worker_env;
    w = er_harness_worker_start_warm(*h, opts);
    ER_HARNESS_NON_NULL(w);
    return w;
}

/* Start a member of the worker's group on topics of its own (prefix, a
 * commands topic is made for it): the rebalance revokes every partition of
 * the worker and gives them all back. */
static void join_other_member(struct er_harness *h,
                              const struct er_harness_ssh *ssh,
                              const char *prefix)
{
    static const struct er_harness_worker_opts base = { .concurrency = 1 };
    struct er_harness_worker_opts opts = base;
    const char *env[8];
    char topic[128];
    char var[128];

    snprintf(topic, sizeof(topic), "%scommands", prefix);
    snprintf(var, sizeof(var), "ENVRUN_TOPIC_PREFIX=%s", prefix);
    rd_kafka_mock_topic_create(er_harness_mock(h), topic, 1, 1);
    er_harness_ssh_worker_env_with(ssh, var, env);
    opts.env = env;
    ER_HARNESS_NON_NULL(er_harness_worker_start(h, &opts));
}

/* Another member joins the group (it subscribes to another topic, so the
 * worker keeps every partition) while the worker's provision command runs
 * on the ssh host. The eager rebalance takes the partitions away and gives
 * them back: the running realize is handed over to the new generation, not
 * cancelled and run again. The provision command runs once, its journal
 * entries stay at attempt 1, the realize has one result, and its offset is
 * committed by the handed-over step (a worker started afterwards on the
 * group publishes nothing more). */
static void rebalance_hands_a_running_step_over(void **state)
{
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_worker *w;
    struct er_harness_worker *after;
    struct er_harness_worker_opts opts = { .concurrency = 2 };
    struct provisioning p;
    const char *params[1];
    char script[ER_HARNESS_PATH_MAX + 64];
    char *out = NULL;
    const json_t *res;

    w = one_ssh_worker(state, "resil_handover", &h, &ssh, &opts);
    start_provisioning(h, ssh, &w, 1, "Handover",
                       "{\"provisionCommand\": \"sleep 8 && echo ran >> "
                       "../handover-ran.txt\"}",
                       &p);
    /* A member of the same group on another topic: the rebalance revokes
     * and gives back every partition of the worker. */
    join_other_member(h, ssh, "handover-other.");
    if (!er_harness_worker_wait_log(w, "running steps handed over",
                                    ER_HARNESS_WAIT_MS)) {
        er_harness_worker_dump_log(w, 6000);
        er_harness_fail(__FILE__, __LINE__, "no handover happened");
    }
    res = er_harness_wait_result(h, p.real.command_id, FINISH_MS);
    if (res == NULL)
        er_harness_worker_dump_log(w, 6000);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_false(er_harness_worker_log_contains(w, "left unrecorded"));
    /* The provision command ran once, and nothing was resumed. */
    snprintf(script, sizeof(script), "wc -l < '%s/handover-ran.txt'", p.remote);
    assert_int_equal(er_harness_ssh_remote(ssh, script, &out), 0);
    ER_HARNESS_NON_NULL(out);
    assert_int_equal(atoi(out), 1);
    er_free(out);
    params[0] = p.real.command_id;
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "envrun.operations WHERE command_id "
                                         "= $1 AND state = 'done' AND "
                                         "attempt = 1",
                                         1, params),
                     2); /* realize and provision */

    assert_int_equal(er_harness_send(h, &p.rel.cmd), 0);
    assert_true(er_harness_wait_results(h, p.ids, 3, FINISH_MS));
    assert_true(er_harness_stop_workers(h));
    /* Every offset was committed: a worker that joins the group now is
     * given nothing to do again, so no result is published a second time. */
    after = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(after);
    assert_true(er_harness_worker_wait_log(after, "assigned",
                                           ER_HARNESS_FIRST_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_int_equal(er_harness_find(h, ER_HARNESS_RESULTS, "commandId",
                                     p.real.command_id, NULL, 0),
                     1);
    er_harness_check_results(h, p.ids, 3, "ok");
    er_harness_check_lease_events(h, 3, 0);
    er_harness_check_activity(h);
    assert_true(er_harness_ssh_remote_ok(ssh, "test ! -e '%s/%s'", p.remote,
                                         er_harness_json_str(res, "leaseId")));
    assert_true(er_harness_stop_workers(h));
    er_harness_ssh_destroy(ssh);
}

/* As above, but the step ends while the partitions are away: its
 * provision command waits on a gate the test opens once the worker has
 * seen the revoke. The parked step records its outcome under the old
 * generation (nobody claimed a newer one yet); when its message comes back
 * after the assignment it is not run again, so its result is published
 * once, not re-sent from the stored result. */
static void step_that_ends_during_a_rebalance_is_not_run_again(void **state)
{
    struct er_harness *h;
    struct er_harness_ssh *ssh;
    struct er_harness_worker *w;
    struct er_harness_worker_opts opts = { .concurrency = 2 };
    struct provisioning p;
    char gate[ER_HARNESS_PATH_MAX + 16];
    char provision[2 * ER_HARNESS_PATH_MAX + 128];

    w = one_ssh_worker(state, "resil_parked", &h, &ssh, &opts);
    snprintf(gate, sizeof(gate), "%s/parked-gate", ssh->root);
    assert_true(er_harness_ssh_remote_ok(ssh, "touch '%s'", gate));
    snprintf(provision, sizeof(provision),
             "{\"provisionCommand\": \"while [ -e '%s' ]; do sleep 0.1; "
             "done; echo ran >> '%s/parked-ran.txt'\"}",
             gate, ssh->root);
    start_provisioning(h, ssh, &w, 1, "Parked", provision, &p);
    join_other_member(h, ssh, "parked-other.");
    assert_true(er_harness_worker_wait_log(w, "revoked", ER_HARNESS_WAIT_MS));
    assert_true(er_harness_ssh_remote_ok(ssh, "rm -f '%s'", gate));
    if (!er_harness_worker_wait_log(w, "not run again", ER_HARNESS_WAIT_MS)) {
        er_harness_worker_dump_log(w, 6000);
        er_harness_fail(__FILE__, __LINE__,
                        "the parked step's message was run again");
    }
    assert_non_null(er_harness_wait_result(h, p.real.command_id, FINISH_MS));
    assert_int_equal(er_harness_send(h, &p.rel.cmd), 0);
    assert_true(er_harness_wait_results(h, p.ids, 3, FINISH_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_int_equal(er_harness_find(h, ER_HARNESS_RESULTS, "commandId",
                                     p.real.command_id, NULL, 0),
                     1);
    assert_true(er_harness_ssh_remote_ok(
        ssh, "test \"$(wc -l < '%s/parked-ran.txt')\" -eq 1", ssh->root));
    er_harness_check_results(h, p.ids, 3, "ok");
    er_harness_check_lease_events(h, 3, 0);
    er_harness_check_activity(h);
    assert_true(er_harness_stop_workers(h));
    er_harness_ssh_destroy(ssh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(database_outage_mid_stream_loses_nothing,
                                  teardown),
        cmocka_unit_test_teardown(broker_outage_mid_stream_loses_nothing,
                                  teardown),
        cmocka_unit_test_teardown(paused_worker_publishes_nothing_stale,
                                  teardown),
        cmocka_unit_test_teardown(long_provision_blocks_nothing, teardown),
        cmocka_unit_test_teardown(workspace_taken_during_acquire_is_rolled_back,
                                  teardown),
        cmocka_unit_test_teardown(rebalance_hands_a_running_step_over,
                                  teardown),
        cmocka_unit_test_teardown(
            step_that_ends_during_a_rebalance_is_not_run_again, teardown),
    };

    /* ENVRUN_TEST_ONLY=<case name> runs one case (debugging). */
    if (getenv("ENVRUN_TEST_ONLY") != NULL)
        cmocka_set_test_filter(getenv("ENVRUN_TEST_ONLY"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
