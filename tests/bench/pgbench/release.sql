-- release.sql: one release of a run's active Local lease, as envrun-worker's
-- step runs it (worker/lifecycle_release.c through worker/store.c,
-- store_journal.c and store_outbox.c, at commit eeb2edb): the statements
-- the worker sent for one such command with log_statement = 'all', in
-- order, one round trip each, in one transaction. Parameters become
-- literals and pgbench variables. The lease is one of seed.sql's
-- 10001..20000 (a lease drawn twice is already released and the first
-- SELECT finds nothing; seed.sql makes them active again before each
-- pgbench run); the command id is md5 of a random number. The Kafka
-- payloads are repeated md5 bytes of the worker's sizes (lease event 1645,
-- activity 534, result 283 bytes). Not here: the outbox relay's reads and
-- deletes. How to list the worker's statements again: seed.sql.
\set n random(10001, 20000)
\set r random(1, 1000000000000000000)
\set p random(0, 7)
BEGIN;
-- The partition's fence (store_journal.c).
SELECT generation FROM envrun.partition_fence
WHERE topic = 'envrun.commands' AND partition_id = :p::int FOR SHARE;
-- Seen before? (store.c)
SELECT result, kind, company_id FROM envrun.processed_commands
WHERE command_id = md5('rls-cmd' || :r::text)::uuid::text;
-- The run's active leases, locked.
SELECT id::text, company_id::text, environment_id::text,
    execution_workspace_id::text, issue_id::text, heartbeat_run_id::text,
    status, lease_policy, provider, provider_lease_id,
    (extract(epoch from acquired_at) * 1000)::bigint,
    (extract(epoch from last_used_at) * 1000)::bigint,
    (extract(epoch from expires_at) * 1000)::bigint,
    (extract(epoch from released_at) * 1000)::bigint, failure_reason,
    cleanup_status, metadata::text,
    (extract(epoch from created_at) * 1000)::bigint,
    (extract(epoch from updated_at) * 1000)::bigint
FROM environment_leases
WHERE company_id = md5('seed-co' || :n::text)::uuid
  AND heartbeat_run_id = md5('seed-run' || :n::text)::uuid
  AND status = 'active' ORDER BY acquired_at, id FOR UPDATE;
-- Its environment.
SELECT id::text, company_id::text, name, description, driver, status,
    config::text, metadata::text,
    (extract(epoch from created_at) * 1000)::bigint,
    (extract(epoch from updated_at) * 1000)::bigint
FROM environments WHERE id = md5('seed-env' || :n::text)::uuid;
SAVEPOINT er_step;
-- The lease again, by id, locked.
SELECT id::text, company_id::text, environment_id::text,
    execution_workspace_id::text, issue_id::text, heartbeat_run_id::text,
    status, lease_policy, provider, provider_lease_id,
    (extract(epoch from acquired_at) * 1000)::bigint,
    (extract(epoch from last_used_at) * 1000)::bigint,
    (extract(epoch from expires_at) * 1000)::bigint,
    (extract(epoch from released_at) * 1000)::bigint, failure_reason,
    cleanup_status, metadata::text,
    (extract(epoch from created_at) * 1000)::bigint,
    (extract(epoch from updated_at) * 1000)::bigint
FROM environment_leases WHERE id = md5('seed-lease' || :n::text)::uuid
FOR UPDATE;
UPDATE environment_leases
SET status = 'released',
    released_at = CASE WHEN 'released' = 'retained' THEN NULL ELSE now() END,
    failure_reason = COALESCE(NULL, failure_reason),
    cleanup_status = COALESCE(NULL, cleanup_status), last_used_at = now(),
    updated_at = now()
WHERE id = md5('seed-lease' || :n::text)::uuid
RETURNING id::text, company_id::text, environment_id::text,
    execution_workspace_id::text, issue_id::text, heartbeat_run_id::text,
    status, lease_policy, provider, provider_lease_id,
    (extract(epoch from acquired_at) * 1000)::bigint,
    (extract(epoch from last_used_at) * 1000)::bigint,
    (extract(epoch from expires_at) * 1000)::bigint,
    (extract(epoch from released_at) * 1000)::bigint, failure_reason,
    cleanup_status, metadata::text,
    (extract(epoch from created_at) * 1000)::bigint,
    (extract(epoch from updated_at) * 1000)::bigint;
-- The lease event's version.
INSERT INTO envrun.lease_state (lease_id, version)
VALUES (md5('seed-lease' || :n::text)::uuid, 1)
ON CONFLICT (lease_id) DO UPDATE SET version = envrun.lease_state.version + 1
RETURNING version;
-- The lease event (store_outbox.c).
INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, token_from)
VALUES ('envrun.lease-events',
        convert_to(md5('seed-lease' || :n::text)::uuid::text, 'UTF8'),
        decode(repeat(md5('rls-ev' || :r::text), 103), 'hex'), NULL::jsonb,
        NULL::jsonb);
SAVEPOINT er_step;
INSERT INTO activity_log (company_id, actor_type, actor_id, action,
                          entity_type, entity_id, agent_id, run_id, details)
VALUES (md5('seed-co' || :n::text)::uuid, 'agent',
        md5('seed-agent' || :n::text)::uuid::text,
        'environment.lease_released', 'environment_lease',
        md5('seed-lease' || :n::text)::uuid::text,
        md5('seed-agent' || :n::text)::uuid,
        md5('seed-run' || :n::text)::uuid,
        '{"driver": "local", "status": "released", "issueId": null, "provider": "local", "leasePolicy": "ephemeral", "cleanupStatus": null, "environmentId": "5900e19a-deaf-4ad0-be03-4b9bd5f71bf2", "failureReason": null, "executionWorkspaceId": null}'::jsonb)
RETURNING id::text, company_id::text, actor_type, actor_id, action,
    entity_type, entity_id, agent_id::text, run_id::text, details::text,
    (extract(epoch from created_at) * 1000)::bigint;
RELEASE SAVEPOINT er_step;
-- The activity event.
INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, token_from)
VALUES ('envrun.activity',
        convert_to(md5('seed-co' || :n::text)::uuid::text, 'UTF8'),
        decode(repeat(md5('rls-act' || :r::text), 33), 'hex'), NULL::jsonb,
        NULL::jsonb);
RELEASE SAVEPOINT er_step;
-- The result (store_outbox.c).
INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, token_from)
VALUES ('envrun.results',
        convert_to(md5('seed-run' || :n::text)::uuid::text, 'UTF8'),
        decode(repeat(md5('rls-res' || :r::text), 18), 'hex'), NULL::jsonb,
        NULL::jsonb);
-- Close the command's journal entries (store_journal.c).
UPDATE envrun.operations SET state = 'done', updated_at = now()
WHERE command_id = md5('rls-cmd' || :r::text)::uuid::text
  AND company_id::text = lower(md5('seed-co' || :n::text)::uuid::text)
  AND state IN ('started', 'interrupted');
-- The stored result (store.c).
INSERT INTO envrun.processed_commands (command_id, kind, heartbeat_run_id,
                                       result, company_id)
VALUES (md5('rls-cmd' || :r::text)::uuid::text, 'release',
        md5('seed-run' || :n::text)::uuid::text,
        decode(repeat(md5('rls-res' || :r::text), 18), 'hex'),
        md5('seed-co' || :n::text)::uuid::text);
COMMIT;
