/* migrations_test: the worker's start-up migration (contract.md 5): on an
 * empty database it creates Paperclip's tables with Paperclip's columns,
 * types and indexes (domain.md 2.2, 2.3, 2.8) and the schema envrun; a
 * second start and two concurrent starts are safe; on a database that
 * already has the control plane's tables it adds only the schema envrun and
 * works with their foreign keys. */
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

static int teardown(void **state)
{
    int rc = er_harness_stop_workers(*state) ? 0 : -1;

    er_harness_destroy(*state);
    *state = NULL;
    return rc;
}

struct column {
    const char *table;
    const char *name;
    const char *type; /* information_schema data_type */
    const char *is_nullable;
    const char *default_has; /* substring of column_default; NULL: none */
};

#define TSTZ "timestamp with time zone"

/* Paperclip's columns (domain.md 2.2, 2.3, 2.8), all of them for these
 * three tables. */
static const struct column columns[] = {
    { "environments", "id", "uuid", "NO", NULL },
    { "environments", "company_id", "uuid", "NO", NULL },
    { "environments", "name", "text", "NO", NULL },
    { "environments", "description", "text", "YES", NULL },
    { "environments", "driver", "text", "NO", "'local'" },
    { "environments", "status", "text", "NO", "'active'" },
    { "environments", "config", "jsonb", "NO", "'{}'" },
    { "environments", "metadata", "jsonb", "YES", NULL },
    { "environments", "created_at", TSTZ, "NO", "now()" },
    { "environments", "updated_at", TSTZ, "NO", "now()" },
    { "environment_leases", "id", "uuid", "NO", NULL },
    { "environment_leases", "company_id", "uuid", "NO", NULL },
    { "environment_leases", "environment_id", "uuid", "NO", NULL },
    { "environment_leases", "execution_workspace_id", "uuid", "YES", NULL },
    { "environment_leases", "issue_id", "uuid", "YES", NULL },
    { "environment_leases", "heartbeat_run_id", "uuid", "YES", NULL },
    { "environment_leases", "status", "text", "NO", "'active'" },
    { "environment_leases", "lease_policy", "text", "NO", "'ephemeral'" },
    { "environment_leases", "provider", "text", "YES", NULL },
    { "environment_leases", "provider_lease_id", "text", "YES", NULL },
    { "environment_leases", "acquired_at", TSTZ, "NO", "now()" },
    { "environment_leases", "last_used_at", TSTZ, "NO", "now()" },
    { "environment_leases", "expires_at", TSTZ, "YES", NULL },
    { "environment_leases", "released_at", TSTZ, "YES", NULL },
    { "environment_leases", "failure_reason", "text", "YES", NULL },
    { "environment_leases", "cleanup_status", "text", "YES", NULL },
    { "environment_leases", "metadata", "jsonb", "YES", NULL },
    { "environment_leases", "created_at", TSTZ, "NO", "now()" },
    { "environment_leases", "updated_at", TSTZ, "NO", "now()" },
    { "activity_log", "id", "uuid", "NO", NULL },
    { "activity_log", "company_id", "uuid", "NO", NULL },
    { "activity_log", "actor_type", "text", "NO", "'system'" },
    { "activity_log", "actor_id", "text", "NO", NULL },
    { "activity_log", "action", "text", "NO", NULL },
    { "activity_log", "entity_type", "text", "NO", NULL },
    { "activity_log", "entity_id", "text", "NO", NULL },
    { "activity_log", "agent_id", "uuid", "YES", NULL },
    { "activity_log", "run_id", "uuid", "YES", NULL },
    { "activity_log", "details", "jsonb", "YES", NULL },
    { "activity_log", "created_at", TSTZ, "NO", "now()" },
};

struct index {
    const char *table;
    const char *name;
    const char *def_has; /* substring of pg_indexes.indexdef */
};

