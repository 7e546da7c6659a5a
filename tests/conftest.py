"""Fixtures shared by every layer of the test suite (the server fixtures come from the
``turnstore`` pytest plugin)."""

import socket

import pytest


@pytest.fixture
def unreachable_dsn() -> str:
    """A DSN whose port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=5"
