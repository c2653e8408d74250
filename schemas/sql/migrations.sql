-- envrun migrations (contract.md 5). Applied in one transaction under an
-- advisory lock, so two workers starting at once are safe and a second run
-- changes nothing. Paperclip's tables are created only where missing, with
-- Paperclip's names, columns, types and indexes (domain.md 2.2, 2.3, 2.7,
-- 2.8); an existing control-plane database keeps its own tables, columns
-- and indexes untouched.
-- Everything envrun owns lives in the schema "envrun".

SELECT pg_advisory_xact_lock(7295104811);

DO $envrun$
BEGIN
    IF to_regclass('environments') IS NULL THEN
        CREATE TABLE environments (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL,
            name text NOT NULL,
            description text,
            driver text NOT NULL DEFAULT 'local',
            status text NOT NULL DEFAULT 'active',
            config jsonb NOT NULL DEFAULT '{}'::jsonb,
            metadata jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX environments_company_status_idx
            ON environments (company_id, status);
        CREATE UNIQUE INDEX environments_company_driver_idx
            ON environments (company_id, driver) WHERE driver = 'local';
        CREATE INDEX environments_company_name_idx
            ON environments (company_id, name);
    END IF;
END
$envrun$;

DO $envrun$
BEGIN
    IF to_regclass('execution_workspaces') IS NULL THEN
        CREATE TABLE execution_workspaces (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL,
            project_id uuid,
            project_workspace_id uuid,
            source_issue_id uuid,
            mode text,
            strategy_type text,
            name text,
            status text,
            cwd text,
            repo_url text,
            base_ref text,
            branch_name text,
            provider_type text,
            provider_ref text,
            derived_from_execution_workspace_id uuid,
            last_used_at timestamptz,
            opened_at timestamptz,
            closed_at timestamptz,
            cleanup_eligible_at timestamptz,
            cleanup_reason text,
            config jsonb,
            metadata jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
    END IF;
END
$envrun$;

DO $envrun$
BEGIN
    IF to_regclass('environment_leases') IS NULL THEN
        CREATE TABLE environment_leases (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL,
            environment_id uuid NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
            execution_workspace_id uuid,
            issue_id uuid,
            heartbeat_run_id uuid,
            status text NOT NULL DEFAULT 'active',
            lease_policy text NOT NULL DEFAULT 'ephemeral',
            provider text,
            provider_lease_id text,
            acquired_at timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            released_at timestamptz,
            failure_reason text,
            cleanup_status text,
            metadata jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX environment_leases_company_environment_status_idx
            ON environment_leases (company_id, environment_id, status);
        CREATE INDEX environment_leases_company_execution_workspace_idx
            ON environment_leases (company_id, execution_workspace_id);
        CREATE INDEX environment_leases_company_issue_idx
            ON environment_leases (company_id, issue_id);
        CREATE INDEX environment_leases_heartbeat_run_idx
            ON environment_leases (heartbeat_run_id);
        CREATE INDEX environment_leases_company_last_used_idx
            ON environment_leases (company_id, last_used_at);
        CREATE INDEX environment_leases_provider_lease_idx
            ON environment_leases (provider_lease_id);
        -- Later upstream's single-flight guard (domain.md 3.3.1), recommended here.
        CREATE UNIQUE INDEX environment_leases_active_workspace_singleflight_idx
            ON environment_leases (environment_id, execution_workspace_id)
            WHERE status = 'active' AND execution_workspace_id IS NOT NULL
              AND lease_policy = 'ephemeral';
    END IF;
END
$envrun$;

DO $envrun$
BEGIN
    IF to_regclass('activity_log') IS NULL THEN
        CREATE TABLE activity_log (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL,
            actor_type text NOT NULL DEFAULT 'system',
            actor_id text NOT NULL,
            action text NOT NULL,
            entity_type text NOT NULL,
            entity_id text NOT NULL,
            agent_id uuid,
            run_id uuid,
            details jsonb,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX activity_log_company_created_idx
            ON activity_log (company_id, created_at);
        CREATE INDEX activity_log_run_id_idx
            ON activity_log (run_id);
        CREATE INDEX activity_log_entity_type_id_idx
            ON activity_log (entity_type, entity_id);
    END IF;
END
$envrun$;

CREATE SCHEMA IF NOT EXISTS envrun;

CREATE TABLE IF NOT EXISTS envrun.schema_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per command id ever processed: the stored result is what a
-- redelivery of the same id gets again (effectively-once).
CREATE TABLE IF NOT EXISTS envrun.processed_commands (
    command_id text PRIMARY KEY,
    kind text NOT NULL,
    heartbeat_run_id text,
    result bytea NOT NULL,
    result_key bytea,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: rows are written in the step's transaction and
-- published (then deleted) by the relay.
CREATE TABLE IF NOT EXISTS envrun.outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    msg_key bytea,
    msg_value bytea NOT NULL,
    headers jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Per-lease event version (LeaseEvent.version), bumped under the lease's
-- row lock on every change.
CREATE TABLE IF NOT EXISTS envrun.lease_state (
    lease_id uuid PRIMARY KEY,
    version bigint NOT NULL
);

-- The operation journal (DESIGN.md, three phases): one row per remote
-- operation a step or the reaper starts, recorded before the driver works
-- (state started) and closed in the transaction that records the outcome
-- (done, failed or rolled_back). A row left started (or interrupted, when
-- a new owner of its partition took over) is work a crash cut short: the
-- redelivered command resumes it, the reaper finishes what nobody will.
CREATE TABLE IF NOT EXISTS envrun.operations (
    id bigserial PRIMARY KEY,
    command_id text NOT NULL,
    company_id uuid NOT NULL,
    lease_id uuid NOT NULL,
    environment_id uuid,
    kind text NOT NULL,
    state text NOT NULL,
    attempt integer NOT NULL DEFAULT 1,
    topic text,
    partition_id integer,
    generation bigint,
    detail jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (command_id, kind, lease_id)
);
CREATE INDEX IF NOT EXISTS operations_open_idx
    ON envrun.operations (topic, partition_id)
    WHERE state IN ('started', 'interrupted');
CREATE INDEX IF NOT EXISTS operations_lease_idx
    ON envrun.operations (lease_id);

-- Fencing: the generation of each commands partition's current owner.
-- A worker bumps it when it is assigned the partition; every write that
-- records a step's outcome holds the row FOR SHARE and checks it, so a
-- worker that lost the partition can no longer write for it.
CREATE TABLE IF NOT EXISTS envrun.partition_fence (
    topic text NOT NULL,
    partition_id integer NOT NULL,
    generation bigint NOT NULL,
    owner text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition_id)
);

-- Outbox rows the broker refused for good (too large, unknown topic),
-- kept with the reason instead of wedging the relay.
CREATE TABLE IF NOT EXISTS envrun.outbox_quarantine (
    id bigint PRIMARY KEY,
    topic text NOT NULL,
    msg_key bytea,
    msg_value bytea NOT NULL,
    headers jsonb,
    created_at timestamptz NOT NULL,
    reason text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);

-- This database's envrun installation: one random id, made once. A
-- worker marks what it keeps on its host (the ssh driver's connection
-- directories) with it, so its sweep never touches what workers of
-- another database on the same host keep.
CREATE TABLE IF NOT EXISTS envrun.installation (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    is_singleton boolean NOT NULL DEFAULT true UNIQUE
);
INSERT INTO envrun.installation (is_singleton) VALUES (true)
    ON CONFLICT (is_singleton) DO NOTHING;

-- Version 3: where each operation's command came from (the Kafka offset
-- beside topic and partition), so a worker that gets a partition back
-- while its steps still run can find their entries and keep them.
ALTER TABLE envrun.operations ADD COLUMN IF NOT EXISTS kafka_offset bigint;
-- The reaper looks for acquisitions left open (their lease never recorded)
-- on every pass.
CREATE INDEX IF NOT EXISTS operations_acquire_open_idx
    ON envrun.operations (updated_at)
    WHERE kind = 'acquire'
        AND state IN ('started', 'interrupted', 'rolling_back');

-- Version 4: the company of each processed command, so a command id is
-- answered with its stored result only for the company (and kind) that
-- first used it. Rows from before have NULL here; the worker then reads
-- the company from the stored CommandResult itself.
ALTER TABLE envrun.processed_commands ADD COLUMN IF NOT EXISTS company_id text;

-- Version 5: the latest time a lease may stay active (the acquire's
-- requestedExpiresAt), so refreshing expires_at never pushes it past that
-- and the reaper releases the lease then.
ALTER TABLE envrun.lease_state ADD COLUMN IF NOT EXISTS expires_cap timestamptz;

-- Version 6: a realize result's bridge token is never written here. Its
-- outbox row holds it masked and notes in token_from where the relay gets
-- it back (the realize command's topic, partition and offset, read again
-- from Kafka when the worker that wrote the row is gone).
ALTER TABLE envrun.outbox ADD COLUMN IF NOT EXISTS token_from jsonb;

INSERT INTO envrun.schema_migrations (version)
    VALUES (1), (2), (3), (4), (5), (6)
    ON CONFLICT (version) DO NOTHING;
