-- acquire.sql: one acquire of the Local environment of one of 100
-- companies (seed.sql made them), as envrun-worker's step runs it
-- (worker/lifecycle_acquire.c through worker/store.c, store_journal.c and
-- store_outbox.c): the statements the worker sends for one such command,
-- in order, one round trip each, in one transaction (the worker sends them
-- in fewer: the ones whose answer it does not need go with the next one).
-- Parameters become literals and pgbench variables; ids are md5 of a
-- random number, so every transaction has its own command, run and lease.
-- Differences: the lease's id is md5 where the worker derives it from
-- company and command id (SHA-256, in the worker); the Kafka payloads are
-- repeated md5 bytes of the worker's sizes (lease event 314, activity 466,
-- result 1379 bytes). Not here: the outbox relay's reads and deletes. How
-- to list the worker's statements again: seed.sql.
\set r random(1, 1000000000000000000)
\set p random(0, 7)
\set c random(1, 100)
BEGIN;
-- The partition's fence (store_journal.c).
SELECT generation FROM envrun.partition_fence
WHERE topic = 'envrun.commands' AND partition_id = :p::int FOR SHARE;
-- Seen before? (store.c)
SELECT result, kind, company_id FROM envrun.processed_commands
WHERE command_id = md5('acq-cmd' || :r::text)::uuid::text;
-- The company's Local environment: there already (created on demand by
-- the company's first acquire, an INSERT the worker then sends too).
SELECT id::text, company_id::text, name, description, driver, status,
    config::text, metadata::text,
    (extract(epoch from created_at) * 1000)::bigint,
    (extract(epoch from updated_at) * 1000)::bigint
FROM environments WHERE company_id = md5('seed-co' || :c::text)::uuid
  AND driver = 'local' ORDER BY created_at LIMIT 1;
SAVEPOINT er_step;
INSERT INTO environment_leases (id, company_id, environment_id,
    execution_workspace_id, issue_id, heartbeat_run_id, status, lease_policy,
    provider, provider_lease_id, expires_at, metadata)
VALUES (COALESCE(md5('acq-lease' || :r::text)::uuid, gen_random_uuid()),
        md5('seed-co' || :c::text)::uuid, md5('seed-env' || :c::text)::uuid,
        NULL::uuid, NULL::uuid, md5('acq-run' || :r::text)::uuid, 'active',
        'ephemeral', 'local', NULL,
        LEAST(COALESCE(to_timestamp(NULL::bigint / 1000.0),
                       now() + make_interval(secs => 21600::bigint)),
              to_timestamp(NULL::bigint / 1000.0)),
        '{"driver": "local", "executionWorkspaceMode": null}'::jsonb)
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
RELEASE SAVEPOINT er_step;
-- The lease event's version.
INSERT INTO envrun.lease_state (lease_id, version)
VALUES (md5('acq-lease' || :r::text)::uuid, 1)
ON CONFLICT (lease_id) DO UPDATE SET version = envrun.lease_state.version + 1
RETURNING version;
-- The lease event (store_outbox.c).
INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, token_from)
VALUES ('envrun.lease-events',
        convert_to(md5('acq-lease' || :r::text)::uuid::text, 'UTF8'),
        decode(repeat(md5('acq-ev' || :r::text), 20), 'hex'), NULL::jsonb,
        NULL::jsonb);
SAVEPOINT er_step;
INSERT INTO activity_log (company_id, actor_type, actor_id, action,
                          entity_type, entity_id, agent_id, run_id, details)
VALUES (md5('seed-co' || :c::text)::uuid, 'agent',
        md5('acq-agent' || :r::text)::uuid::text,
        'environment.lease_acquired', 'environment_lease',
        md5('acq-lease' || :r::text)::uuid::text,
        md5('acq-agent' || :r::text)::uuid, md5('acq-run' || :r::text)::uuid,
        '{"driver": "local", "issueId": null, "provider": "local", "leasePolicy": "ephemeral", "environmentId": "52d288d4-f892-4a70-b82a-ac8860f20d41", "executionWorkspaceId": null}'::jsonb)
RETURNING id::text, company_id::text, actor_type, actor_id, action,
    entity_type, entity_id, agent_id::text, run_id::text, details::text,
    (extract(epoch from created_at) * 1000)::bigint;
RELEASE SAVEPOINT er_step;
-- The activity event, then the result.
INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, token_from)
VALUES ('envrun.activity',
        convert_to(md5('seed-co' || :c::text)::uuid::text, 'UTF8'),
        decode(repeat(md5('acq-act' || :r::text), 29), 'hex'), NULL::jsonb,
        NULL::jsonb);
INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, token_from)
VALUES ('envrun.results',
        convert_to(md5('acq-run' || :r::text)::uuid::text, 'UTF8'),
        decode(repeat(md5('acq-res' || :r::text), 86), 'hex'), NULL::jsonb,
        NULL::jsonb);
-- Close the command's journal entries (store_journal.c).
UPDATE envrun.operations SET state = 'done', updated_at = now()
WHERE command_id = md5('acq-cmd' || :r::text)::uuid::text
  AND company_id::text = lower(md5('seed-co' || :c::text)::uuid::text)
  AND state IN ('started', 'interrupted');
-- The stored result (store.c).
INSERT INTO envrun.processed_commands (command_id, kind, heartbeat_run_id,
                                       result, company_id)
VALUES (md5('acq-cmd' || :r::text)::uuid::text, 'acquire',
        md5('acq-run' || :r::text)::uuid::text,
        decode(repeat(md5('acq-res' || :r::text), 86), 'hex'),
        md5('seed-co' || :c::text)::uuid::text);
COMMIT;
