"""Settings shared by the lifecycle and the watchdog: how often a stream proves it is alive,
and how long a silent turn may run before the watchdog fails it.

They live together because they bound each other: a keep-alive interval must stay at most
a third of the watchdog's orphan timeout (``KeepAliveSettings.for_watchdog`` derives one
from the other).

Both models are strict: an int field takes an ``int`` (not a bool, float or string), a
seconds field an ``int`` or a finite ``float`` (not a bool), a bool field a ``bool``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from turnstore.validation import ExactBool, Number

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_SECS",
    "DEFAULT_MAX_SILENCE_FRACTION",
    "DEFAULT_ORPHAN_TIMEOUT_SECS",
    "MAX_ORPHAN_TIMEOUT_SECS",
    "MIN_ORPHAN_TIMEOUT_SECS",
    "KeepAliveSettings",
    "OrphanTimeoutSecs",
    "WatchdogSettings",
]

#: How long a store waits for a chat or row lock by default, on PostgreSQL and in the fake
#: (docs/deploying.md, *Timeouts*).
DEFAULT_LOCK_TIMEOUT_SECS = 10.0

MIN_ORPHAN_TIMEOUT_SECS = 60
MAX_ORPHAN_TIMEOUT_SECS = 3600
DEFAULT_ORPHAN_TIMEOUT_SECS = 300
#: The longest silence a heartbeat vouches for, as a fraction of the orphan timeout.
DEFAULT_MAX_SILENCE_FRACTION = 0.4

#: An orphan timeout in whole seconds, validated to 60..3600.
OrphanTimeoutSecs = Annotated[
    int, Field(strict=True, ge=MIN_ORPHAN_TIMEOUT_SECS, le=MAX_ORPHAN_TIMEOUT_SECS)
]


class WatchdogSettings(BaseModel):
    """Validated watchdog settings.

    - ``orphan_timeout_secs``: silence after which a running turn is an orphan (60..3600,
      default 300). Keep-alive intervals must stay at most a third of it.
    - ``scan_interval_secs``: pause between two scans of the running loop (default 60).
    - ``batch_limit``: at most this many candidates per scan (default 100); the rest wait
      for the next scan, oldest first.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    orphan_timeout_secs: OrphanTimeoutSecs = DEFAULT_ORPHAN_TIMEOUT_SECS
    scan_interval_secs: Number = Field(default=60.0, gt=0, le=MAX_ORPHAN_TIMEOUT_SECS)
    batch_limit: int = Field(default=100, strict=True, ge=1, le=10_000)


class KeepAliveSettings(BaseModel):
    """How often a stream refreshes ``last_progress_at``, and for how long a silent stream
    is still vouched for.

    ``interval_secs`` must be at most a third of ``orphan_timeout_secs`` (the watchdog's
    timeout), so that two writes in a row can be late or lost before the watchdog takes a
    live stream for an orphan. With ``heartbeat`` (the default) a background task writes
    every interval even when no chunk arrives, so a model that thinks silently for a while
    is not failed, but only for ``max_silence_secs`` after the last ``touch()`` (or after
    the block was entered): then the heartbeat stops writing, so a provider call that never
    returns leaves an orphan the watchdog reclaims; a later ``touch()`` resumes the writes
    while the turn still runs. ``max_silence_secs`` left at ``None`` means 0.4 of the orphan
    timeout (120 s for the default 300 s; ``silence_limit_secs`` gives the value in force);
    it must lie between the interval and the timeout.
    Without the heartbeat, only ``touch()`` writes, and a stream that stops producing
    chunks becomes an orphan.

    With ``batched`` (the default), an asyncio keep-alive whose store offers a keep-alive
    hub (``store.keepalive_hub()``: both built-in asyncio stores) hands its writes to the
    hub, which writes the due streams of the whole process in one statement per tick; a
    touch is then written at the next tick, up to one interval later.
    ``batched=False`` writes per turn, at once when due: better for a process that
    streams one turn at a time (docs/design.md, *Keep-alive hub*). The sync API always
    writes per turn.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    interval_secs: Number = Field(default=30.0, gt=0)
    orphan_timeout_secs: OrphanTimeoutSecs = DEFAULT_ORPHAN_TIMEOUT_SECS
    heartbeat: ExactBool = True
    max_silence_secs: Number | None = Field(default=None, gt=0)
    batched: ExactBool = True

    @property
    def silence_limit_secs(self) -> float:
        """``max_silence_secs``, or by default 0.4 of the orphan timeout."""
        if self.max_silence_secs is not None:
            return self.max_silence_secs
        return DEFAULT_MAX_SILENCE_FRACTION * self.orphan_timeout_secs

    @classmethod
    def for_watchdog(
        cls,
        watchdog: WatchdogSettings,
        *,
        interval_secs: float | None = None,
        heartbeat: bool = True,
        max_silence_secs: float | None = None,
        batched: bool = True,
    ) -> KeepAliveSettings:
        """Settings checked against the timeout the watchdog really uses, so the two cannot
        drift apart; the interval defaults to a tenth of that timeout, the longest silence
        to 0.4 of it."""
        timeout = watchdog.orphan_timeout_secs
        return cls(
            interval_secs=interval_secs if interval_secs is not None else timeout / 10,
            orphan_timeout_secs=timeout,
            heartbeat=heartbeat,
            max_silence_secs=max_silence_secs,
            batched=batched,
        )

    @model_validator(mode="after")
    def _comfortably_below_timeout(self) -> KeepAliveSettings:
        if self.interval_secs * 3 > self.orphan_timeout_secs:
            raise ValueError(
                f"keep-alive interval ({self.interval_secs} s) must be at most a third of "
                f"the orphan timeout ({self.orphan_timeout_secs} s)"
            )
        if not self.interval_secs <= self.silence_limit_secs < self.orphan_timeout_secs:
            raise ValueError(
                f"max_silence_secs ({self.silence_limit_secs} s) must be at least the "
                f"keep-alive interval ({self.interval_secs} s) and below the orphan "
                f"timeout ({self.orphan_timeout_secs} s)"
            )
        return self
