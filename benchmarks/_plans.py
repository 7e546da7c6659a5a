"""Capture the plan of every statement a repository call runs, with ``auto_explain``.

``auto_explain`` (a contrib module shipped with PostgreSQL) is loaded into the session and
told to send each statement's ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` to the client as a
NOTICE. The plans are therefore those of the very SQL turnstore ships, with the parameters
of the call, whatever helper statements a method runs (an advisory lock, a classification
query after an ``ON CONFLICT``), and with the plan cache in the state a busy application
puts it in (psycopg prepares a statement after a few executions; the server may then switch
to a generic plan). No copy of the SQL is kept here that could drift from the library's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.errors import Diagnostic

__all__ = ["PlanCapture", "StatementPlan", "enable_auto_explain", "seq_scans", "walk"]

_NOTICE = re.compile(r"^duration: (?P<ms>[0-9.]+) ms\s+plan:\s*(?P<plan>\{.*\})\s*$", re.S)

AUTO_EXPLAIN_SETTINGS = (
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_timing = on",
    "SET auto_explain.log_format = json",
    "SET auto_explain.log_level = notice",
    "SET auto_explain.log_nested_statements = on",
)


@dataclass(frozen=True)
class StatementPlan:
    """One executed statement: its text, server execution time, and JSON plan."""

    query: str
    duration_ms: float
    plan: dict[str, Any]


@dataclass
class PlanCapture:
    """Collects the plans the server sends while attached to a connection."""

    plans: list[StatementPlan] = field(default_factory=list)

    def __call__(self, diag: Diagnostic) -> None:
        match = _NOTICE.match(diag.message_primary or "")
        if match is None:
            return
        doc = json.loads(match.group("plan"))
        self.plans.append(
            StatementPlan(
                query=str(doc.get("Query Text", "")),
                duration_ms=float(match.group("ms")),
                plan=doc["Plan"],
            )
        )

    def take(self) -> list[StatementPlan]:
        taken, self.plans = self.plans, []
        return taken


async def enable_auto_explain(conn: psycopg.AsyncConnection[Any], capture: PlanCapture) -> None:
    """Make every statement on ``conn`` send its analyzed plan to ``capture``."""
    await conn.execute("LOAD 'auto_explain'")
    for setting in AUTO_EXPLAIN_SETTINGS:
        await conn.execute(setting)
    conn.add_notice_handler(capture)


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a JSON plan tree, depth first."""
    yield node
    for child in node.get("Plans", ()):
        yield from walk(child)


def seq_scans(plan: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """The sequential scans of ``relation`` anywhere in ``plan``."""
    return [
        node
        for node in walk(plan)
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") == relation
    ]
