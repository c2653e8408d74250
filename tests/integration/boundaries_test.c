/* boundaries_test: tenant and host boundaries, tried as an attacker would.
 * A command carrying another company's run id or command id, a realize
 * whose workspace path lies outside ENVRUN_WORKSPACE_ROOTS, a dead-lettered
 * command carrying hostApiToken, a worker started with SIGCHLD ignored or
 * without ENVRUN_KAFKA_BROKERS: each case is named for the attack it stops.
 * One worker (started with SIGCHLD ignored, as a careless parent might
 * leave it) serves every case; the sshd of scripts/test-services.sh is the
 * remote host. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/support/harness.h"

static struct er_harness *h;
static struct er_harness_ssh *ssh;
static struct er_harness_worker *worker;

static int group_setup(void **state)
{
    static char roots[2 * ER_HARNESS_PATH_MAX + 64];
    static const char *env[8];
    struct er_harness_worker_opts opts = { 0 };
    struct sigaction ign;
    struct sigaction old;

    (void)state;
    h = er_harness_new("boundaries", 2, NULL);
    if (h == NULL)
        return -1;
    ssh = er_harness_ssh_new(h);
    if (ssh == NULL)
        return -1;
    /* The secrets directory lies in a workspace root here, as a careless
     * operator might set it: it must still never be a workspace. */
    snprintf(roots, sizeof(roots), "ENVRUN_WORKSPACE_ROOTS=%s:%s", h->dir,
             ssh->secrets_dir);
    er_harness_ssh_worker_env_with(ssh, roots, env);
    opts.env = env;
    /* An ignored SIGCHLD survives exec: the worker must reset it, or the
     * kernel reaps its children and their exit statuses are lost. */
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGCHLD, &ign, &old);
    worker = er_harness_worker_start(h, &opts);
    sigaction(SIGCHLD, &old, NULL);
    if (worker == NULL)
        return -1;
    /* Warm: the first answer means it migrated and joined the group. */
    {
        struct er_harness_run run;
        struct er_harness_cmd c;

        er_harness_run_init(&run);
        er_harness_cmd_acquire(&c, &run);
        if (er_harness_send(h, &c.cmd) != 0 ||
            er_harness_wait_result(h, c.command_id, ER_HARNESS_FIRST_WAIT_MS) ==
                NULL) {
            er_harness_worker_dump_log(worker, 4000);
            return -1;
        }
    }
    return 0;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_ssh_destroy(ssh);
    ssh = NULL;
    er_harness_destroy(h);
    h = NULL;
    return rc;
}

/* ----------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------- */

static const json_t *roundtrip(struct er_harness_cmd *c)
{
    return er_harness_roundtrip(h, worker, c, ER_HARNESS_WAIT_MS);
}

/* Acquire run's Local environment; the lease id goes to lease_id. */
static void acquire_local(struct er_harness_run *run, char lease_id[37])
{
    struct er_harness_cmd c;
    const json_t *res;

    er_harness_cmd_acquire(&c, run);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(lease_id, 37, "%s", er_harness_json_str(res, "leaseId"));
}

static const char *lease_status(const char *lease_id)
{
    static char status[32];
    json_t *rows = er_harness_pg_query(
        h->db_url, "SELECT status FROM environment_leases WHERE id = $1", 1,
        (const char *[]){ lease_id });

    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), 1);
    snprintf(status, sizeof(status), "%s",
             er_harness_json_str(json_array_get(rows, 0), "status"));
    json_decref(rows);
    return status;
}

static long long lease_event_count(const char *lease_id)
{
    return (long long)er_harness_find_key(h, ER_HARNESS_LEASE_EVENTS, lease_id,
                                          NULL, 0);
}

/* ----------------------------------------------------------------
 * Company scoping of run ids and command ids
 * ---------------------------------------------------------------- */

/* Company B's release carrying company A's run id: nothing of A's changes
 * (before, the run-id path found A's leases and released them, teardown
 * commands included). */