static const struct index indexes[] = {
    { "environments", "environments_pkey", "UNIQUE INDEX" },
    { "environments", "environments_company_status_idx",
      "(company_id, status)" },
    { "environments", "environments_company_driver_idx",
      "UNIQUE INDEX environments_company_driver_idx ON public.environments "
      "USING btree (company_id, driver) WHERE (driver = 'local'::text)" },
    { "environments", "environments_company_name_idx", "(company_id, name)" },
    { "environment_leases", "environment_leases_pkey", "UNIQUE INDEX" },
    { "environment_leases", "environment_leases_company_environment_status_idx",
      "(company_id, environment_id, status)" },
    { "environment_leases",
      "environment_leases_company_execution_workspace_idx",
      "(company_id, execution_workspace_id)" },
    { "environment_leases", "environment_leases_company_issue_idx",
      "(company_id, issue_id)" },
    { "environment_leases", "environment_leases_heartbeat_run_idx",
      "(heartbeat_run_id)" },
    { "environment_leases", "environment_leases_company_last_used_idx",
      "(company_id, last_used_at)" },
    { "environment_leases", "environment_leases_provider_lease_idx",
      "(provider_lease_id)" },
    { "activity_log", "activity_log_pkey", "UNIQUE INDEX" },
    { "activity_log", "activity_log_company_created_idx",
      "(company_id, created_at)" },
    { "activity_log", "activity_log_run_id_idx", "(run_id)" },
    { "activity_log", "activity_log_entity_type_id_idx",
      "(entity_type, entity_id)" },
};

/* Everything about the schemas public and envrun, one sorted text. */
static char *schema_snapshot(const char *url)
{
    json_t *rows;
    const char *text;
    char *copy;

    rows = er_harness_pg_query(
        url,
        "SELECT coalesce(string_agg(x, E'\\n' ORDER BY x), '') AS s FROM ("
        " SELECT format('col %s.%s.%s %s %s %s', table_schema, table_name,"
        "  column_name, data_type, is_nullable, column_default) AS x"
        "  FROM information_schema.columns"
        "  WHERE table_schema IN ('public', 'envrun')"
        " UNION ALL SELECT format('idx %s.%s %s', schemaname, indexname,"
        "  indexdef) FROM pg_indexes"
        "  WHERE schemaname IN ('public', 'envrun')"
        " UNION ALL SELECT format('con %s %s %s', conrelid::regclass, conname,"
        "  pg_get_constraintdef(oid)) FROM pg_constraint"
        "  WHERE connamespace IN (SELECT oid FROM pg_namespace"
        "   WHERE nspname IN ('public', 'envrun'))"
        ") s",
        0, NULL);
    ER_HARNESS_NON_NULL(rows);
    text = er_harness_json_str(json_array_get(rows, 0), "s");
    ER_HARNESS_NON_NULL(text);
    copy = er_strdup(text);
    json_decref(rows);
    return copy;
}

/* Public tables only (what the control plane owns). */
static char *public_snapshot(const char *url)
{
    json_t *rows;
    const char *text;
    char *copy;

    rows = er_harness_pg_query(
        url,
        "SELECT coalesce(string_agg(x, E'\\n' ORDER BY x), '') AS s FROM ("
        " SELECT format('col %s.%s %s %s %s', table_name, column_name,"
        "  data_type, is_nullable, column_default) AS x"
        "  FROM information_schema.columns WHERE table_schema = 'public'"
        " UNION ALL SELECT format('idx %s %s', indexname, indexdef)"
        "  FROM pg_indexes WHERE schemaname = 'public'"
        " UNION ALL SELECT format('con %s %s %s', conrelid::regclass, conname,"
        "  pg_get_constraintdef(oid)) FROM pg_constraint"
        "  WHERE connamespace = 'public'::regnamespace"
        " UNION ALL SELECT format('tab %s', tablename) FROM pg_tables"
        "  WHERE schemaname = 'public'"
        ") s",
        0, NULL);
    ER_HARNESS_NON_NULL(rows);
    text = er_harness_json_str(json_array_get(rows, 0), "s");
    ER_HARNESS_NON_NULL(text);
    copy = er_strdup(text);
    json_decref(rows);
    return copy;
}

