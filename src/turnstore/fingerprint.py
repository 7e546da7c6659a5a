"""Request fingerprints: a digest of what a request asked for, stored with its turn.

A client's request id is an idempotency key; the fingerprint says whether a resend with the
same key is the *same request*. ``begin_turn`` refuses a key that comes back with another
fingerprint (``request_fingerprint_mismatch``) instead of replaying an answer to a
different question (docs/design.md, *Starting a turn*).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["MAX_FINGERPRINT_LENGTH", "normalize_fingerprint", "request_fingerprint"]

#: The longest fingerprint stored, in characters: a SHA-512 digest in hex. The column's
#: CHECK constraint (migration 0005) holds the same bound.
MAX_FINGERPRINT_LENGTH = 128
#: The longest raw digest accepted as ``bytes`` (stored as hex, two characters a byte).
_MAX_DIGEST_BYTES = MAX_FINGERPRINT_LENGTH // 2


def request_fingerprint(payload: Any) -> str:
    """The SHA-256 hex digest of ``payload`` as canonical JSON (keys sorted, no spaces,
    UTF-8): equal for equal JSON values whatever their key order.

    ``payload`` must be JSON-serializable (dicts, lists, strings, numbers, bools, None);
    fingerprint what decides the answer (the user message, the model, the options), not
    what changes on every resend (timestamps, trace ids).
    """
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_fingerprint(value: object) -> object:
    """A fingerprint as stored: ``bytes`` (a raw digest, 1..64 bytes) become lower-case hex;
    text is kept as given (the length bound is checked by the model). Anything else is
    left for the model to refuse."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if not 1 <= len(raw) <= _MAX_DIGEST_BYTES:
            raise ValueError(
                f"a fingerprint digest must be 1..{_MAX_DIGEST_BYTES} bytes, got {len(raw)}"
            )
        return raw.hex()
    return value
