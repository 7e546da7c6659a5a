-- turnstore 0005: request fingerprints and the retention scan (docs/design.md, Starting a
-- turn; docs/retention.md).
-- Runs with search_path set to the target schema; names below are unqualified on purpose.

-- A digest of what the request asked for (hex or any caller text, 1..128 characters);
-- NULL when the caller gave none. Adding a nullable column without a default rewrites
-- nothing.
ALTER TABLE chat_turns ADD COLUMN request_fingerprint text;

ALTER TABLE chat_turns ADD CONSTRAINT chat_turns_request_fingerprint_check
    CHECK (char_length(request_fingerprint) BETWEEN 1 AND 128);

-- Retention deletes terminal turns oldest first by completed_at, a batch at a time; this
-- index finds each batch without scanning the table. Running turns are not in it, so a
-- keep-alive write never touches it.
CREATE INDEX chat_turns_terminal_completed
    ON chat_turns (completed_at, id)
    WHERE state <> 'running';
