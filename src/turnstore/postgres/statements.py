"""Every SQL statement of the PostgreSQL backend, as a named constant.

Placeholders in braces are identifiers, filled in once per schema by ``render`` through
``psycopg.sql.Identifier``: ``{turns}`` is the schema-qualified ``chat_turns`` table,
``{heads}`` its ``chat_heads`` (the rows the chat lock locks),
``{counter}`` a tool counter column, ``{table}`` / ``{schema}`` the migration bookkeeping.
``{scope}`` marks where the compiled ``AccessScope`` expression goes (see
``turnstore.postgres.scope``). ``{bounds}`` is where a statement that may wait for a lock
sets the store's lock and statement timeouts for its transaction (``StatementBounds``;
empty when the store sets none). Values are always ``%s`` parameters, in text order: a
method's parameters first, the scope's last.

Time is the database's: a statement that writes a time reads ``clock_timestamp()`` once,
in the ``clock`` CTE, and writes that one value everywhere, so a turn created and completed
in one transaction still has ``started_at <= completed_at``, and later statements always
get later times.

A statement returning turns selects every column of ``chat_turns`` in the order of the
``Turn`` fields (``TURN_COLUMNS``); the row factory relies on that order, and a test reads
each such statement to prove it.

Advisory lock classes (two-key form ``pg_advisory[_xact]_lock(class, key)``) used here;
a host should not use these class ids for its own locks:

- ``CHAT_LOCK_CLASS`` (1414742856, ASCII ``TSCH``): no longer taken; the per-chat lock
  of ``find_latest_for_update`` is a row lock on ``chat_heads`` (``LOCK_CHAT``). Kept
  reserved, as earlier versions took it.
- ``MIGRATION_LOCK_CLASS`` (1414745415, ASCII ``TSMG``): serializes ``migrate`` per schema,
  key ``hashtext(schema)``, held by each migration's transaction (transaction-scoped, so it
  holds through a transaction-pooling pooler and is never left behind).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from psycopg import sql

from turnstore.postgres.scope import SCOPE_MARK, ScopedStatement

__all__ = [
    "CAS_COMPLETED",
    "CAS_STATE",
    "CHAT_LOCK_CLASS",
    "CLASSIFY_CONFLICT",
    "COUNT_PARTITIONS",
    "COUNT_PURGEABLE",
    "COUNT_TENANT",
    "CREATE_CHAT_HEAD",
    "CREATE_SCHEMA",
    "CREATE_SETTINGS_TABLE",
    "CREATE_VERSION_TABLE",
    "CREATE_VISIBLE_CHAT_HEAD",
    "DEFAULT_SCHEMA",
    "ERASE_TENANT",
    "ERASE_TENANT_HEADS",
    "FINALIZE_ORPHAN",
    "FINALIZE_TENANT_ORPHAN",
    "FIND_BY_REQUEST",
    "FIND_LATEST",
    "FIND_ORPHANS",
    "FINALIZE_CHANNEL_PREFIX",
    "FIND_RUNNING",
    "GET_TURN",
    "INCREMENT_TOOL",
    "INSERT_TURN",
    "LATEST_FOR_UPDATE",
    "LATEST_ID",
    "LIST_TURNS",
    "LIST_TURNS_ALL",
    "LOCK_CHAT",
    "LOCK_VISIBLE_CHAT",
    "NO_BOUNDS",
    "MIGRATION_LOCK",
    "MIGRATION_LOCK_CLASS",
    "PURGE_TURNS",
    "READ_PARTITIONS",
    "READ_VERSIONS",
    "RELEASE_LEASE",
    "RECORD_PARTITIONS",
    "RECORD_VERSION",
    "SCHEMA_EXISTS",
    "SCRIPT_HEADER",
    "SCRIPT_RECORD_PARTITIONS",
    "SCRIPT_RECORD_VERSION",
    "SCRIPT_SET_PARTITIONS",
    "SET_ASSISTANT_MESSAGE",
    "SETTINGS_TABLE_EXISTS",
    "SET_LOCAL_PARTITIONS",
    "SET_LOCAL_SEARCH_PATH",
    "SOFT_DELETE",
    "STILL_RUNNING",
    "StatementBounds",
    "TAKE_LEASE",
    "TOUCH_TURNS",
    "TURN_COLUMNS",
    "TURN_ROW_STATEMENTS",
    "UPDATE_PREFLIGHT",
    "UPDATE_PROGRESS",
    "VERSION_TABLE_EXISTS",
    "finalize_channel",
    "param_ident",
    "render",
    "render_scoped",
]

#: The schema a store, repository or migration uses unless told otherwise.
DEFAULT_SCHEMA = "turnstore"

#: Advisory lock class of the per-chat lock earlier versions took in
#: ``find_latest_for_update`` ("TSCH"); now a row lock on ``chat_heads``. Still reserved.
CHAT_LOCK_CLASS = 0x54534348
#: Advisory lock class of the per-schema lock taken by ``migrate`` ("TSMG").
#: Written out as a number in ``MIGRATION_LOCK``.
MIGRATION_LOCK_CLASS = 0x54534D47

#: The columns every turn-returning statement selects, in this order: the ``Turn`` fields.
TURN_COLUMNS: tuple[str, ...] = (
    "id",
    "tenant_id",
    "chat_id",
    "request_id",
    "requester_type",
    "requester_user_id",
    "state",
    "provider_name",
    "provider_response_id",
    "assistant_message_id",
    "error_code",
    "error_detail",
    "reserve_tokens",
    "max_output_tokens_applied",
    "reserved_credits_micro",
    "policy_version_applied",
    "effective_model",
    "minimal_generation_floor_applied",
    "web_search_enabled",
    "web_search_completed_count",
    "code_interpreter_completed_count",
    "file_search_completed_count",
    "deleted_at",
    "replaced_by_request_id",
    "started_at",
    "last_progress_at",
    "completed_at",
    "updated_at",
    "request_fingerprint",
)

# --------------------------------------------------------------------------- turns

# The id check (NOT EXISTS) makes a turn id unique across tenants on both layouts; on the
# partitioned layout the primary key is (id, tenant_id) and alone would not
# (docs/schema.md, The partitioned layout). The casts type the parameters as VALUES would.
INSERT_TURN = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
INSERT INTO {turns} (
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, request_fingerprint, started_at, last_progress_at, updated_at)
SELECT
    %s::uuid, %s::uuid, %s::uuid, %s::uuid, %s::varchar, %s::uuid, 'running',
    %s::varchar, %s::bigint, %s::int, %s::bigint,
    %s::bigint, %s::varchar, %s::int,
    %s::boolean, %s::text, clock.ts, clock.ts, clock.ts
FROM clock
WHERE NOT EXISTS (SELECT 1 FROM {turns} WHERE id = %s)
ON CONFLICT DO NOTHING
RETURNING
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
"""