static void release_with_foreign_run_id_touches_nothing(void **state)
{
    struct er_harness_run victim;
    struct er_harness_run attacker;
    struct er_harness_cmd c;
    char lease_id[37];
    const json_t *res;
    json_t *body;
    long long events;

    (void)state;
    er_harness_run_init(&victim);
    er_harness_run_init(&attacker);
    acquire_local(&victim, lease_id);
    er_harness_poll(h, 500);
    events = lease_event_count(lease_id);

    memcpy(attacker.run_id, victim.run_id, sizeof(attacker.run_id));
    er_harness_cmd_release(&c, &attacker, ER_RELEASE_FAILED);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    ER_HARNESS_ASSERT_JSON(body, "released", "[]");
    ER_HARNESS_ASSERT_JSON(body, "errors", "[]");
    json_decref(body);
    assert_string_equal(lease_status(lease_id), "active");
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_int_equal(lease_event_count(lease_id), events);
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM activity_log "
                            "WHERE company_id = $1",
                            1, (const char *[]){ attacker.company_id }),
        0);

    /* The owner's own release still works. */
    er_harness_cmd_release(&c, &victim, ER_RELEASE_RELEASED);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_string_equal(lease_status(lease_id), "released");
}

/* Company B's realize carrying company A's run id finds no lease. */
static void realize_with_foreign_run_id_touches_nothing(void **state)
{
    struct er_harness_run victim;
    struct er_harness_run attacker;
    struct er_harness_cmd c;
    char lease_id[37];
    char msg[160];
    const json_t *res;
    long long ws_meta;

    (void)state;
    er_harness_run_init(&victim);
    er_harness_run_init(&attacker);
    acquire_local(&victim, lease_id);
    memcpy(attacker.run_id, victim.run_id, sizeof(attacker.run_id));
    er_harness_cmd_realize(&c, &attacker, h->dir);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    snprintf(msg, sizeof(msg),
             "Failed to realize workspace: heartbeat run \"%s\" has no "
             "active lease.",
             victim.run_id);
    ER_HARNESS_ASSERT_STR(res, "errorMessage", msg);
    ER_HARNESS_ASSERT_STR(res, "leaseId", NULL);
    ws_meta = er_harness_pg_count(
        h->db_url,
        "SELECT count(*) FROM environment_leases WHERE id = $1 AND "
        "metadata ? 'workspaceRealization'",
        1, (const char *[]){ lease_id });
    assert_int_equal(ws_meta, 0);
    assert_string_equal(lease_status(lease_id), "active");
}

/* A command id first used by company A, sent again by company B (or by A
 * for another kind of command): B never gets A's stored result, which
 * names A's lease; A's own redelivery still does. */
