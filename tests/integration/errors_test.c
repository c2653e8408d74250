/* errors_test: every error code reachable with the local driver, with the
 * exact message shapes of domain.md 3.0 and the result fields of
 * contract.md 4, against one worker shared by the cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

static struct er_harness *h;
static struct er_harness_worker *worker;

/* Start the worker and let it migrate: its first result means the tables
 * exist, so cases can insert rows. */
static int group_setup(void **state)
{
    (void)state;
    h = er_harness_new("errors", 2, NULL);
    if (h == NULL)
        return -1;
    worker = er_harness_worker_start_warm(h, NULL);
    return worker != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    int rc = er_harness_stop_workers(h) ? 0 : -1;

    (void)state;
    er_harness_destroy(h);
    h = NULL;
    return rc;
}

/* Send and wait for the result of a command. */
static const json_t *roundtrip(struct er_harness_cmd *c)
{
    const json_t *res;

    assert_int_equal(er_harness_send(h, &c->cmd), 0);
    res = er_harness_wait_result(h, c->command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "commandId", c->command_id);
    ER_HARNESS_ASSERT_STR(res, "companyId", c->cmd.company_id);
    return res;
}

static void assert_error(const json_t *res, const char *outcome,
                         const char *code, const char *message)
{
    ER_HARNESS_ASSERT_STR(res, "outcome", outcome);
    ER_HARNESS_ASSERT_STR(res, "errorCode", code);
    if (message != NULL)
        ER_HARNESS_ASSERT_STR(res, "errorMessage", message);
}

static long long lease_count(const char *company_id)
{
    return er_harness_pg_count(h->db_url,
                               "SELECT count(*) FROM environment_leases "
                               "WHERE company_id = $1",
                               1, (const char *[]){ company_id });
}

static void errors_unknown_environment_is_not_found(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char msg[128];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_uuid_v4(env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip(&c);
    snprintf(msg, sizeof(msg), "Environment \"%s\" not found.", env_id);
    ER_HARNESS_ASSERT_STR(res, "kind", "acquire");
    assert_error(res, "error", "environment_not_found", msg);
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(res, "leaseId", NULL);
    assert_int_equal(lease_count(run.company_id), 0);
}

static void errors_environment_of_another_company_is_not_found(void **state)
{
    struct er_harness_run run;
    struct er_harness_run other;
    struct er_harness_cmd c;
    char env_id[37];
    char msg[160];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_run_init(&other);
    er_harness_env_insert(h, other.company_id, "Theirs", "local", "active",
                          "{}", env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip(&c);
    snprintf(msg, sizeof(msg),
             "Environment \"%s\" does not belong to this company.", env_id);
    assert_error(res, "error", "environment_not_found", msg);
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    assert_int_equal(lease_count(run.company_id), 0);
    assert_int_equal(lease_count(other.company_id), 0);
}

static void errors_archived_environment_is_inactive(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, "Old box", "ssh", "archived", "{}",
                          env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip(&c);
    assert_error(res, "error", "environment_inactive",
                 "Environment \"Old box\" is not active (status: archived).");
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(res, "driver", "ssh");
    assert_int_equal(lease_count(run.company_id), 0);
}

/* The company's Local environment archived by the control plane: the
 * default selection finds it and reports it inactive. */
static void errors_archived_local_environment_is_inactive(void **state)
{
    struct er_harness_run run;
    struct er_harness_run run2;
    struct er_harness_cmd c;
    struct er_harness_cmd rel;
    char env_id[37];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_run_init_same_company(&run2, &run);
    er_harness_cmd_acquire(&c, &run);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(env_id, sizeof(env_id), "%s",
             er_harness_json_str(res, "environmentId"));
    er_harness_cmd_release(&rel, &run, ER_RELEASE_RELEASED);
    res = roundtrip(&rel);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");

    assert_int_equal(er_harness_pg_exec(h->db_url,
                                        "UPDATE environments SET status = "
                                        "'archived' WHERE id = $1",
                                        1, (const char *[]){ env_id }),
                     0);
    er_harness_cmd_acquire(&c, &run2);
    res = roundtrip(&c);
    assert_error(res, "error", "environment_inactive",
                 "Environment \"Local\" is not active (status: archived).");
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(res, "driver", "local");
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM environments "
                                         "WHERE company_id = $1",
                                         1, (const char *[]){ run.company_id }),
                     1);
}

/* Drivers the worker cannot acquire with (no config, or not built): the
 * driver's failure is wrapped as lease_acquire_failed (3.2 step 2). */
static void check_acquire_failed(const char *driver, const char *name,
                                 const char *config)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char env_id[37];
    char prefix[160];
    const char *msg;
    const json_t *res;

    er_harness_run_init(&run);
    er_harness_env_insert(h, run.company_id, name, driver, "active", config,
                          env_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = env_id;
    res = roundtrip(&c);
    assert_error(res, "error", "lease_acquire_failed", NULL);
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(res, "driver", driver);
    snprintf(prefix, sizeof(prefix),
             "Failed to acquire lease for environment \"%s\" (%s): ", name,
             driver);
    msg = er_harness_json_str(res, "errorMessage");
    ER_HARNESS_NON_NULL(msg);
    if (strncmp(msg, prefix, strlen(prefix)) != 0 ||
        strlen(msg) == strlen(prefix))
        er_harness_fail(__FILE__, __LINE__,
                        "message \"%s\" does not start with \"%s\" and a "
                        "cause",
                        msg, prefix);
    assert_int_equal(lease_count(run.company_id), 0);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log "
                                         "WHERE company_id = $1",
                                         1, (const char *[]){ run.company_id }),
                     0);
}

