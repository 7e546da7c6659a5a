-- turnstore 0002: a bound on error_detail, the one stored text without one (docs/design.md,
-- The table and its constraints). The other texts are bounded by their varchar(n) types.
-- Runs with search_path set to the target schema; names below are unqualified on purpose.

-- Nothing bounded error_detail before this migration: a longer detail written then is cut
-- to the bound, so that the constraint holds for every row and a later update of such a row
-- (a soft delete, say) is not refused. The detail is free text for people; no rule reads it.
UPDATE chat_turns
   SET error_detail = left(error_detail, 16384)
 WHERE char_length(error_detail) > 16384;

-- Characters, not bytes: the same unit as varchar(n) and as the parameter models' limits.
ALTER TABLE chat_turns
    ADD CONSTRAINT chat_turns_error_detail_length_check
        CHECK (char_length(error_detail) <= 16384);