static void command_id_of_other_company_gets_no_stored_result(void **state)
{
    struct er_harness_run victim;
    struct er_harness_run attacker;
    struct er_harness_cmd first;
    struct er_harness_cmd copy;
    struct er_harness_cmd other_kind;
    const struct er_harness_record *recs[8];
    char lease_id[37];
    const json_t *res;
    char *text;
    size_t n;
    size_t i;

    (void)state;
    er_harness_run_init(&victim);
    er_harness_run_init(&attacker);
    er_harness_cmd_acquire(&first, &victim);
    res = roundtrip(&first);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(res, "leaseId"));

    er_harness_cmd_acquire(&copy, &attacker);
    memcpy(copy.command_id, first.command_id, sizeof(copy.command_id));
    assert_int_equal(er_harness_send(h, &copy.cmd), 0);
    assert_true(er_harness_wait_key(h, ER_HARNESS_RESULTS, attacker.run_id, 1,
                                    ER_HARNESS_WAIT_MS));
    n = er_harness_find_key(h, ER_HARNESS_RESULTS, attacker.run_id, recs, 8);
    assert_int_equal(n, 1);
    ER_HARNESS_ASSERT_STR(recs[0]->json, "companyId", attacker.company_id);
    ER_HARNESS_ASSERT_STR(recs[0]->json, "outcome", "error");
    ER_HARNESS_ASSERT_STR(recs[0]->json, "errorCode", "invalid_command");
    ER_HARNESS_ASSERT_STR(recs[0]->json, "leaseId", NULL);
    ER_HARNESS_ASSERT_CONTAINS(
        er_harness_json_str(recs[0]->json, "errorMessage"),
        "already used by another command");
    text = er_harness_json_text(recs[0]->json);
    ER_HARNESS_NON_NULL(text);
    if (strstr(text, lease_id) != NULL)
        er_harness_fail(__FILE__, __LINE__,
                        "the attacker's result names the victim's lease");
    free(text);

    /* Same company, another kind, same id: refused too. */
    er_harness_cmd_release(&other_kind, &victim, ER_RELEASE_RELEASED);
    memcpy(other_kind.command_id, first.command_id,
           sizeof(other_kind.command_id));
    assert_int_equal(er_harness_send(h, &other_kind.cmd), 0);
    assert_true(er_harness_wait_key(h, ER_HARNESS_RESULTS, victim.run_id, 2,
                                    ER_HARNESS_WAIT_MS));
    n = er_harness_find_key(h, ER_HARNESS_RESULTS, victim.run_id, recs, 8);
    assert_int_equal(n, 2);
    ER_HARNESS_ASSERT_STR(recs[1]->json, "kind", "release");
    ER_HARNESS_ASSERT_STR(recs[1]->json, "errorCode", "invalid_command");
    assert_string_equal(lease_status(lease_id), "active");

    /* The owner's redelivery gets its stored result, byte for byte. */
    assert_int_equal(er_harness_send(h, &first.cmd), 0);
    assert_true(er_harness_wait_key(h, ER_HARNESS_RESULTS, victim.run_id, 3,
                                    ER_HARNESS_WAIT_MS));
    n = er_harness_find_key(h, ER_HARNESS_RESULTS, victim.run_id, recs, 8);
    assert_int_equal(n, 3);
    assert_int_equal(recs[2]->value_len, recs[0]->value_len);
    for (i = 0; i < n; i++)
        ER_HARNESS_NON_NULL(recs[i]->json);
    ER_HARNESS_ASSERT_STR(recs[2]->json, "leaseId", lease_id);
    ER_HARNESS_ASSERT_STR(recs[2]->json, "outcome", "ok");
}

/* A processed command recorded before migration 4 has no company column:
 * its company is read from the stored result, so another company reusing
 * its id still gets nothing of it, and the owner still gets it. */
static void
command_id_recorded_before_migration_4_keeps_its_company(void **state)
{
    struct er_harness_run owner;
    struct er_harness_run attacker;
    struct er_harness_cmd c;
    struct er_command_result old;
    struct er_buf enc;
    const struct er_harness_record *recs[4];
    char id[37];
    char *hex;
    size_t i;

    (void)state;
    er_harness_run_init(&owner);
    er_harness_run_init(&attacker);
    er_harness_cmd_acquire(&c, &owner);
    memcpy(id, c.command_id, sizeof(id));
    memset(&old, 0, sizeof(old));
    old.command_id = id;
    old.company_id = owner.company_id;
    old.heartbeat_run_id = owner.run_id;
    old.kind = ER_CMD_ACQUIRE;
    old.outcome = ER_OUTCOME_ERROR;
    old.error_code = ER_EC_ENVIRONMENT_NOT_FOUND;
    old.error_message = "stored before migration 4";
    old.completed_at_ms = 1700000000000LL;
    er_buf_init(&enc, 1u << 16);
    assert_int_equal(er_codec_result_encode(&old, &enc, NULL), 0);
    hex = er_calloc(1, enc.len * 2 + 1);
    ER_HARNESS_NON_NULL(hex);
    for (i = 0; i < enc.len; i++)
        snprintf(hex + 2 * i, 3, "%02x", enc.data[i]);
    assert_int_equal(
        er_harness_pg_exec(h->db_url,
                           "INSERT INTO envrun.processed_commands "
                           "(command_id, kind, heartbeat_run_id, result) "
                           "VALUES ($1, 'acquire', $2, decode($3, 'hex'))",
                           3, (const char *[]){ id, owner.run_id, hex }),
        0);
    er_free(hex);

    /* Another company with the same id and kind: refused. */
    er_harness_cmd_acquire(&c, &attacker);
    memcpy(c.command_id, id, sizeof(c.command_id));
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    assert_true(er_harness_wait_key(h, ER_HARNESS_RESULTS, attacker.run_id, 1,
                                    ER_HARNESS_WAIT_MS));
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_RESULTS, attacker.run_id, recs, 4),
        1);
    ER_HARNESS_ASSERT_STR(recs[0]->json, "errorCode", "invalid_command");
    ER_HARNESS_ASSERT_STR(recs[0]->json, "companyId", attacker.company_id);

    /* The owner: the stored bytes again, not a new acquire. (The
     * attacker's answer has the same command id: wait by key.) */
    er_harness_cmd_acquire(&c, &owner);
    memcpy(c.command_id, id, sizeof(c.command_id));
    assert_int_equal(er_harness_send(h, &c.cmd), 0);
    assert_true(er_harness_wait_key(h, ER_HARNESS_RESULTS, owner.run_id, 1,
                                    ER_HARNESS_WAIT_MS));
    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_RESULTS, owner.run_id, recs, 4), 1);
    ER_HARNESS_ASSERT_STR(recs[0]->json, "errorMessage",
                          "stored before migration 4");
    assert_int_equal(recs[0]->value_len, enc.len);
    assert_memory_equal(recs[0]->value, enc.data, enc.len);
    er_buf_fini(&enc);
}