# Why an insert was refused, in the order the errors are reported: the id taken, the
# request id taken (by which turn), the chat's running turn, and the ids of those two rows
# that the caller's scope permits (an error names a turn only when the caller could have
# read it).
CLASSIFY_CONFLICT = """
SELECT
    EXISTS (SELECT 1 FROM {turns} WHERE id = %s),
    (SELECT id FROM {turns} WHERE tenant_id = %s AND chat_id = %s AND request_id = %s),
    (SELECT id FROM {turns}
      WHERE tenant_id = %s AND chat_id = %s AND state = 'running' AND deleted_at IS NULL),
    ARRAY(SELECT id FROM {turns}
           WHERE tenant_id = %s AND chat_id = %s
             AND (request_id = %s OR (state = 'running' AND deleted_at IS NULL))
             AND ({scope}))
"""

FIND_BY_REQUEST = """
SELECT
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
FROM {turns}
WHERE tenant_id = %s AND chat_id = %s AND request_id = %s AND ({scope})
"""

FIND_RUNNING = """
SELECT
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
FROM {turns}
WHERE tenant_id = %s AND chat_id = %s AND state = 'running' AND deleted_at IS NULL
  AND ({scope})
"""

# The three finalizing CAS statements (CAS_STATE, CAS_COMPLETED, FINALIZE_ORPHAN) announce
# a win on the schema's finalize channel (``finalize_channel``) from their RETURNING row,
# in the same statement: the notification is delivered when the transaction commits, and
# never for a CAS that lost (no row) or a transaction that rolled back. The outer SELECT
# returns one row per win, so the cursor's rowcount stays "1 if this call won".
CAS_STATE = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds}),
won AS (
UPDATE {turns} SET
    state = %s,
    error_code = %s,
    error_detail = %s,
    assistant_message_id = COALESCE(%s::uuid, assistant_message_id),
    provider_response_id = COALESCE(%s::varchar, provider_response_id),
    completed_at = clock.ts,
    updated_at = clock.ts
FROM clock
WHERE id = %s AND state = 'running' AND ({scope})
RETURNING id)
SELECT pg_notify({channel}, id::text) FROM won
"""

CAS_COMPLETED = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds}),
won AS (
UPDATE {turns} SET
    state = 'completed',
    assistant_message_id = %s,
    provider_response_id = COALESCE(%s::varchar, provider_response_id),
    completed_at = clock.ts,
    updated_at = clock.ts
FROM clock
WHERE id = %s AND state = 'running' AND ({scope})
RETURNING id)
SELECT pg_notify({channel}, id::text) FROM won
"""

