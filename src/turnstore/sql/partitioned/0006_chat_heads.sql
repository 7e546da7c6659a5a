-- turnstore 0006, partitioned layout: one row per chat, the row find_latest_for_update
-- locks (docs/design.md, The latest-turn lock), hash-partitioned by tenant_id like
-- chat_turns, with the same number of partitions: a chat's head row and its turns share
-- a partition number (docs/scaling.md).
-- Runs with search_path set to the target schema and turnstore.partitions set to the
-- layout's partition count; names below are unqualified on purpose.

CREATE TABLE chat_heads (
    tenant_id  uuid NOT NULL,
    chat_id    uuid NOT NULL,
    CONSTRAINT chat_heads_pkey PRIMARY KEY (tenant_id, chat_id)
) PARTITION BY HASH (tenant_id);

DO $partitions$
DECLARE
    n CONSTANT int := current_setting('turnstore.partitions')::int;
BEGIN
    FOR r IN 0 .. n - 1 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF chat_heads '
                       'FOR VALUES WITH (MODULUS %s, REMAINDER %s)', 'chat_heads_p' || r, n, r);
    END LOOP;
END
$partitions$;
