/* lifecycle_test: the happy path of a run on the company's Local environment
 * (domain.md 3.1-3.5, 3.8, 4.1; contract.md 3-5) through a real worker
 * process: acquire, realize, release, a second release, and the race-safe
 * creation of the Local environment. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/support/harness.h"

#define LOCAL_DESCRIPTION \
    "Default execution environment for Paperclip runs on this machine."

static int teardown(void **state)
{
    int rc = er_harness_stop_workers(*state) ? 0 : -1;

    er_harness_destroy(*state);
    *state = NULL;
    return rc;
}

/* The first row of a query, as a new reference; fails the test if none. */
static json_t *one_row(const char *url, const char *sql, const char *param)
{
    json_t *rows = er_harness_pg_query(url, sql, 1, &param);
    json_t *row;

    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), 1);
    row = json_incref(json_array_get(rows, 0));
    json_decref(rows);
    return row;
}

/* The only record of topic with field == value. */
static const struct er_harness_record *only_record(struct er_harness *h,
                                                   enum er_harness_topic topic,
                                                   const char *field,
                                                   const char *value)
{
    const struct er_harness_record *rec = NULL;

    assert_int_equal(er_harness_find(h, topic, field, value, &rec, 1), 1);
    return rec;
}

/* The lease event of lease_id with the given version (exactly one). */
static const struct er_harness_record *
lease_event(struct er_harness *h, const char *lease_id, long long version)
{
    const struct er_harness_record *recs[16];
    const struct er_harness_record *found = NULL;
    size_t n;
    size_t i;

    n = er_harness_find(h, ER_HARNESS_LEASE_EVENTS, "leaseId", lease_id, recs,
                        16);
    for (i = 0; i < n && i < 16; i++) {
        const json_t *v = er_harness_json_at(recs[i]->json, "version");

        if (json_integer_value(v) == version) {
            assert_null(found);
            found = recs[i];
        }
    }
    ER_HARNESS_NON_NULL(found);
    ER_HARNESS_NON_NULL(found->key);
    assert_string_equal(found->key, lease_id);
    return found;
}

/* How many Local environments serve company $1: the company's own, or on
 * an instance-scoped schema the instance's. */
static const char *local_env_count_sql(const struct er_harness *h)
{
    return er_harness_is_instance_era(h)
               ? "SELECT count(*) FROM environments WHERE driver = 'local' "
                 "AND $1::text IS NOT NULL"
               : "SELECT count(*) FROM environments WHERE company_id = $1";
}