/* ----------------------------------------------------------------
 * Lease ids
 * ---------------------------------------------------------------- */

/* Lease ids are RFC 9562 UUIDs (version 8, variant 10), still derived
 * from company and command id: the same command gets the same id again. */
static void lease_ids_are_rfc9562_uuids(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    const json_t *res;
    const char *id;
    int i;

    (void)state;
    for (i = 0; i < 16; i++) {
        er_harness_run_init(&run);
        er_harness_cmd_acquire(&c, &run);
        res = roundtrip(&c);
        ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
        id = er_harness_json_str(res, "leaseId");
        ER_HARNESS_NON_NULL(id);
        assert_int_equal(strlen(id), 36);
        if (id[14] != '8' || strchr("89ab", id[19]) == NULL)
            er_harness_fail(__FILE__, __LINE__,
                            "lease id %s is not an RFC 9562 version 8 UUID",
                            id);
        /* The database agrees it is the id the row has. */
        assert_string_equal(lease_status(id), "active");
    }
}

/* ----------------------------------------------------------------
 * Local workspace paths
 * ---------------------------------------------------------------- */

static void assert_path_refused(const char *cwd, const char *why)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char lease_id[37];
    const json_t *res;

    er_harness_run_init(&run);
    acquire_local(&run, lease_id);
    er_harness_cmd_realize(&c, &run, cwd);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(res, "errorMessage"), why);
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM environment_leases WHERE "
                            "id = $1 AND metadata ? 'workspaceRealization'",
                            1, (const char *[]){ lease_id }),
        0);
}

/* workspaceJson.cwd naming /etc, the secrets directory, a symlink out of
 * the root or a path climbing out with "..": refused before any driver
 * runs; a path inside the root is realized at its resolved location. */
static void workspace_outside_roots_is_refused(void **state)
{
    char link[ER_HARNESS_PATH_MAX + 32];
    char climb[ER_HARNESS_PATH_MAX + 32];
    char inside[ER_HARNESS_PATH_MAX + 32];
    char company_dir[ER_HARNESS_PATH_MAX + 64];
    struct er_harness_run run;
    struct er_harness_cmd c;
    char lease_id[37];
    const json_t *res;

    (void)state;
    assert_path_refused("/etc", "ENVRUN_WORKSPACE_ROOTS");
    /* Inside a root (see group_setup), but the worker's secrets are never
     * a workspace, nor inside one, nor around one. */
    assert_path_refused(ssh->secrets_dir, "ENVRUN_SECRETS_DIR");
    snprintf(company_dir, sizeof(company_dir), "%s/%s", ssh->secrets_dir,
             "some-company");
    mkdir(company_dir, 0700);
    assert_path_refused(company_dir, "ENVRUN_SECRETS_DIR");
    snprintf(link, sizeof(link), "%s/to-etc", h->dir);
    unlink(link);
    assert_int_equal(symlink("/etc", link), 0);
    assert_path_refused(link, "ENVRUN_WORKSPACE_ROOTS");
    snprintf(climb, sizeof(climb), "%s/../../..", h->dir);
    assert_path_refused(climb, "ENVRUN_WORKSPACE_ROOTS");

    snprintf(inside, sizeof(inside), "%s/ws-inside", h->dir);
    mkdir(inside, 0755);
    er_harness_run_init(&run);
    acquire_local(&run, lease_id);
    er_harness_cmd_realize(&c, &run, inside);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
}

