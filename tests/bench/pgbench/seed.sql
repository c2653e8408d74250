-- seed.sql: the rows pgbench's realize.sql and release.sql work on, in a
-- database the worker has migrated (perf_bench runs it through libpq before
-- each pgbench run; it is idempotent). Leases 1..10000 are realized,
-- 10001..20000 released; each has its own company, Local environment,
-- heartbeat run and lease_state row, with the ids the scripts compute:
-- md5('seed-<what>' || n)::uuid. A second run makes released leases active
-- again. The fence rows are those of a worker that owns every partition of
-- envrun.commands (perf_bench's topics have 8).
--
-- acquire.sql, realize.sql and release.sql hold the statements the worker
-- sends per command and must follow it when the store changes. To list
-- them: ALTER SYSTEM SET log_statement = 'all' and SELECT pg_reload_conf()
-- on the test server, run build/tests/perf_bench 1 and stop it once its
-- full-speed phase is done, read the statements of the first run after
-- the warm-up on a step connection (one that looks up processed_commands)
-- in the server log (scripts/test-services.sh: DIR/pg/server.log), then
-- ALTER SYSTEM RESET log_statement and reload. Statements the worker sends
-- ahead are logged one by one like the others.

INSERT INTO environments (id, company_id, name, description, driver, status,
                          config, metadata)
SELECT md5('seed-env' || n)::uuid, md5('seed-co' || n)::uuid, 'Local',
       'Default execution environment for Paperclip runs on this machine.',
       'local', 'active', '{}'::jsonb,
       '{"managedByPaperclip": true, "defaultForCompany": true}'::jsonb
FROM generate_series(1, 20000) AS n
ON CONFLICT DO NOTHING;

INSERT INTO environment_leases (id, company_id, environment_id,
                                heartbeat_run_id, status, lease_policy,
                                provider, expires_at, metadata)
SELECT md5('seed-lease' || n)::uuid, md5('seed-co' || n)::uuid,
       md5('seed-env' || n)::uuid, md5('seed-run' || n)::uuid, 'active',
       'ephemeral', 'local', now() + interval '6 hours',
       '{"driver": "local", "executionWorkspaceMode": null}'::jsonb
FROM generate_series(1, 20000) AS n
ON CONFLICT (id) DO UPDATE SET status = 'active', released_at = NULL
    WHERE environment_leases.status <> 'active';

INSERT INTO envrun.lease_state (lease_id, version)
SELECT md5('seed-lease' || n)::uuid, 1
FROM generate_series(1, 20000) AS n
ON CONFLICT (lease_id) DO NOTHING;

INSERT INTO envrun.partition_fence (topic, partition_id, generation, owner)
SELECT 'envrun.commands', p, 1, 'pgbench'
FROM generate_series(0, 7) AS p
ON CONFLICT (topic, partition_id) DO NOTHING;

ANALYZE environments, environment_leases, activity_log, envrun.lease_state,
    envrun.partition_fence, envrun.processed_commands, envrun.operations,
    envrun.outbox;