/* Paperclip's tables as domain.md gives them, and the schema envrun. */
static void check_schema(const char *url)
{
    const char *tables[] = { "environments", "environment_leases",
                             "activity_log" };
    size_t i;

    for (i = 0; i < sizeof(columns) / sizeof(columns[0]); i++) {
        const struct column *c = &columns[i];
        json_t *rows = er_harness_pg_query(
            url,
            "SELECT data_type, is_nullable, column_default FROM "
            "information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = $1 AND column_name = $2",
            2, (const char *[]){ c->table, c->name });
        const json_t *row;
        const char *def;

        ER_HARNESS_NON_NULL(rows);
        if (json_array_size(rows) != 1)
            er_harness_fail(__FILE__, __LINE__, "column %s.%s missing",
                            c->table, c->name);
        row = json_array_get(rows, 0);
        ER_HARNESS_ASSERT_STR(row, "data_type", c->type);
        ER_HARNESS_ASSERT_STR(row, "is_nullable", c->is_nullable);
        def = er_harness_json_str(row, "column_default");
        if (c->default_has != NULL &&
            (def == NULL || strstr(def, c->default_has) == NULL))
            er_harness_fail(__FILE__, __LINE__,
                            "column %s.%s default \"%s\" lacks %s", c->table,
                            c->name, def != NULL ? def : "(none)",
                            c->default_has);
        json_decref(rows);
    }
    /* No other columns in these three tables. */
    for (i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        size_t want = 0;
        size_t j;

        for (j = 0; j < sizeof(columns) / sizeof(columns[0]); j++)
            want += strcmp(columns[j].table, tables[i]) == 0;
        assert_int_equal(er_harness_pg_count(
                             url,
                             "SELECT count(*) FROM information_schema.columns "
                             "WHERE table_schema = 'public' "
                             "AND table_name = $1",
                             1, (const char *[]){ tables[i] }),
                         want);
    }
    for (i = 0; i < sizeof(indexes) / sizeof(indexes[0]); i++) {
        const struct index *x = &indexes[i];
        json_t *rows = er_harness_pg_query(
            url,
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND tablename = $1 AND indexname = $2",
            2, (const char *[]){ x->table, x->name });
        const char *def;

        ER_HARNESS_NON_NULL(rows);
        if (json_array_size(rows) != 1)
            er_harness_fail(__FILE__, __LINE__, "index %s on %s missing",
                            x->name, x->table);
        def = er_harness_json_str(json_array_get(rows, 0), "indexdef");
        ER_HARNESS_NON_NULL(def);
        if (strstr(def, x->def_has) == NULL)
            er_harness_fail(__FILE__, __LINE__, "index %s is \"%s\", want %s",
                            x->name, def, x->def_has);
        json_decref(rows);
    }
    /* execution_workspaces: the worker merges into its metadata (2.7). */
    assert_int_equal(
        er_harness_pg_count(url,
                            "SELECT count(*) FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND table_name = "
                            "'execution_workspaces' AND column_name IN ('id', "
                            "'company_id', 'metadata', 'config', 'mode')",
                            0, NULL),
        5);
    assert_int_equal(er_harness_pg_count(url,
                                         "SELECT count(*) FROM pg_namespace "
                                         "WHERE nspname = 'envrun'",
                                         0, NULL),
                     1);
}

/* librdkafka 2.0.2's mock keeps a member that left cleanly in the group
 * until its session times out (45 s), so a worker started after another
 * one stopped joins a group of its own. */
static const char *const second_group_env[] = {
    "ENVRUN_KAFKA_GROUP=envrun-workers-second",
    NULL,
};

