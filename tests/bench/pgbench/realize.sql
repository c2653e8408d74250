-- realize.sql: one realize of a run's active Local lease, as envrun-worker's
-- step runs it (worker/lifecycle_realize.c through worker/store.c,
-- store_journal.c and store_outbox.c, at commit eeb2edb): the statements
-- the worker sent for one such command with log_statement = 'all', in
-- order, one round trip each, in one transaction. Parameters become
-- literals and pgbench variables. The lease is one of seed.sql's 1..10000
-- (they stay active); the command id is md5 of a random number. The Kafka
-- payloads are repeated md5 bytes of the worker's sizes (lease event 1637,
-- result 3678 bytes); the lease's new metadata is the worker's for a host
-- workspace. Not here: the outbox relay's reads and deletes. How to list
-- the worker's statements again: seed.sql.
\set n random(1, 10000)
\set r random(1, 1000000000000000000)
\set p random(0, 7)
BEGIN;
-- The partition's fence (store_journal.c).
SELECT generation FROM envrun.partition_fence
WHERE topic = 'envrun.commands' AND partition_id = :p::int FOR SHARE;
-- Seen before? (store.c)
SELECT result, kind, company_id FROM envrun.processed_commands
WHERE command_id = md5('rlz-cmd' || :r::text)::uuid::text;
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
-- The realized workspace goes into the lease's metadata.
UPDATE environment_leases
SET metadata = '{"driver": "local", "workspaceRealization": {"sync": {"prepare": "The workspace is used in place on the host.", "strategy": "none", "syncBack": "Nothing to sync back: the run works in the host workspace."}, "local": {"path": "/srv/envrun/ws/perf_bench01", "source": "task_session", "repoRef": null, "repoUrl": null, "strategy": "project_primary", "projectId": null, "branchName": null, "worktreePath": null, "projectWorkspaceId": null}, "remote": {"path": null}, "leaseId": "55f183f1-bcea-8449-8406-afae20035d86", "rebuild": {"mode": null, "repoRef": null, "repoUrl": null, "metadata": {"source": {"kind": "task_session", "repoRef": null, "repoUrl": null, "strategy": "project_primary", "localPath": "/srv/envrun/ws/perf_bench01", "projectId": null, "branchName": null, "worktreePath": null, "projectWorkspaceId": null}, "provider": "local", "runtimeOverlay": {"cleanupCommand": null, "teardownCommand": null, "provisionCommand": null, "workspaceRuntime": null}, "providerMetadata": null, "environmentDriver": "local"}, "localPath": "/srv/envrun/ws/perf_bench01", "remotePath": null, "providerLeaseId": null, "executionWorkspaceId": null}, "summary": "Local workspace realized at /srv/envrun/ws/perf_bench01.", "version": 1, "provider": "local", "bootstrap": {"command": null}, "transport": "local", "environmentId": "5900e19a-deaf-4ad0-be03-4b9bd5f71bf2", "providerLeaseId": null}, "executionWorkspaceMode": null}'::jsonb,
    last_used_at = now(), updated_at = now(),
    expires_at = LEAST(now() + make_interval(secs => 21600::bigint),
                       (SELECT expires_cap FROM envrun.lease_state
                        WHERE lease_id = md5('seed-lease' || :n::text)::uuid))
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
-- The lease event, then the result (store_outbox.c).
INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, token_from)
VALUES ('envrun.lease-events',
        convert_to(md5('seed-lease' || :n::text)::uuid::text, 'UTF8'),
        decode(repeat(md5('rlz-ev' || :r::text), 102), 'hex'), NULL::jsonb,
        NULL::jsonb);
INSERT INTO envrun.outbox (topic, msg_key, msg_value, headers, token_from)
VALUES ('envrun.results',
        convert_to(md5('seed-run' || :n::text)::uuid::text, 'UTF8'),
        decode(repeat(md5('rlz-res' || :r::text), 230), 'hex'), NULL::jsonb,
        NULL::jsonb);
-- Close the command's journal entries (store_journal.c).
UPDATE envrun.operations SET state = 'done', updated_at = now()
WHERE command_id = md5('rlz-cmd' || :r::text)::uuid::text
  AND company_id::text = lower(md5('seed-co' || :n::text)::uuid::text)
  AND state IN ('started', 'interrupted');
-- The stored result (store.c).
INSERT INTO envrun.processed_commands (command_id, kind, heartbeat_run_id,
                                       result, company_id)
VALUES (md5('rlz-cmd' || :r::text)::uuid::text, 'realize',
        md5('seed-run' || :n::text)::uuid::text,
        decode(repeat(md5('rlz-res' || :r::text), 230), 'hex'),
        md5('seed-co' || :n::text)::uuid::text);
COMMIT;
