-- turnstore 0001, partitioned layout: the chat_turns table hash-partitioned by tenant_id
-- (docs/design.md, The table and its constraints; docs/schema.md, The partitioned layout).
-- Every primary and unique key contains tenant_id, the partition key: the primary key is
-- (id, tenant_id), and the tenant keys the plain layout gets from 0003 are created here.
-- Runs with search_path set to the target schema and turnstore.partitions set to the
-- layout's partition count; names below are unqualified on purpose.

CREATE TABLE chat_turns (
    id                               uuid          NOT NULL,
    tenant_id                        uuid          NOT NULL,
    chat_id                          uuid          NOT NULL,
    request_id                       uuid          NOT NULL,
    requester_type                   varchar(16)   NOT NULL,
    requester_user_id                uuid,
    state                            varchar(16)   NOT NULL,
    provider_name                    varchar(128),
    provider_response_id             varchar(128),
    assistant_message_id             uuid,
    error_code                       varchar(64),
    error_detail                     text,
    reserve_tokens                   bigint,
    max_output_tokens_applied        int,
    reserved_credits_micro           bigint,
    policy_version_applied           bigint,
    effective_model                  varchar(1024),
    minimal_generation_floor_applied int,
    web_search_enabled               boolean       NOT NULL DEFAULT false,
    web_search_completed_count       int           NOT NULL DEFAULT 0,
    code_interpreter_completed_count int           NOT NULL DEFAULT 0,
    file_search_completed_count      int           NOT NULL DEFAULT 0,
    deleted_at                       timestamptz,
    replaced_by_request_id           uuid,
    started_at                       timestamptz   NOT NULL,
    last_progress_at                 timestamptz,
    completed_at                     timestamptz,
    updated_at                       timestamptz   NOT NULL,

    -- A turn id is unique within its tenant here; the insert refuses an id any tenant
    -- uses (docs/schema.md, The partitioned layout).
    CONSTRAINT chat_turns_pkey PRIMARY KEY (id, tenant_id),
    -- The client's idempotency key, deleted turns included.
    CONSTRAINT chat_turns_tenant_chat_request_key UNIQUE (tenant_id, chat_id, request_id),

    CONSTRAINT chat_turns_requester_type_check
        CHECK (requester_type IN ('user', 'system')),
    CONSTRAINT chat_turns_requester_user_check
        CHECK (requester_type <> 'user' OR requester_user_id IS NOT NULL),
    CONSTRAINT chat_turns_state_check
        CHECK (state IN ('running', 'completed', 'failed', 'cancelled')),
    -- A terminal turn has completed_at; a running one has none.
    CONSTRAINT chat_turns_terminal_completed_at_check
        CHECK (state = 'running' OR completed_at IS NOT NULL),
    CONSTRAINT chat_turns_running_completed_at_check
        CHECK (state <> 'running' OR completed_at IS NULL),
    -- A running turn always has a liveness timestamp.
    CONSTRAINT chat_turns_running_progress_check
        CHECK (state <> 'running' OR last_progress_at IS NOT NULL),
    CONSTRAINT chat_turns_completed_error_check
        CHECK (state <> 'completed' OR error_code IS NULL),
    CONSTRAINT chat_turns_nonnegative_check
        CHECK (
            (reserve_tokens IS NULL OR reserve_tokens >= 0)
            AND (max_output_tokens_applied IS NULL OR max_output_tokens_applied >= 0)
            AND (reserved_credits_micro IS NULL OR reserved_credits_micro >= 0)
            AND (policy_version_applied IS NULL OR policy_version_applied >= 0)
            AND (minimal_generation_floor_applied IS NULL OR minimal_generation_floor_applied >= 0)
            AND web_search_completed_count >= 0
            AND code_interpreter_completed_count >= 0
            AND file_search_completed_count >= 0
        ),
    CONSTRAINT chat_turns_reserve_covers_output_check
        CHECK (
            reserve_tokens IS NULL OR max_output_tokens_applied IS NULL
            OR reserve_tokens >= max_output_tokens_applied
        ),
    -- The six preflight fields are written together or not at all.
    CONSTRAINT chat_turns_preflight_all_or_none_check
        CHECK (
            num_nulls(reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
                      policy_version_applied, effective_model,
                      minimal_generation_floor_applied) IN (0, 6)
        )
)
-- Keep-alive updates are the most frequent write; free space on each page lets them stay
-- heap-only (HOT), which no index on last_progress_at / updated_at would allow.
PARTITION BY HASH (tenant_id);

-- At most one running, non-deleted turn per chat. Also serves find_running_by_chat_id and,
-- being small (running turns only), the orphan scan.
CREATE UNIQUE INDEX chat_turns_one_running_per_tenant_chat
    ON chat_turns (tenant_id, chat_id)
    WHERE state = 'running' AND deleted_at IS NULL;

-- "Latest turn of a chat": the greatest (started_at, id) among non-deleted turns.
CREATE INDEX chat_turns_tenant_chat_latest
    ON chat_turns (tenant_id, chat_id, started_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- The partitions chat_turns_p0 .. chat_turns_p<n-1>. Keep-alive updates are the most
-- frequent write; free space on each page lets them stay heap-only (HOT). Each partition's
-- copy of a parent index is renamed <parent index>_p<remainder>, so a unique violation
-- names a constraint that turnstore.postgres.errors maps like the parent's.
DO $partitions$
DECLARE
    n CONSTANT int := current_setting('turnstore.partitions')::int;
    child record;
BEGIN
    FOR r IN 0 .. n - 1 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF chat_turns '
                       'FOR VALUES WITH (MODULUS %s, REMAINDER %s) WITH (fillfactor = 80)',
                       'chat_turns_p' || r, n, r);
    END LOOP;
    FOR child IN
        SELECT ci.relname AS index_name,
               pi.relname || '_p' || substring(ct.relname FROM '_p([0-9]+)$') AS new_name
          FROM pg_inherits inh
          JOIN pg_class ci ON ci.oid = inh.inhrelid
          JOIN pg_class pi ON pi.oid = inh.inhparent
          JOIN pg_index ix ON ix.indexrelid = inh.inhrelid
          JOIN pg_class ct ON ct.oid = ix.indrelid
         WHERE inh.inhparent IN (SELECT indexrelid FROM pg_index
                                  WHERE indrelid = 'chat_turns'::regclass)
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', child.index_name, child.new_name);
    END LOOP;
END
$partitions$;