/* ----------------------------------------------------------------
 * Dead letters keep no credential
 * ---------------------------------------------------------------- */

#define TOKEN "pcp-host-token-0f9e8d7c6b5a49382716"

/* A realize carrying hostApiToken that fails validation, and one whose
 * bytes are cut short: neither the DLQ record, nor any result, nor any row
 * of the database holds the token, and the record says what was
 * redacted. */
static void dead_lettered_realize_keeps_no_host_api_token(void **state)
{
    struct er_harness_run run;
    struct er_harness_run cut_run;
    struct er_harness_cmd c;
    struct er_harness_cmd cut;
    const struct er_harness_record *recs[2];
    struct er_buf buf;
    size_t buf_len;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_realize(&c, &run, h->dir);
    c.cmd.lease_id = "not-a-uuid";
    c.cmd.host_api_token.value = TOKEN;
    c.cmd.host_api_token.len = strlen(TOKEN);
    assert_int_equal(er_harness_send(h, &c.cmd), 0);

    er_harness_run_init(&cut_run);
    er_harness_cmd_realize(&cut, &cut_run, h->dir);
    cut.cmd.host_api_token.value = TOKEN;
    cut.cmd.host_api_token.len = strlen(TOKEN);
    er_buf_init(&buf, 1u << 20);
    assert_int_equal(er_codec_command_encode(&cut.cmd, &buf, NULL), 0);
    buf.len -= 5; /* inside the token */
    buf_len = buf.len;
    assert_int_equal(
        er_harness_produce(h, "commands", cut_run.run_id, buf.data, buf.len),
        0);
    er_buf_fini(&buf);

    assert_true(er_harness_wait_key(h, ER_HARNESS_DLQ, run.run_id, 1,
                                    ER_HARNESS_WAIT_MS));
    assert_true(er_harness_wait_key(h, ER_HARNESS_DLQ, cut_run.run_id, 1,
                                    ER_HARNESS_WAIT_MS));
    ER_HARNESS_NON_NULL(
        er_harness_wait_result(h, c.command_id, ER_HARNESS_WAIT_MS));
    ER_HARNESS_NON_NULL(
        er_harness_wait_result(h, cut.command_id, ER_HARNESS_WAIT_MS));

    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_DLQ, run.run_id, recs, 2), 1);
    ER_HARNESS_NON_NULL(recs[0]->hdr_redacted);
    ER_HARNESS_ASSERT_CONTAINS(recs[0]->hdr_redacted, "hostApiToken");
    /* The rest of the command is kept: it still decodes, without token. */
    ER_HARNESS_NON_NULL(recs[0]->json);
    ER_HARNESS_ASSERT_STR(recs[0]->json, "commandId", c.command_id);
    ER_HARNESS_ASSERT_STR(recs[0]->json, "command.leaseId", "not-a-uuid");
    ER_HARNESS_ASSERT_STR(recs[0]->json, "command.hostApiToken", NULL);

    assert_int_equal(
        er_harness_find_key(h, ER_HARNESS_DLQ, cut_run.run_id, recs, 2), 1);
    ER_HARNESS_NON_NULL(recs[0]->hdr_redacted);
    ER_HARNESS_ASSERT_CONTAINS(recs[0]->hdr_redacted, "withheld");
    /* The ids before the command body are kept. */
    assert_true(recs[0]->value_len > 100);
    assert_true(recs[0]->value_len < buf_len);

    assert_false(er_harness_topic_contains(h, ER_HARNESS_DLQ, TOKEN));
    assert_false(er_harness_topic_contains(h, ER_HARNESS_DLQ, "0f9e8d7c6b"));
    assert_false(
        er_harness_topic_contains(h, ER_HARNESS_RESULTS, "0f9e8d7c6b"));
    assert_int_equal(er_harness_pg_rows_containing(h->db_url, "0f9e8d7c6b"), 0);
    assert_false(er_harness_worker_log_contains(worker, "0f9e8d7c6b"));
}

