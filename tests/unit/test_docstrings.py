"""Every public method of the repositories, the stores, the lifecycle and the keep-alive has
a docstring: the API reference (mkdocs.yml) is built from them."""

from __future__ import annotations

import inspect

import pytest

from turnstore.keepalive import KeepAlive
from turnstore.lifecycle import RejectReason, StartOutcome, TurnLifecycle
from turnstore.memory import InMemoryStore, InMemoryTurnRepository
from turnstore.memory.store import InProcessFinalizeSignals
from turnstore.postgres import PostgresStore, PostgresTurnRepository
from turnstore.postgres.notify import PostgresFinalizeSignals
from turnstore.repository import TurnRepository, TurnStore

CLASSES = [
    TurnRepository,
    TurnStore,
    PostgresTurnRepository,
    InMemoryTurnRepository,
    PostgresStore,
    InMemoryStore,
    TurnLifecycle,
    StartOutcome,
    KeepAlive,
    PostgresFinalizeSignals,
    InProcessFinalizeSignals,
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_public_members_have_docstrings(cls: type) -> None:
    missing = [
        name
        for name, member in vars(cls).items()
        if not name.startswith("_")
        and (inspect.isfunction(member) or isinstance(member, (property, classmethod)))
        and not inspect.getdoc(member)
    ]
    assert not missing, f"{cls.__name__}: no docstring for {missing}"


def test_every_reject_reason_is_documented() -> None:
    doc = inspect.getdoc(RejectReason) or ""
    assert all(f"``{reason.value}``" in doc for reason in RejectReason)