static void errors_plugin_driver_acquire_fails(void **state)
{
    (void)state;
    check_acquire_failed("plugin", "Plugin env", "{}");
}

static void errors_ssh_without_config_acquire_fails(void **state)
{
    (void)state;
    check_acquire_failed("ssh", "SSH env", "{}");
}

/* Two runs, one execution workspace: the second is deferred (3.3.1). */
static void errors_same_workspace_second_run_is_deferred(void **state)
{
    struct er_harness_run run;
    struct er_harness_run run2;
    struct er_harness_cmd c;
    char ews_id[37];
    char env_id[37];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_run_init_same_company(&run2, &run);
    er_uuid_v4(ews_id);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.execution_workspace_id = ews_id;
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(env_id, sizeof(env_id), "%s",
             er_harness_json_str(res, "environmentId"));

    er_harness_cmd_acquire(&c, &run2);
    c.cmd.execution_workspace_id = ews_id;
    res = roundtrip(&c);
    assert_error(res, "deferred", "lease_conflict",
                 "Execution workspace for environment \"Local\" is already "
                 "leased by another active run; deferring.");
    ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(res, "leaseId", NULL);
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM environment_leases "
                            "WHERE heartbeat_run_id = $1",
                            1, (const char *[]){ run2.run_id }),
        0);
}

static void errors_realize_without_active_lease_fails(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_realize(&c, &run, h->dir);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "kind", "realize");
    assert_error(res, "error", "workspace_realization_failed", NULL);
    ER_HARNESS_NON_NULL(er_harness_json_str(res, "errorMessage"));
}

static void errors_realize_of_released_lease_fails(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    char lease_id[37];
    const json_t *res;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(res, "leaseId"));
    er_harness_cmd_release(&c, &run, ER_RELEASE_RELEASED);
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");

    /* By the run (no active lease left) and by the released lease's id. */
    er_harness_cmd_realize(&c, &run, h->dir);
    res = roundtrip(&c);
    assert_error(res, "error", "workspace_realization_failed", NULL);
    er_harness_cmd_realize(&c, &run, h->dir);
    c.cmd.lease_id = lease_id;
    res = roundtrip(&c);
    assert_error(res, "error", "workspace_realization_failed", NULL);
    ER_HARNESS_NON_NULL(er_harness_json_str(res, "errorMessage"));
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE id = $1 "
                                         "AND status = 'released'",
                                         1, (const char *[]){ lease_id }),
                     1);
}

/* A field that fails validation: an invalid_command result for the
 * readable command id, and the bytes on the DLQ (contract.md 3). */
static void errors_bad_uuid_is_invalid_command(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    const json_t *res;
    const char *msg;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.issue_id = "not-a-uuid";
    res = roundtrip(&c);
    assert_error(res, "error", "invalid_command", NULL);
    msg = er_harness_json_str(res, "errorMessage");
    ER_HARNESS_NON_NULL(msg);
    if (strstr(msg, "issueId") == NULL)
        er_harness_fail(__FILE__, __LINE__,
                        "message \"%s\" does not name issueId", msg);
    assert_true(er_harness_wait_count(h, ER_HARNESS_DLQ, "commandId",
                                      c.command_id, 1, ER_HARNESS_WAIT_MS));
    assert_int_equal(lease_count(run.company_id), 0);
}

/* An empty selectedEnvironmentId means the Local environment (contract.md
 * 4, AcquireCommand). */
static void errors_empty_selection_means_local(void **state)
{
    struct er_harness_run run;
    struct er_harness_cmd c;
    const json_t *res;
    json_t *body;

    (void)state;
    er_harness_run_init(&run);
    er_harness_cmd_acquire(&c, &run);
    c.cmd.selected_environment_id = "";
    res = roundtrip(&c);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    ER_HARNESS_ASSERT_STR(res, "driver", "local");
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_STR(body, "environment.name", "Local");
    json_decref(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(errors_unknown_environment_is_not_found),
        cmocka_unit_test(errors_environment_of_another_company_is_not_found),
        cmocka_unit_test(errors_archived_environment_is_inactive),
        cmocka_unit_test(errors_archived_local_environment_is_inactive),
        cmocka_unit_test(errors_plugin_driver_acquire_fails),
        cmocka_unit_test(errors_ssh_without_config_acquire_fails),
        cmocka_unit_test(errors_same_workspace_second_run_is_deferred),
        cmocka_unit_test(errors_realize_without_active_lease_fails),
        cmocka_unit_test(errors_realize_of_released_lease_fails),
        cmocka_unit_test(errors_bad_uuid_is_invalid_command),
        cmocka_unit_test(errors_empty_selection_means_local),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