/* ----------------------------------------------------------------
 * Child exit statuses and start-up
 * ---------------------------------------------------------------- */

/* The worker was started with SIGCHLD ignored: a provision command that
 * exits 3 on the ssh host is still reported as exit code 3 (with the
 * kernel reaping children itself it was reported as success). */
static void child_exit_status_survives_ignored_sigchld(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char remote[ER_HARNESS_PATH_MAX + 32];
    char local[ER_HARNESS_PATH_MAX + 32];
    const json_t *res;
    json_t *config;

    (void)state;
    er_harness_run_init(&run);
    snprintf(remote, sizeof(remote), "%s/sigchld", ssh->root);
    config = er_harness_ssh_config(ssh, remote, "per_lease");
    assert_int_equal(er_harness_ssh_env_insert(h, run.company_id, "SSH exit",
                                               config, env_id),
                     0);
    json_decref(config);
    snprintf(local, sizeof(local), "%s/ws-sigchld", h->dir);
    assert_int_equal(er_harness_ssh_plain_workspace(local), 0);

    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");

    er_harness_cmd_realize(&c, &run, local);
    c.cmd.runtime_overlay_json = "{\"provisionCommand\":\"exit 3\"}";
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "workspace_realization_failed");
    ER_HARNESS_ASSERT_CONTAINS(er_harness_json_str(res, "errorMessage"),
                               "Failed to provision workspace for environment "
                               "\"SSH exit\" (ssh): exit code 3");

    er_harness_cmd_release(&c, &run, ER_RELEASE_RELEASED);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
}

/* Without ENVRUN_KAFKA_BROKERS the production binary does not start an
 * in-process mock cluster: it exits 2 with one line saying how to run the
 * dev stack. */
static void worker_without_brokers_exits_2(void **state)
{
    char url[ER_HARNESS_URL_MAX + 32];
    char out_path[ER_HARNESS_PATH_MAX + 32];
    char *envp[] = { url, "PATH=/usr/bin:/bin", NULL };
    char *argv[] = { ER_BUILD_DIR "/envrun-worker", NULL };
    char *text;
    FILE *f;
    size_t len;
    pid_t pid;
    int status = 0;

    (void)state;
    snprintf(url, sizeof(url), "ENVRUN_DATABASE_URL=%s", h->db_url);
    snprintf(out_path, sizeof(out_path), "%s/no-brokers.err", h->dir);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen(out_path, "w", stderr) == NULL)
            _exit(126);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 2);
    f = fopen(out_path, "r");
    ER_HARNESS_NON_NULL(f);
    text = er_calloc(1, 4096);
    ER_HARNESS_NON_NULL(text);
    len = fread(text, 1, 4095, f);
    fclose(f);
    assert_true(len > 0);
    ER_HARNESS_ASSERT_CONTAINS(text, "ENVRUN_KAFKA_BROKERS");
    ER_HARNESS_ASSERT_CONTAINS(text, "envrunctl dev");
    /* One line. */
    assert_ptr_equal(strchr(text, '\n'), text + len - 1);
    er_free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(release_with_foreign_run_id_touches_nothing),
        cmocka_unit_test(realize_with_foreign_run_id_touches_nothing),
        cmocka_unit_test(command_id_of_other_company_gets_no_stored_result),
        cmocka_unit_test(
            command_id_recorded_before_migration_4_keeps_its_company),
        cmocka_unit_test(lease_ids_are_rfc9562_uuids),
        cmocka_unit_test(workspace_outside_roots_is_refused),
        cmocka_unit_test(dead_lettered_realize_keeps_no_host_api_token),
        cmocka_unit_test(child_exit_status_survives_ignored_sigchld),
        cmocka_unit_test(worker_without_brokers_exits_2),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