static void assert_acquire_details(const json_t *details, const char *env_id,
                                   const char *ews_id, const char *issue_id)
{
    ER_HARNESS_ASSERT_STR(details, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(details, "driver", "local");
    ER_HARNESS_ASSERT_STR(details, "leasePolicy", "ephemeral");
    ER_HARNESS_ASSERT_STR(details, "provider", "local");
    ER_HARNESS_ASSERT_STR(details, "executionWorkspaceId", ews_id);
    ER_HARNESS_ASSERT_STR(details, "issueId", issue_id);
}

static void lifecycle_acquire_realize_release_on_local(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd acq;
    struct er_harness_cmd rea;
    struct er_harness_cmd rel;
    struct er_harness_cmd rel2;
    char issue_id[37];
    char ews_id[37];
    char lease_id[37];
    char env_id[37];
    char summary[ER_HARNESS_PATH_MAX + 64];
    char mode[] = "isolated_workspace";
    const json_t *res;
    const struct er_harness_record *rec;
    json_t *body;
    json_t *row;
    json_t *details;
    json_t *meta;
    size_t lease_events;
    size_t activity_events;
    bool is_instance;

    h = er_harness_new("lifecycle_happy", 2, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    is_instance = er_harness_is_instance_era(h);
    w = er_harness_worker_start(h, NULL);
    ER_HARNESS_NON_NULL(w);

    er_harness_run_init(&run);
    er_uuid_v4(issue_id);
    er_uuid_v4(ews_id);

    /* acquire (domain.md 3.2) */
    er_harness_cmd_acquire(&acq, &run);
    acq.cmd.issue_id = issue_id;
    acq.cmd.execution_workspace_id = ews_id;
    acq.cmd.execution_workspace_mode = mode;
    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    res = er_harness_wait_result(h, acq.command_id, ER_HARNESS_FIRST_WAIT_MS);
    if (res == NULL)
        er_harness_worker_dump_log(w, 4000);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "commandId", acq.command_id);
    ER_HARNESS_ASSERT_STR(res, "companyId", run.company_id);
    ER_HARNESS_ASSERT_STR(res, "heartbeatRunId", run.run_id);
    ER_HARNESS_ASSERT_STR(res, "kind", "acquire");
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    ER_HARNESS_ASSERT_STR(res, "errorCode", NULL);
    ER_HARNESS_ASSERT_STR(res, "errorMessage", NULL);
    ER_HARNESS_ASSERT_STR(res, "driver", "local");
    ER_HARNESS_NON_NULL(er_harness_json_str(res, "leaseId"));
    ER_HARNESS_NON_NULL(er_harness_json_str(res, "environmentId"));
    snprintf(lease_id, sizeof(lease_id), "%s",
             er_harness_json_str(res, "leaseId"));
    snprintf(env_id, sizeof(env_id), "%s",
             er_harness_json_str(res, "environmentId"));

    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    ER_HARNESS_ASSERT_STR(body, "environment.id", env_id);
    /* An instance's environment has no company (Paperclip 2026.6 on). */
    ER_HARNESS_ASSERT_STR(body, "environment.companyId",
                          is_instance ? NULL : run.company_id);
    ER_HARNESS_ASSERT_STR(body, "environment.name", "Local");
    ER_HARNESS_ASSERT_STR(body, "environment.description", LOCAL_DESCRIPTION);
    ER_HARNESS_ASSERT_STR(body, "environment.driver", "local");
    ER_HARNESS_ASSERT_STR(body, "environment.status", "active");
    ER_HARNESS_ASSERT_JSON(body, "environment.config", "{}");
    ER_HARNESS_ASSERT_JSON(body, "environment.metadata",
                           "{\"defaultForCompany\":true,"
                           "\"managedByPaperclip\":true}");
    ER_HARNESS_ASSERT_STR(body, "lease.id", lease_id);
    ER_HARNESS_ASSERT_STR(body, "lease.companyId", run.company_id);
    ER_HARNESS_ASSERT_STR(body, "lease.environmentId", env_id);
    ER_HARNESS_ASSERT_STR(body, "lease.heartbeatRunId", run.run_id);
    ER_HARNESS_ASSERT_STR(body, "lease.issueId", issue_id);
    ER_HARNESS_ASSERT_STR(body, "lease.executionWorkspaceId", ews_id);
    ER_HARNESS_ASSERT_STR(body, "lease.status", "active");
    ER_HARNESS_ASSERT_STR(body, "lease.leasePolicy", "ephemeral");
    ER_HARNESS_ASSERT_STR(body, "lease.provider", "local");
    ER_HARNESS_ASSERT_STR(body, "lease.releasedAt", NULL);
    ER_HARNESS_ASSERT_STR(body, "lease.metadata.driver", "local");
    ER_HARNESS_ASSERT_STR(body, "lease.metadata.executionWorkspaceMode", mode);
    ER_HARNESS_ASSERT_STR(body, "leaseContext.executionWorkspaceId", ews_id);
    ER_HARNESS_ASSERT_STR(body, "leaseContext.executionWorkspaceMode", mode);
    ER_HARNESS_ASSERT_STR(body, "executionTransport", NULL);
    json_decref(body);

    /* Rows: environments, environment_leases, activity_log (2.2, 2.3, 3.8).
     */
    assert_int_equal(er_harness_pg_count(h->db_url, local_env_count_sql(h), 1,
                                         (const char *[]){ run.company_id }),
                     1);
    row = one_row(h->db_url,
                  is_instance
                      ? "SELECT id::text, name, description, driver, status, "
                        "config::text AS config, metadata::text AS metadata "
                        "FROM environments WHERE driver = 'local' AND "
                        "$1::text IS NOT NULL"
                      : "SELECT id::text, name, description, driver, status, "
                        "config::text AS config, metadata::text AS metadata "
                        "FROM environments WHERE company_id = $1",
                  run.company_id);
    ER_HARNESS_ASSERT_STR(row, "id", env_id);
    ER_HARNESS_ASSERT_STR(row, "name", "Local");
    ER_HARNESS_ASSERT_STR(row, "description", LOCAL_DESCRIPTION);
    ER_HARNESS_ASSERT_STR(row, "driver", "local");
    ER_HARNESS_ASSERT_STR(row, "status", "active");
    ER_HARNESS_ASSERT_STR(row, "config", "{}");
    meta = er_harness_json_parse_field(row, "metadata");
    ER_HARNESS_ASSERT_JSON(meta, "",
                           "{\"defaultForCompany\":true,"
                           "\"managedByPaperclip\":true}");
    json_decref(meta);
    json_decref(row);

    row = one_row(h->db_url,
                  "SELECT company_id::text, environment_id::text, "
                  "execution_workspace_id::text, issue_id::text, "
                  "heartbeat_run_id::text, status, lease_policy, provider, "
                  "provider_lease_id, released_at::text, failure_reason, "
                  "cleanup_status, metadata::text AS metadata "
                  "FROM environment_leases WHERE id = $1",
                  lease_id);
    ER_HARNESS_ASSERT_STR(row, "company_id", run.company_id);
    ER_HARNESS_ASSERT_STR(row, "environment_id", env_id);
    ER_HARNESS_ASSERT_STR(row, "execution_workspace_id", ews_id);
    ER_HARNESS_ASSERT_STR(row, "issue_id", issue_id);
    ER_HARNESS_ASSERT_STR(row, "heartbeat_run_id", run.run_id);
    ER_HARNESS_ASSERT_STR(row, "status", "active");
    ER_HARNESS_ASSERT_STR(row, "lease_policy", "ephemeral");
    ER_HARNESS_ASSERT_STR(row, "provider", "local");
    ER_HARNESS_ASSERT_STR(row, "provider_lease_id", NULL);
    ER_HARNESS_ASSERT_STR(row, "released_at", NULL);
    ER_HARNESS_ASSERT_STR(row, "failure_reason", NULL);
    ER_HARNESS_ASSERT_STR(row, "cleanup_status", NULL);
    meta = er_harness_json_parse_field(row, "metadata");
    ER_HARNESS_ASSERT_STR(meta, "driver", "local");
    ER_HARNESS_ASSERT_STR(meta, "executionWorkspaceMode", mode);
    json_decref(meta);
    json_decref(row);

    row = one_row(h->db_url,
                  "SELECT id::text, company_id::text, actor_type, actor_id, "
                  "action, entity_type, entity_id, agent_id::text, "
                  "run_id::text, details::text AS details "
                  "FROM activity_log WHERE entity_id = $1",
                  lease_id);
    ER_HARNESS_ASSERT_STR(row, "company_id", run.company_id);
    ER_HARNESS_ASSERT_STR(row, "action", "environment.lease_acquired");
    ER_HARNESS_ASSERT_STR(row, "entity_type", "environment_lease");
    ER_HARNESS_ASSERT_STR(row, "actor_type", "agent");
    ER_HARNESS_ASSERT_STR(row, "actor_id", run.agent_id);
    ER_HARNESS_ASSERT_STR(row, "agent_id", run.agent_id);
    ER_HARNESS_ASSERT_STR(row, "run_id", run.run_id);
    details = er_harness_json_parse_field(row, "details");
    ER_HARNESS_NON_NULL(details);
    assert_acquire_details(details, env_id, ews_id, issue_id);
    json_decref(details);

    /* Events: LeaseEvent v1 keyed by lease id, ActivityEvent keyed by
     * company id with the row's id (contract.md 3, 4). */
    assert_true(er_harness_wait_count(h, ER_HARNESS_LEASE_EVENTS, "leaseId",
                                      lease_id, 1, ER_HARNESS_WAIT_MS));
    rec = lease_event(h, lease_id, 1);
    ER_HARNESS_ASSERT_STR(rec->json, "status", "active");
    ER_HARNESS_ASSERT_STR(rec->json, "companyId", run.company_id);
    ER_HARNESS_ASSERT_STR(rec->json, "environmentId", env_id);
    ER_HARNESS_ASSERT_STR(rec->json, "heartbeatRunId", run.run_id);
    ER_HARNESS_ASSERT_STR(rec->json, "issueId", issue_id);
    ER_HARNESS_ASSERT_STR(rec->json, "executionWorkspaceId", ews_id);
    ER_HARNESS_ASSERT_STR(rec->json, "leasePolicy", "ephemeral");
    ER_HARNESS_ASSERT_STR(rec->json, "provider", "local");
    ER_HARNESS_ASSERT_STR(rec->json, "releasedAt", NULL);
    ER_HARNESS_NON_NULL(er_harness_json_str(rec->json, "eventId"));
    meta = er_harness_json_parse_field(rec->json, "metadataJson");
    ER_HARNESS_ASSERT_STR(meta, "driver", "local");
    json_decref(meta);

    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "entityId",
                                      lease_id, 1, ER_HARNESS_WAIT_MS));
    rec = only_record(h, ER_HARNESS_ACTIVITY, "entityId", lease_id);
    ER_HARNESS_NON_NULL(rec->key);
    assert_string_equal(rec->key, run.company_id);
    ER_HARNESS_ASSERT_STR(rec->json, "id", er_harness_json_str(row, "id"));
    ER_HARNESS_ASSERT_STR(rec->json, "companyId", run.company_id);
    ER_HARNESS_ASSERT_STR(rec->json, "action", "environment.lease_acquired");
    ER_HARNESS_ASSERT_STR(rec->json, "entityType", "environment_lease");
    ER_HARNESS_ASSERT_STR(rec->json, "actorType", "agent");
    ER_HARNESS_ASSERT_STR(rec->json, "actorId", run.agent_id);
    ER_HARNESS_ASSERT_STR(rec->json, "agentId", run.agent_id);
    ER_HARNESS_ASSERT_STR(rec->json, "runId", run.run_id);
    details = er_harness_json_parse_field(rec->json, "detailsJson");
    ER_HARNESS_NON_NULL(details);
    assert_acquire_details(details, env_id, ews_id, issue_id);
    json_decref(details);
    json_decref(row);

    /* realize (3.4, 4.1): leaseId null means the run's active lease. */
    er_harness_cmd_realize(&rea, &run, h->dir);
    rea.cmd.issue_id = issue_id;
    rea.cmd.execution_workspace_id = ews_id;
    assert_int_equal(er_harness_send(h, &rea.cmd), 0);
    res = er_harness_wait_result(h, rea.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "kind", "realize");
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    ER_HARNESS_ASSERT_STR(res, "errorCode", NULL);
    ER_HARNESS_ASSERT_STR(res, "leaseId", lease_id);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    snprintf(summary, sizeof(summary), "Local workspace realized at %s.",
             h->dir);
    ER_HARNESS_ASSERT_STR(body, "lease.id", lease_id);
    ER_HARNESS_ASSERT_STR(body, "lease.status", "active");
    ER_HARNESS_ASSERT_INT(body, "workspaceRealization.version", 1);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.transport", "local");
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.provider", "local");
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.environmentId", env_id);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.leaseId", lease_id);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.sync.strategy", "none");
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.local.path", h->dir);
    ER_HARNESS_ASSERT_STR(body, "workspaceRealization.summary", summary);
    ER_HARNESS_ASSERT_STR(body, "lease.metadata.workspaceRealization.summary",
                          summary);
    ER_HARNESS_ASSERT_STR(body, "executionTarget.kind", "local");
    ER_HARNESS_ASSERT_STR(body, "executionTarget.environmentId", env_id);
    ER_HARNESS_ASSERT_STR(body, "executionTarget.leaseId", lease_id);
    ER_HARNESS_ASSERT_STR(body, "bridge", NULL);
    json_decref(body);

    row = one_row(h->db_url,
                  "SELECT status, metadata::text AS metadata "
                  "FROM environment_leases WHERE id = $1",
                  lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "active");
    meta = er_harness_json_parse_field(row, "metadata");
    ER_HARNESS_ASSERT_STR(meta, "driver", "local");
    ER_HARNESS_ASSERT_STR(meta, "executionWorkspaceMode", mode);
    ER_HARNESS_ASSERT_INT(meta, "workspaceRealization.version", 1);
    ER_HARNESS_ASSERT_STR(meta, "workspaceRealization.local.path", h->dir);
    ER_HARNESS_ASSERT_STR(meta, "workspaceRealization.summary", summary);
    json_decref(meta);
    json_decref(row);

    assert_true(er_harness_wait_count(h, ER_HARNESS_LEASE_EVENTS, "leaseId",
                                      lease_id, 2, ER_HARNESS_WAIT_MS));
    rec = lease_event(h, lease_id, 2);
    ER_HARNESS_ASSERT_STR(rec->json, "status", "active");
    meta = er_harness_json_parse_field(rec->json, "metadataJson");
    ER_HARNESS_ASSERT_STR(meta, "workspaceRealization.summary", summary);
    json_decref(meta);
    /* Realize writes no activity (3.8 lists acquire and release only). */
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log "
                                         "WHERE entity_id = $1",
                                         1, (const char *[]){ lease_id }),
                     1);

    /* release (3.5) */
    er_harness_cmd_release(&rel, &run, ER_RELEASE_RELEASED);
    assert_int_equal(er_harness_send(h, &rel.cmd), 0);
    res = er_harness_wait_result(h, rel.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "kind", "release");
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    ER_HARNESS_ASSERT_STR(res, "errorCode", NULL);
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_NON_NULL(body);
    assert_int_equal(json_array_size(er_harness_json_at(body, "released")), 1);
    ER_HARNESS_ASSERT_STR(body, "released.0", lease_id);
    ER_HARNESS_ASSERT_JSON(body, "errors", "[]");
    json_decref(body);

    row = one_row(h->db_url,
                  "SELECT status, released_at IS NOT NULL AS has_released, "
                  "failure_reason, cleanup_status "
                  "FROM environment_leases WHERE id = $1",
                  lease_id);
    ER_HARNESS_ASSERT_STR(row, "status", "released");
    ER_HARNESS_ASSERT_STR(row, "has_released", "t");
    ER_HARNESS_ASSERT_STR(row, "failure_reason", NULL);
    ER_HARNESS_ASSERT_STR(row, "cleanup_status", NULL);
    json_decref(row);

    row = one_row(h->db_url,
                  "SELECT id::text, actor_type, actor_id, agent_id::text, "
                  "run_id::text, entity_type, details::text AS details "
                  "FROM activity_log WHERE entity_id = $1 "
                  "AND action = 'environment.lease_released'",
                  lease_id);
    ER_HARNESS_ASSERT_STR(row, "entity_type", "environment_lease");
    ER_HARNESS_ASSERT_STR(row, "actor_type", "agent");
    ER_HARNESS_ASSERT_STR(row, "actor_id", run.agent_id);
    ER_HARNESS_ASSERT_STR(row, "run_id", run.run_id);
    details = er_harness_json_parse_field(row, "details");
    ER_HARNESS_NON_NULL(details);
    assert_acquire_details(details, env_id, ews_id, issue_id);
    ER_HARNESS_ASSERT_STR(details, "status", "released");
    ER_HARNESS_ASSERT_STR(details, "cleanupStatus", NULL);
    ER_HARNESS_ASSERT_STR(details, "failureReason", NULL);
    json_decref(details);

    assert_true(er_harness_wait_count(h, ER_HARNESS_LEASE_EVENTS, "leaseId",
                                      lease_id, 3, ER_HARNESS_WAIT_MS));
    rec = lease_event(h, lease_id, 3);
    ER_HARNESS_ASSERT_STR(rec->json, "status", "released");
    assert_true(json_is_integer(er_harness_json_at(rec->json, "releasedAt")));
    assert_true(er_harness_wait_count(h, ER_HARNESS_ACTIVITY, "entityId",
                                      lease_id, 2, ER_HARNESS_WAIT_MS));
    rec = only_record(h, ER_HARNESS_ACTIVITY, "action",
                      "environment.lease_released");
    ER_HARNESS_ASSERT_STR(rec->json, "id", er_harness_json_str(row, "id"));
    assert_string_equal(rec->key, run.company_id);
    json_decref(row);

    /* A second release of the same run: ok, nothing released, no events. */
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    lease_events = er_harness_count(h, ER_HARNESS_LEASE_EVENTS);
    activity_events = er_harness_count(h, ER_HARNESS_ACTIVITY);
    er_harness_cmd_release(&rel2, &run, ER_RELEASE_RELEASED);
    assert_int_equal(er_harness_send(h, &rel2.cmd), 0);
    res = er_harness_wait_result(h, rel2.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    body = er_harness_json_parse_field(res, "resultJson");
    ER_HARNESS_ASSERT_JSON(body, "released", "[]");
    ER_HARNESS_ASSERT_JSON(body, "errors", "[]");
    json_decref(body);
    er_harness_poll(h, ER_HARNESS_QUIET_MS);
    assert_int_equal(er_harness_count(h, ER_HARNESS_LEASE_EVENTS),
                     lease_events);
    assert_int_equal(er_harness_count(h, ER_HARNESS_ACTIVITY), activity_events);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log "
                                         "WHERE entity_id = $1",
                                         1, (const char *[]){ lease_id }),
                     2);
    assert_int_equal(er_harness_count(h, ER_HARNESS_DLQ), 0);

    /* SIGTERM: a clean stop exits 0 (contract.md 1). */
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
}