SET_ASSISTANT_MESSAGE = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
UPDATE {turns} SET assistant_message_id = %s, updated_at = clock.ts
FROM clock
WHERE id = %s AND ({scope})
"""

# Idempotent: a second delete keeps the first deleted_at, replaced_by_request_id and
# updated_at (SET expressions read the row as it was before this statement).
SOFT_DELETE = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
UPDATE {turns} SET
    deleted_at = COALESCE(deleted_at, clock.ts),
    replaced_by_request_id = CASE WHEN deleted_at IS NULL THEN %s::uuid
                                  ELSE replaced_by_request_id END,
    updated_at = CASE WHEN deleted_at IS NULL THEN clock.ts ELSE updated_at END
FROM clock
WHERE id = %s AND ({scope})
"""

FIND_LATEST = """
SELECT
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
FROM {turns}
WHERE tenant_id = %s AND chat_id = %s AND deleted_at IS NULL AND ({scope})
ORDER BY started_at DESC, id DESC
LIMIT 1
"""

UPDATE_PROGRESS = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
UPDATE {turns} SET last_progress_at = clock.ts, updated_at = clock.ts
FROM clock
WHERE id = %s AND state = 'running' AND ({scope})
"""

#: The keep-alive hub's one statement per tick (docs/design.md, *Keep-alive hub*). The
#: targets come as three parallel arrays: the target's position, the turn id, and a tenant
#: the target's scope permits for that turn (NULL: any tenant), one row per permitted
#: tenant (``AccessScope.tenants_for_turn``); then the distinct turn ids, for the primary
#: key. Only ``last_progress_at`` and ``updated_at`` change, so the update stays HOT.
#: Returns the positions of the targets whose turn was touched and whose scope permits it.
TOUCH_TURNS = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds}),
target AS (
    SELECT * FROM unnest(%s::int4[], %s::uuid[], %s::uuid[]) AS target(ord, id, tenant_id)
),
touched AS (
    UPDATE {turns} AS turn SET last_progress_at = clock.ts, updated_at = clock.ts
    FROM clock
    WHERE turn.id = ANY(%s::uuid[]) AND turn.state = 'running'
      AND EXISTS (
        SELECT 1 FROM target
        WHERE target.id = turn.id
          AND (target.tenant_id IS NULL OR target.tenant_id = turn.tenant_id))
    RETURNING turn.id, turn.tenant_id
)
SELECT target.ord
FROM target JOIN touched ON touched.id = target.id
WHERE target.tenant_id IS NULL OR target.tenant_id = touched.tenant_id
"""

