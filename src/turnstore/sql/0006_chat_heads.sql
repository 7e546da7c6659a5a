-- turnstore 0006: one row per chat, the row find_latest_for_update locks (docs/design.md,
-- The latest-turn lock). A row lock lives in the tenant's partition or shard, where an
-- advisory lock would live on whichever node took it (docs/scaling.md).
-- Runs with search_path set to the target schema; names below are unqualified on purpose.

-- Inserted on a chat's first locked read (INSERT ... ON CONFLICT DO NOTHING), then locked
-- with SELECT ... FOR UPDATE in the same transaction. Never updated; erasing a tenant
-- deletes its rows.
CREATE TABLE chat_heads (
    tenant_id  uuid NOT NULL,
    chat_id    uuid NOT NULL,
    CONSTRAINT chat_heads_pkey PRIMARY KEY (tenant_id, chat_id)
);
