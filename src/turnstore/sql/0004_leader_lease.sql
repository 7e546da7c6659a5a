-- turnstore 0004: the watchdog's leader lease (docs/design.md, Leader election).
-- Runs with search_path set to the target schema; names below are unqualified on purpose.

-- One row per lease name: who holds it, and until when (the database's clock). A holder
-- leads while expires_at lies ahead; anyone may take a lease whose expires_at has passed.
CREATE TABLE watchdog_leases (
    name        text        PRIMARY KEY,
    holder      uuid        NOT NULL,
    expires_at  timestamptz NOT NULL
);