FIND_ORPHANS = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
SELECT
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
FROM {turns}, clock
WHERE state = 'running' AND deleted_at IS NULL
  AND last_progress_at <= clock.ts - make_interval(secs => %s)
ORDER BY last_progress_at, id
LIMIT %s
"""

FINALIZE_ORPHAN = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds}),
won AS (
UPDATE {turns} SET
    state = 'failed',
    error_code = %s,
    completed_at = clock.ts,
    updated_at = clock.ts
FROM clock
WHERE id = %s AND state = 'running' AND deleted_at IS NULL
  AND last_progress_at <= clock.ts - make_interval(secs => %s)
RETURNING id)
SELECT pg_notify({channel}, id::text) FROM won
"""

# The same CAS given the candidate's tenant (the watchdog reads it off the candidate row):
# pruned to the tenant's partition, a single-shard statement on a distributed PostgreSQL
# (docs/scaling.md).
FINALIZE_TENANT_ORPHAN = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds}),
won AS (
UPDATE {turns} SET
    state = 'failed',
    error_code = %s,
    completed_at = clock.ts,
    updated_at = clock.ts
FROM clock
WHERE id = %s AND tenant_id = %s AND state = 'running' AND deleted_at IS NULL
  AND last_progress_at <= clock.ts - make_interval(secs => %s)
RETURNING id)
SELECT pg_notify({channel}, id::text) FROM won
"""

# Which of the given turns are still running: the re-check of the turns a stream waits on
# (after the listening connection reconnects, and every poll when notifications are off).
# A primary-key lookup per id.
STILL_RUNNING = """
SELECT id FROM {turns} WHERE id = ANY(%s) AND state = 'running'
"""

# The chat lock: a row lock on the chat's row of chat_heads, held until the transaction
# ends. The row is created on first use (INSERT ... ON CONFLICT DO NOTHING: a second
# inserter waits for the first to end) and locked by the next statement, whose fresh
# snapshot sees it. A row lock lives with the tenant's rows (its partition, or its shard
# on a distributed PostgreSQL), where an advisory lock would be local to one node
# (docs/design.md, *The latest-turn lock*; docs/scaling.md).
#
# For a scope that permits the whole tenant (a pure check, ``AccessScope.permits_tenant``).
CREATE_CHAT_HEAD = """
INSERT INTO {heads} (tenant_id, chat_id) VALUES (%s, %s) ON CONFLICT DO NOTHING
"""

LOCK_CHAT = """
SELECT 1 FROM {heads} WHERE tenant_id = %s AND chat_id = %s FOR UPDATE
"""

# The chat lock for any other scope (one that names turns): created and taken only when the
# scope sees a live turn of the chat, checked in the same statements, so a caller never
# holds, or waits for, the lock of a chat it cannot see (docs/design.md, *The latest-turn
# lock*).
CREATE_VISIBLE_CHAT_HEAD = """
INSERT INTO {heads} (tenant_id, chat_id)
SELECT %s::uuid, %s::uuid
WHERE EXISTS (SELECT 1 FROM {turns}
               WHERE tenant_id = %s AND chat_id = %s AND deleted_at IS NULL AND ({scope}))
ON CONFLICT DO NOTHING
"""

LOCK_VISIBLE_CHAT = """
SELECT 1 FROM {heads}
WHERE tenant_id = %s AND chat_id = %s
  AND EXISTS (SELECT 1 FROM {turns}
               WHERE tenant_id = %s AND chat_id = %s AND deleted_at IS NULL AND ({scope}))
FOR UPDATE
"""

LATEST_FOR_UPDATE = """
SELECT
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
FROM {turns}
WHERE tenant_id = %s AND chat_id = %s AND deleted_at IS NULL AND ({scope})
ORDER BY started_at DESC, id DESC
LIMIT 1
FOR UPDATE
"""

LATEST_ID = """
SELECT id
FROM {turns}
WHERE tenant_id = %s AND chat_id = %s AND deleted_at IS NULL AND ({scope})
ORDER BY started_at DESC, id DESC
LIMIT 1
"""

UPDATE_PREFLIGHT = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
UPDATE {turns} SET
    reserve_tokens = %s,
    max_output_tokens_applied = %s,
    reserved_credits_micro = %s,
    policy_version_applied = %s,
    effective_model = %s,
    minimal_generation_floor_applied = %s,
    updated_at = clock.ts
FROM clock
WHERE id = %s AND state = 'running' AND ({scope})
"""