/* Start a worker on url, wait until ready (migrated). */
static struct er_harness_worker *start_ready(struct er_harness *h,
                                             const char *url, bool is_second)
{
    const struct er_harness_worker_opts opts = {
        .has_http = true,
        .db_url = url,
        .env = is_second ? second_group_env : NULL,
    };
    struct er_harness_worker *w = er_harness_worker_start(h, &opts);

    ER_HARNESS_NON_NULL(w);
    if (!er_harness_worker_wait_ready(w, ER_HARNESS_FIRST_WAIT_MS)) {
        er_harness_worker_dump_log(w, 4000);
        er_harness_fail(__FILE__, __LINE__, "worker not ready on %s", url);
    }
    return w;
}

static void stop_clean(struct er_harness_worker *w)
{
    int rc = er_harness_worker_stop(w, SIGTERM, 15000);

    if (rc != 0 || er_harness_worker_log_contains(w, "\"level\":\"error\"")) {
        er_harness_worker_dump_log(w, 4000);
        er_harness_fail(__FILE__, __LINE__, "worker exit %d or errors logged",
                        rc);
    }
}

static void migrations_fresh_database_twice(void **state)
{
    struct er_harness *h;
    char *first;
    char *second;

    h = er_harness_new("migrations_fresh", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    stop_clean(start_ready(h, h->db_url, false));
    check_schema(h->db_url);
    first = schema_snapshot(h->db_url);

    stop_clean(start_ready(h, h->db_url, true));
    check_schema(h->db_url);
    second = schema_snapshot(h->db_url);
    assert_string_equal(first, second);
    er_free(first);
    er_free(second);
}

static void migrations_two_workers_at_once(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w[2];
    char url[ER_HARNESS_URL_MAX];
    const struct er_harness_worker_opts opts = { .has_http = true,
                                                 .db_url = url };
    int i;

    h = er_harness_new("migrations_two", 2, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    assert_int_equal(er_harness_db_new(h, "pair", url, sizeof(url)), 0);
    w[0] = er_harness_worker_start(h, &opts);
    w[1] = er_harness_worker_start(h, &opts);
    ER_HARNESS_NON_NULL(w[0]);
    ER_HARNESS_NON_NULL(w[1]);
    for (i = 0; i < 2; i++) {
        if (!er_harness_worker_wait_ready(w[i], ER_HARNESS_FIRST_WAIT_MS)) {
            er_harness_worker_dump_log(w[i], 4000);
            er_harness_fail(__FILE__, __LINE__, "worker %d not ready", i);
        }
    }
    for (i = 0; i < 2; i++)
        stop_clean(w[i]);
    check_schema(url);
}

/* A control-plane database: Paperclip's tables with the foreign keys and
 * extra columns a full deployment has (domain.md 2.2, 2.3, 2.8). */
static const char control_plane_sql[] =
    "CREATE TABLE companies (id uuid PRIMARY KEY, name text NOT NULL);"
    "CREATE TABLE agents (id uuid PRIMARY KEY,"
    " company_id uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,"
    " default_environment_id uuid);"
    "CREATE TABLE heartbeat_runs (id uuid PRIMARY KEY,"
    " company_id uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,"
    " agent_id uuid REFERENCES agents(id), status text NOT NULL);"
    "CREATE TABLE issues (id uuid PRIMARY KEY,"
    " company_id uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE);"
    "CREATE TABLE environments ("
    " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
    " company_id uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,"
    " name text NOT NULL, description text,"
    " driver text NOT NULL DEFAULT 'local',"
    " status text NOT NULL DEFAULT 'active',"
    " config jsonb NOT NULL DEFAULT '{}'::jsonb, metadata jsonb,"
    " pool_key text,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX environments_company_status_idx"
    " ON environments (company_id, status);"
    "CREATE UNIQUE INDEX environments_company_driver_idx"
    " ON environments (company_id, driver) WHERE driver = 'local';"
    "CREATE TABLE execution_workspaces ("
    " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
    " company_id uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,"
    " project_id uuid, source_issue_id uuid REFERENCES issues(id),"
    " mode text, name text, status text NOT NULL DEFAULT 'active', cwd text,"
    " config jsonb, metadata jsonb, retention_days integer,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE environment_leases ("
    " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
    " company_id uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,"
    " environment_id uuid NOT NULL REFERENCES environments(id)"
    "  ON DELETE CASCADE,"
    " execution_workspace_id uuid REFERENCES execution_workspaces(id)"
    "  ON DELETE SET NULL,"
    " issue_id uuid REFERENCES issues(id) ON DELETE SET NULL,"
    " heartbeat_run_id uuid REFERENCES heartbeat_runs(id) ON DELETE SET NULL,"
    " status text NOT NULL DEFAULT 'active',"
    " lease_policy text NOT NULL DEFAULT 'ephemeral',"
    " provider text, provider_lease_id text,"
    " acquired_at timestamptz NOT NULL DEFAULT now(),"
    " last_used_at timestamptz NOT NULL DEFAULT now(),"
    " expires_at timestamptz, released_at timestamptz, failure_reason text,"
    " cleanup_status text, metadata jsonb,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX environment_leases_company_environment_status_idx"
    " ON environment_leases (company_id, environment_id, status);"
    "CREATE INDEX environment_leases_heartbeat_run_idx"
    " ON environment_leases (heartbeat_run_id);"
    "CREATE TABLE activity_log ("
    " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
    " company_id uuid NOT NULL REFERENCES companies(id),"
    " actor_type text NOT NULL DEFAULT 'system', actor_id text NOT NULL,"
    " action text NOT NULL, entity_type text NOT NULL,"
    " entity_id text NOT NULL, agent_id uuid REFERENCES agents(id),"
    " run_id uuid REFERENCES heartbeat_runs(id), details jsonb,"
    " created_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX activity_log_company_created_idx"
    " ON activity_log (company_id, created_at);";

static void migrations_existing_control_plane_tables(void **state)
{
    struct er_harness *h;
    struct er_harness_worker *w;
    struct er_harness_run run;
    struct er_harness_run ghost;
    struct er_harness_cmd acq;
    struct er_harness_cmd acq2;
    struct er_harness_cmd rel;
    char issue_id[37];
    const json_t *res;
    const char *msg;
    char *before;
    char *after;

    h = er_harness_new("migrations_existing", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    assert_int_equal(er_harness_pg_exec(h->db_url, control_plane_sql, 0, NULL),
                     0);
    er_harness_run_init(&run);
    er_uuid_v4(issue_id);
    assert_int_equal(
        er_harness_pg_exec(
            h->db_url,
            "WITH c AS (INSERT INTO companies VALUES ($1, 'Acme') RETURNING "
            "id),"
            " a AS (INSERT INTO agents (id, company_id) SELECT $2, id FROM c"
            "  RETURNING id, company_id),"
            " r AS (INSERT INTO heartbeat_runs (id, company_id, agent_id,"
            "  status) SELECT $3, company_id, id, 'running' FROM a)"
            " INSERT INTO issues (id, company_id) SELECT $4, id FROM c",
            4,
            (const char *[]){ run.company_id, run.agent_id, run.run_id,
                              issue_id }),
        0);
    before = public_snapshot(h->db_url);

    w = start_ready(h, h->db_url, false);
    after = public_snapshot(h->db_url);
    assert_string_equal(before, after);
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM pg_namespace "
                                         "WHERE nspname = 'envrun'",
                                         0, NULL),
                     1);

    /* The lifecycle works with the control plane's foreign keys. */
    er_harness_cmd_acquire(&acq, &run);
    acq.cmd.issue_id = issue_id;
    assert_int_equal(er_harness_send(h, &acq.cmd), 0);
    res = er_harness_wait_result(h, acq.command_id, ER_HARNESS_FIRST_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM activity_log "
                                         "WHERE run_id = $1",
                                         1, (const char *[]){ run.run_id }),
                     1);

    /* A run the control plane does not know: its foreign key refuses the
     * lease. The command is answered (lease_acquire_failed, with the
     * SQLSTATE), nothing is left behind, and the worker carries on. */
    er_harness_run_init_same_company(&ghost, &run);
    er_harness_cmd_acquire(&acq2, &ghost);
    assert_int_equal(er_harness_send(h, &acq2.cmd), 0);
    res = er_harness_wait_result(h, acq2.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "error");
    ER_HARNESS_ASSERT_STR(res, "errorCode", "lease_acquire_failed");
    msg = er_harness_json_str(res, "errorMessage");
    ER_HARNESS_NON_NULL(msg);
    assert_non_null(strstr(msg, "The database refused the acquire: "));
    assert_non_null(strstr(msg, "sqlstate 23503"));
    assert_int_equal(er_harness_pg_count(h->db_url,
                                         "SELECT count(*) FROM "
                                         "environment_leases WHERE "
                                         "company_id = $1",
                                         1, (const char *[]){ run.company_id }),
                     1);
    er_harness_cmd_release(&rel, &run, ER_RELEASE_RELEASED);
    assert_int_equal(er_harness_send(h, &rel.cmd), 0);
    res = er_harness_wait_result(h, rel.command_id, ER_HARNESS_WAIT_MS);
    ER_HARNESS_NON_NULL(res);
    ER_HARNESS_ASSERT_STR(res, "outcome", "ok");
    assert_true(er_harness_worker_is_alive(w));
    stop_clean(w);
    er_free(after);
    after = public_snapshot(h->db_url);
    assert_string_equal(before, after);
    er_free(before);
    er_free(after);
}