/* Realize with a persisted execution workspace merges the request and the
 * record into its metadata (3.4 step 4, 2.7). */
static void lifecycle_realize_updates_execution_workspace(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd acq;
    struct er_harness_cmd rea;
    char ews_id[37];
    const json_t *res;
    json_t *rows;
    json_t *meta;

    h = er_harness_new("lifecycle_ews", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    w = er_harness_worker_start(h, NULL);
    ER_HARNESS_NON_NULL(w);
    er_harness_run_init(&run);
    er_uuid_v4(ews_id);

    /* A first run creates the tables; then the workspace row exists before
     * this run's acquire. */
    er_harness_cmd_acquire(&acq, &run);
    acq.cmd.execution_workspace_id = ews_id;
    acq.cmd.execution_workspace_mode = "shared_workspace";
    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    res = er_harness_wait_result(h, acq.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(er_harness_pg_exec(
                         h->db_url,
                         "INSERT INTO execution_workspaces (id, company_id, "
                         "project_id, mode, strategy_type, name, cwd, "
                         "metadata) VALUES ($1, $2, gen_random_uuid(), "
                         "'shared_workspace', 'project_primary', 'ws', $3, "
                         "'{\"keep\":1}')",
                         3, (const char *[]){ ews_id, run.company_id, h->dir }),
                     0);

    er_harness_cmd_realize(&rea, &run, h->dir);
    rea.cmd.execution_workspace_id = ews_id;
    assert_int_equal(er_harness_send(h, &rea.cmd), 0);
    res = er_harness_wait_result(h, rea.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");

    rows = er_harness_pg_query(h->db_url,
                               "SELECT metadata::text AS metadata FROM "
                               "execution_workspaces WHERE id = $1",
                               1, (const char *[]){ ews_id });
    ER_HARNESS_NON_NULL(rows);
    assert_int_equal(json_array_size(rows), 1);
    meta = er_harness_json_parse_field(json_array_get(rows, 0), "metadata");
    ER_HARNESS_NON_NULL(meta);
    ER_HARNESS_ASSERT_INT(meta, "keep", 1);
    ER_HARNESS_ASSERT_INT(meta, "workspaceRealization.version", 1);
    ER_HARNESS_ASSERT_STR(meta, "workspaceRealization.local.path", h->dir);
    ER_HARNESS_ASSERT_INT(meta, "workspaceRealizationRequest.version", 1);
    ER_HARNESS_ASSERT_STR(meta, "workspaceRealizationRequest.companyId",
                          run.company_id);
    ER_HARNESS_ASSERT_STR(meta, "workspaceRealizationRequest.heartbeatRunId",
                          run.run_id);
    ER_HARNESS_ASSERT_STR(meta, "workspaceRealizationRequest.source.localPath",
                          h->dir);
    json_decref(meta);
    json_decref(rows);
}

/* hostApiToken is never stored in clear, logged or published (contract.md
 * 4, 6): not in the worker's debug log, the output topics or any row. */
static void lifecycle_host_api_token_never_leaks(void **state)
{
    static const char *const env[] = { "ENVRUN_LOG_LEVEL=debug", NULL };
    const struct er_harness_worker_opts opts = { .env = env };
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd acq;
    struct er_harness_cmd rea;
    struct er_harness_cmd rel;
    char token[64];
    char uuid[37];
    const json_t *res;
    int t;

    h = er_harness_new("lifecycle_secret", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    w = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w);
    er_harness_run_init(&run);
    er_uuid_v4(uuid);
    snprintf(token, sizeof(token), "tok-%s", uuid);

    er_harness_cmd_acquire(&acq, &run);
    er_harness_cmd_realize(&rea, &run, h->dir);
    assert_int_equal(
        er_secret_set(&rea.cmd.host_api_token, token, strlen(token)), 0);
    er_harness_cmd_release(&rel, &run, ER_RELEASE_RELEASED);
    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    assert_int_equal(er_harness_send(h, &rea.cmd), 0);
    assert_int_equal(er_harness_send(h, &rel.cmd), 0);
    er_secret_fini(&rea.cmd.host_api_token);
    res = er_harness_wait_result(h, rel.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    ER_HARNESS_ASSERT_STR(er_harness_wait_result(h, rea.command_id, 0),
                          "outcome", "ok");
    assert_true(er_harness_wait_total(h, ER_HARNESS_LEASE_EVENTS, 3,
                                      ER_HARNESS_WAIT_MS));
    assert_true(
        er_harness_wait_total(h, ER_HARNESS_ACTIVITY, 2, ER_HARNESS_WAIT_MS));
    er_harness_poll(h, ER_HARNESS_QUIET_MS);

    /* The upstream's own command carries it; nothing else may. */
    assert_true(er_harness_topic_contains(h, ER_HARNESS_COMMANDS, token));
    for (t = 0; t < ER_HARNESS_TOPIC_CNT; t++) {
        if (t != ER_HARNESS_COMMANDS &&
            er_harness_topic_contains(h, (enum er_harness_topic)t, token))
            er_harness_fail(__FILE__, __LINE__, "token published on topic %d",
                            t);
    }
    assert_int_equal(er_harness_pg_rows_containing(h->db_url, token), 0);
    assert_int_equal(er_harness_worker_stop(w, SIGTERM, 15000), 0);
    assert_false(er_harness_worker_log_contains(w, token));
}

/* A release with status failed (run failed) or expired: the row gets the
 * status, released_at, and no failure reason (local never writes one); the
 * caller's reason goes only into the activity details (domain.md 2.5,
 * 3.5 step 4, 3.8). */
static void lifecycle_failed_and_expired_releases(void **state)
{
    static const enum er_release_status statuses[2] = { ER_RELEASE_FAILED,
                                                        ER_RELEASE_EXPIRED };
    static const char *const names[2] = { "failed", "expired" };
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_cmd acq;
    struct er_harness_cmd rel;
    char lease_id[37];
    char reason[] = "adapter exited with code 1";
    const json_t *res;
    const struct er_harness_record *rec;
    json_t *row;
    json_t *body;
    json_t *details;
    int i;

    h = er_harness_new("lifecycle_failed", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    w = er_harness_worker_start(h, NULL);
    ER_HARNESS_NON_NULL(w);

    for (i = 0; i < 2; i++) {
        er_harness_run_init(&run);
        er_harness_cmd_acquire(&acq, &run);
        assert_int_equal(er_harness_send(h, &acq.cmd), 0);
        res =
            er_harness_wait_result(h, acq.command_id, ER_HARNESS_FIRST_WAIT_MS);
        ER_HARNESS_NON_NULL(res);
        ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
        snprintf(lease_id, sizeof(lease_id), "%s",
                 er_harness_json_str(res, "leaseId"));

        er_harness_cmd_release(&rel, &run, statuses[i]);
        rel.cmd.failure_reason = reason;
        assert_int_equal(er_harness_send(h, &rel.cmd), 0);
        res = er_harness_wait_result(h, rel.command_id, ER_HARNESS_WAIT_MS);
        ER_HARNESS_NON_NULL(res);
        ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
        body = er_harness_json_parse_field(res, "resultJson");
        ER_HARNESS_ASSERT_STR(body, "released.0", lease_id);
        json_decref(body);

        row = one_row(h->db_url,
                      "SELECT status, released_at IS NOT NULL AS "
                      "has_released, failure_reason, cleanup_status "
                      "FROM environment_leases WHERE id = $1",
                      lease_id);
        ER_HARNESS_ASSERT_STR(row, "status", names[i]);
        ER_HARNESS_ASSERT_STR(row, "has_released", "t");
        ER_HARNESS_ASSERT_STR(row, "failure_reason", NULL);
        ER_HARNESS_ASSERT_STR(row, "cleanup_status", NULL);
        json_decref(row);

        row = one_row(h->db_url,
                      "SELECT details::text AS details FROM activity_log "
                      "WHERE entity_id = $1 "
                      "AND action = 'environment.lease_released'",
                      lease_id);
        details = er_harness_json_parse_field(row, "details");
        ER_HARNESS_ASSERT_STR(details, "status", names[i]);
        ER_HARNESS_ASSERT_STR(details, "failureReason", reason);
        json_decref(details);
        json_decref(row);

        assert_true(er_harness_wait_count(h, ER_HARNESS_LEASE_EVENTS, "leaseId",
                                          lease_id, 2, ER_HARNESS_WAIT_MS));
        rec = lease_event(h, lease_id, 2);
        ER_HARNESS_ASSERT_STR(rec->json, "status", names[i]);
        ER_HARNESS_ASSERT_STR(rec->json, "failureReason", NULL);
    }
}

#define RACE_RUNS 8

/* ensureLocalEnvironment is race-safe (2.2): runs of one company acquiring
 * the Local environment at once produce one environments row. On an
 * instance-scoped schema runs of two companies do: Local is the
 * instance's. */
static void
lifecycle_concurrent_acquires_make_one_local_environment(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run runs[RACE_RUNS];
    struct er_harness_cmd cmds[RACE_RUNS];
    const char *ids[RACE_RUNS];
    const char *env_id = NULL;
    const json_t *res;
    bool is_instance;
    int i;

    h = er_harness_new("lifecycle_race", 4, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    is_instance = er_harness_is_instance_era(h);
    er_harness_run_init(&runs[0]);
    er_harness_run_init(&runs[1]);
    for (i = 2; i < RACE_RUNS; i++)
        er_harness_run_init_same_company(&runs[i],
                                         &runs[is_instance ? i % 2 : 0]);
    if (!is_instance)
        er_harness_run_init_same_company(&runs[1], &runs[0]);
    /* Queue every command before the worker starts so its first batch holds
     * them all and they run in parallel. */
    for (i = 0; i < RACE_RUNS; i++) {
        er_harness_cmd_acquire(&cmds[i], &runs[i]);
        ids[i] = cmds[i].command_id;
        assert_int_equal(er_harness_send(h, &cmds[i].cmd), 0);
    }
    assert_int_equal(er_harness_flush(h), 0);
    w = er_harness_worker_start(
        h, &(struct er_harness_worker_opts){ .concurrency = RACE_RUNS });
    ER_HARNESS_NON_NULL(w);

    assert_true(
        er_harness_wait_results(h, ids, RACE_RUNS, ER_HARNESS_FIRST_WAIT_MS));
    for (i = 0; i < RACE_RUNS; i++) {
        res = er_harness_wait_result(h, ids[i], 0);
        ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
        if (env_id == NULL)
            env_id = er_harness_json_str(res, "environmentId");
        ER_HARNESS_NON_NULL(env_id);
        ER_HARNESS_ASSERT_STR(res, "environmentId", env_id);
    }
    assert_int_equal(
        er_harness_pg_count(h->db_url, local_env_count_sql(h), 1,
                            (const char *[]){ runs[0].company_id }),
        1);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM environments", 0,
                                         NULL),
                     1);
    assert_int_equal(
        er_harness_pg_count(h->db_url,
                            "SELECT count(*) FROM environment_leases "
                            "WHERE status = 'active'",
                            0, NULL),
        RACE_RUNS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(lifecycle_acquire_realize_release_on_local,
                                  teardown),
        cmocka_unit_test_teardown(lifecycle_realize_updates_execution_workspace,
                                  teardown),
        cmocka_unit_test_teardown(
            lifecycle_concurrent_acquires_make_one_local_environment, teardown),
        cmocka_unit_test_teardown(lifecycle_host_api_token_never_leaks,
                                  teardown),
        cmocka_unit_test_teardown(lifecycle_failed_and_expired_releases,
                                  teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