INCREMENT_TOOL = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
UPDATE {turns} SET {counter} = {counter} + 1, updated_at = clock.ts
FROM clock
WHERE id = %s AND state = 'running' AND deleted_at IS NULL AND ({scope})
"""

GET_TURN = """
SELECT
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
FROM {turns}
WHERE id = %s AND ({scope})
"""

# A page of a chat's live turns, newest first, strictly before the cursor's (started_at,
# id): an index range scan of chat_turns_chat_latest, stopping after LIMIT rows. The limit
# follows the scope in the text, so its parameter comes after the scope's.
LIST_TURNS = """
SELECT
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
FROM {turns}
WHERE chat_id = %s AND tenant_id = %s AND deleted_at IS NULL
  AND (started_at, id) < (%s, %s) AND ({scope})
ORDER BY started_at DESC, id DESC
LIMIT %s
"""

# The same, deleted turns included: the chat's rows through the unique (chat_id,
# request_id) index, then sorted (one chat's rows, however many turns the table holds).
LIST_TURNS_ALL = """
SELECT
    id, tenant_id, chat_id, request_id, requester_type, requester_user_id, state,
    provider_name, provider_response_id, assistant_message_id, error_code, error_detail,
    reserve_tokens, max_output_tokens_applied, reserved_credits_micro,
    policy_version_applied, effective_model, minimal_generation_floor_applied,
    web_search_enabled, web_search_completed_count, code_interpreter_completed_count,
    file_search_completed_count, deleted_at, replaced_by_request_id,
    started_at, last_progress_at, completed_at, updated_at, request_fingerprint
FROM {turns}
WHERE chat_id = %s AND tenant_id = %s
  AND (started_at, id) < (%s, %s) AND ({scope})
ORDER BY started_at DESC, id DESC
LIMIT %s
"""

# Retention: one batch of terminal turns that ended before the cutoff, oldest first, through
# chat_turns_terminal_completed. SKIP LOCKED passes over rows another transaction holds
# (a turn being written). The cutoff is a scalar subquery over the one clock reading, so
# it is computed once and bounds the index scan. "id = ANY (ARRAY(...))" deletes the batch
# through the primary key; "id IN (...)" lets the planner hash-join the whole table.
PURGE_TURNS = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
DELETE FROM {turns}
WHERE id = ANY (ARRAY(
    SELECT id FROM {turns}
    WHERE state <> 'running'
      AND completed_at <= (SELECT ts FROM clock) - make_interval(secs => %s)
    ORDER BY completed_at, id
    LIMIT %s
    FOR UPDATE SKIP LOCKED))
"""

COUNT_PURGEABLE = """
WITH clock AS (SELECT clock_timestamp() AS ts{bounds})
SELECT count(*) FROM {turns}
WHERE state <> 'running'
  AND completed_at <= (SELECT ts FROM clock) - make_interval(secs => %s)
"""

# Erasure: one batch of a tenant's turns, running ones included. It waits for rows another
# transaction holds (no SKIP LOCKED): an erasure must not leave rows behind.
ERASE_TENANT = """
DELETE FROM {turns}
WHERE id = ANY (ARRAY(
    SELECT id FROM {turns}
    WHERE tenant_id = %s
    LIMIT %s
    FOR UPDATE))
"""

# Erasure of a tenant's chat_heads rows, after its last batch of turns.
ERASE_TENANT_HEADS = """
DELETE FROM {heads} WHERE tenant_id = %s
"""

COUNT_TENANT = """
SELECT count(*) FROM {turns} WHERE tenant_id = %s
"""