/* On each Paperclip era's control-plane tables (tests/fixtures), two
 * starts of the worker change no table, column, index or constraint of
 * Paperclip's, and the worker logs the era it read from the catalog. */
static void migrations_leave_each_paperclip_era_alone(void **state)
{
    static const struct {
        const char *file;
        const char *tag;
        const char *era_kv;
    } eras[] = {
        { ER_SOURCE_DIR "/tests/fixtures/paperclip-2026.529.0.sql", "era529",
          "\"era\":\"company\"" },
        { ER_SOURCE_DIR "/tests/fixtures/paperclip-2026.916.1.sql", "era916",
          "\"era\":\"instance\"" },
    };
    struct er_harness *h;
    size_t i;

    h = er_harness_new("migrations_eras", 1, NULL);
    ER_HARNESS_NON_NULL(h);
    *state = h;
    for (i = 0; i < sizeof(eras) / sizeof(eras[0]); i++) {
        char url[ER_HARNESS_URL_MAX];
        struct er_harness_worker *w;
        char *sql = er_harness_read_text(eras[i].file, ER_HARNESS_SQL_FILE_MAX);
        char *before;
        char *after;
        int round;

        ER_HARNESS_NON_NULL(sql);
        assert_int_equal(er_harness_db_new(h, eras[i].tag, url, sizeof(url)),
                         0);
        assert_int_equal(er_harness_pg_exec(url, sql, 0, NULL), 0);
        er_free(sql);
        before = public_snapshot(url);
        for (round = 0; round < 2; round++) {
            w = start_ready(h, url, round == 1);
            if (!er_harness_worker_log_contains(w, eras[i].era_kv)) {
                er_harness_worker_dump_log(w, 4000);
                er_harness_fail(__FILE__, __LINE__, "no %s logged",
                                eras[i].era_kv);
            }
            stop_clean(w);
            after = public_snapshot(url);
            assert_string_equal(before, after);
            er_free(after);
        }
        er_free(before);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(migrations_fresh_database_twice, teardown),
        cmocka_unit_test_teardown(migrations_two_workers_at_once, teardown),
        cmocka_unit_test_teardown(migrations_existing_control_plane_tables,
                                  teardown),
        cmocka_unit_test_teardown(migrations_leave_each_paperclip_era_alone,
                                  teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
