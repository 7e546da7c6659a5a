-- turnstore 0003: a chat is identified by (tenant_id, chat_id) (docs/design.md, The table and
-- its constraints): the idempotency key, "one running turn per chat" and the latest-turn
-- index are keyed by tenant and chat, so one tenant's rows never collide with another's.
-- Runs with search_path set to the target schema; names below are unqualified on purpose.
--
-- On a populated table the three CREATE INDEX statements block writes (not reads) while they
-- build. An index of the same name built beforehand with CREATE INDEX CONCURRENTLY is adopted
-- (docs/schema.md, Migrating a populated table): it is checked to be valid and to have the
-- definition below, else the migration stops and changes nothing.

CREATE UNIQUE INDEX IF NOT EXISTS chat_turns_tenant_chat_request_key
    ON chat_turns (tenant_id, chat_id, request_id);

CREATE UNIQUE INDEX IF NOT EXISTS chat_turns_one_running_per_tenant_chat
    ON chat_turns (tenant_id, chat_id)
    WHERE state = 'running' AND deleted_at IS NULL;

CREATE INDEX IF NOT EXISTS chat_turns_tenant_chat_latest
    ON chat_turns (tenant_id, chat_id, started_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- A pre-built index must be the one this migration would build: valid (a failed concurrent
-- build leaves an invalid one behind) and of the same definition.
DO $check$
DECLARE
    expected CONSTANT text[][] := ARRAY[
        ['chat_turns_tenant_chat_request_key',
         'CREATE UNIQUE INDEX chat_turns_tenant_chat_request_key ON chat_turns USING btree '
         '(tenant_id, chat_id, request_id)'],
        ['chat_turns_one_running_per_tenant_chat',
         'CREATE UNIQUE INDEX chat_turns_one_running_per_tenant_chat ON chat_turns USING btree '
         '(tenant_id, chat_id) WHERE (((state)::text = ''running''::text) '
         'AND (deleted_at IS NULL))'],
        ['chat_turns_tenant_chat_latest',
         'CREATE INDEX chat_turns_tenant_chat_latest ON chat_turns USING btree '
         '(tenant_id, chat_id, started_at DESC, id DESC) WHERE (deleted_at IS NULL)']];
    table_oid CONSTANT oid := 'chat_turns'::regclass;
    found record;
BEGIN
    FOR i IN 1 .. array_length(expected, 1) LOOP
        SELECT ix.indisvalid,
               -- The definition with the table named as above, whatever its schema.
               substring(pg_get_indexdef(ix.indexrelid) FROM '^CREATE (?:UNIQUE )?INDEX \S+ ')
                   || 'ON chat_turns '
                   || substring(pg_get_indexdef(ix.indexrelid) FROM ' (USING .*)$') AS def
          INTO found
          FROM pg_index ix
          JOIN pg_class c ON c.oid = ix.indexrelid
         WHERE ix.indrelid = table_oid AND c.relname = expected[i][1];
        IF NOT found.indisvalid THEN
            RAISE EXCEPTION 'index % is not valid (a failed CREATE INDEX CONCURRENTLY?): '
                            'drop it and migrate again', expected[i][1];
        END IF;
        IF found.def IS DISTINCT FROM expected[i][2] THEN
            RAISE EXCEPTION 'index % exists with another definition: %', expected[i][1], found.def
                USING HINT = 'expected: ' || expected[i][2];
        END IF;
    END LOOP;
END
$check$;

-- The swap: brief, but under an ACCESS EXCLUSIVE lock held until the migration commits.
ALTER TABLE chat_turns
    ADD CONSTRAINT chat_turns_tenant_chat_request_key
        UNIQUE USING INDEX chat_turns_tenant_chat_request_key,
    DROP CONSTRAINT chat_turns_chat_request_key;

DROP INDEX chat_turns_one_running_per_chat;
DROP INDEX chat_turns_chat_latest;