#: The names of the statements whose rows are turns (``TURN_COLUMNS``, in order).
TURN_ROW_STATEMENTS: tuple[str, ...] = (
    "INSERT_TURN",
    "FIND_BY_REQUEST",
    "FIND_RUNNING",
    "FIND_LATEST",
    "FIND_ORPHANS",
    "LATEST_FOR_UPDATE",
    "GET_TURN",
    "LIST_TURNS",
    "LIST_TURNS_ALL",
)

# --------------------------------------------------------------------------- leader lease

# ``{leases}`` is the schema-qualified ``watchdog_leases`` table. One statement takes a free
# or expired lease, or renews one's own, atomically (the conflicting row is locked and the
# WHERE re-checked on its latest version); a row back means this holder leads until
# ``expires_at``. Database time only (``clock_timestamp()``). Parameters: name, holder,
# lease seconds.
TAKE_LEASE = """
INSERT INTO {leases} AS lease (name, holder, expires_at)
VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s))
ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE lease.expires_at < clock_timestamp() OR lease.holder = excluded.holder
RETURNING holder
"""

# Gives one's own lease up at once (name, holder); someone else's is left alone.
RELEASE_LEASE = "DELETE FROM {leases} WHERE name = %s AND holder = %s"

# --------------------------------------------------------------------------- migrations

CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp())
"""

VERSION_TABLE_EXISTS = "SELECT to_regclass(quote_ident(%s) || '.schema_migrations') IS NOT NULL"

READ_VERSIONS = "SELECT version, name, checksum FROM {table}"

RECORD_VERSION = "INSERT INTO {table} (version, name, checksum) VALUES (%s, %s, %s)"

SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = %s"

CREATE_SCHEMA = "CREATE SCHEMA {schema}"

SET_LOCAL_SEARCH_PATH = "SET LOCAL search_path TO {schema}"

# The layout bookkeeping: ``{table}`` is the schema-qualified ``schema_settings``, one row
# per setting. The row ``partitions`` records the layout chosen when the schema was first
# migrated: '0' plain, 'N' chat_turns hash-partitioned by tenant_id into N partitions. A
# schema migrated before the table existed has no row: plain.
CREATE_SETTINGS_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    name text PRIMARY KEY,
    value text NOT NULL)
"""

# Whether schema_settings exists, and whether this role may read it.
SETTINGS_TABLE_EXISTS = """
SELECT t IS NOT NULL, COALESCE(has_table_privilege(t, 'SELECT'), false)
FROM to_regclass(quote_ident(%s) || '.schema_settings') AS t
"""

# The layout as the catalog shows it, for a role that may not read schema_settings: the
# number of partitions of chat_turns (0: plain). Catalogs need no privileges.
COUNT_PARTITIONS = """
SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass(quote_ident(%s) || '.chat_turns')
"""

READ_PARTITIONS = "SELECT value FROM {table} WHERE name = 'partitions'"

RECORD_PARTITIONS = """
INSERT INTO {table} (name, value) VALUES ('partitions', %s) ON CONFLICT (name) DO NOTHING
"""

# What a partitioned-layout migration file reads for the partition count, for the rest of
# the migration's transaction.
SET_LOCAL_PARTITIONS = "SELECT set_config('turnstore.partitions', %s, true)"

# The script of ``schema_sql``, for a host's own DDL tool: no parameters, values as literals.
SCRIPT_HEADER = """
-- turnstore schema {schema}
CREATE SCHEMA IF NOT EXISTS {schema};
SET search_path TO {schema};
"""

SCRIPT_SET_PARTITIONS = "SET turnstore.partitions = {partitions};"

SCRIPT_RECORD_PARTITIONS = """
INSERT INTO {table} (name, value) VALUES ('partitions', {partitions})
ON CONFLICT (name) DO NOTHING;
"""

SCRIPT_RECORD_VERSION = """
INSERT INTO {table} (version, name, checksum) VALUES ({version}, {name}, {checksum})
ON CONFLICT (version) DO NOTHING;
"""

# 1414745415 is MIGRATION_LOCK_CLASS.
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(1414745415, hashtext(%s))"


# --------------------------------------------------------------------------- rendering

#: The prefix of every finalize channel name (``finalize_channel``).
FINALIZE_CHANNEL_PREFIX = "turnstore_finalized_"


def finalize_channel(schema: str) -> str:
    """The ``LISTEN`` channel on which a schema's finalizing statements announce the turn
    they finalized (the payload is the turn id).

    Derived from a hash of the schema, so any schema name (up to PostgreSQL's 63 bytes,
    quotes and all) gives a channel of 52 lowercase ASCII bytes, within the 63-byte limit
    of an identifier, and two schemas in one database never share a channel.
    """
    digest = hashlib.blake2b(f"turnstore.finalized:{schema}".encode(), digest_size=16)
    return FINALIZE_CHANNEL_PREFIX + digest.hexdigest()


def param_ident(*names: str) -> sql.SQL:
    """A quoted identifier for a statement executed with parameters.

    psycopg reads every ``%`` of such a statement as a placeholder, quoted identifiers
    included, so a name like ``50%off`` would break it; the ``%`` is doubled here (and only
    here: a statement executed without parameters is sent as written).
    """
    return sql.SQL(sql.Identifier(*names).as_string(None).replace("%", "%%"))


@dataclass(frozen=True)
class StatementBounds:
    """The lock and statement timeouts a store sets, per transaction, on every statement
    that may wait for a lock (docs/deploying.md, *Timeouts*).

    They are set with ``set_config(name, value, true)``: local to the transaction, like
    ``SET LOCAL``, so they hold through a transaction-pooling pooler (which refuses startup
    options and hands each transaction to any server session) and end with the
    transaction, the caller's own included. ``None`` leaves the server's setting.
    """

    lock_timeout_ms: int | None = None
    statement_timeout_ms: int | None = None

    def _settings(self) -> list[tuple[str, int]]:
        return [
            (name, value)
            for name, value in (
                ("lock_timeout", self.lock_timeout_ms),
                ("statement_timeout", self.statement_timeout_ms),
            )
            if value is not None
        ]

    @property
    def select_items(self) -> str:
        """Extra select items for a statement's ``clock`` CTE (``{bounds}``), which every
        statement that writes scans before it can wait for a row lock."""
        return "".join(
            f", set_config('{name}', '{value}', true) AS {name}" for name, value in self._settings()
        )

    @property
    def statement(self) -> str | None:
        """A statement setting the bounds on its own, sent first in a transaction's
        pipeline (so the statement after it is bounded as a whole); ``None`` when none."""
        settings = self._settings()
        if not settings:
            return None
        return "SELECT " + ", ".join(
            f"set_config('{name}', '{value}', true)" for name, value in settings
        )


#: No bounds: the server's own ``lock_timeout`` and ``statement_timeout`` apply.
NO_BOUNDS = StatementBounds()


def render(template: str, schema: str, *, bounds: str = "", **identifiers: str) -> str:
    """Render a statement for ``schema``; identifiers are quoted, never interpolated raw.

    Every rendered statement is executed with parameters, so identifiers are escaped for it.
    ``{scope}``, if present, is left as ``SCOPE_MARK`` for ``render_scoped`` to split on;
    ``{bounds}`` becomes ``bounds`` (``StatementBounds.select_items``, text this module
    builds from two integers).
    """
    names = {key: param_ident(value) for key, value in identifiers.items()}
    query = sql.SQL(template.strip()).format(
        turns=param_ident(schema, "chat_turns"),
        heads=param_ident(schema, "chat_heads"),
        scope=sql.SQL(SCOPE_MARK),
        channel=sql.Literal(finalize_channel(schema)),
        bounds=sql.SQL(bounds),
        **names,
    )
    return query.as_string(None)


def render_scoped(
    template: str, schema: str, *, bounds: str = "", **identifiers: str
) -> ScopedStatement:
    """Render a statement with a ``{scope}`` placeholder for ``schema``, split around it."""
    head, tail = render(template, schema, bounds=bounds, **identifiers).split(SCOPE_MARK)
    return ScopedStatement(head, tail)
