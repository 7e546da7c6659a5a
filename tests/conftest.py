"""Fixtures shared by every layer of the test suite (the server fixtures come from the
``turnstore`` pytest plugin)."""

import socket
import sys

import pytest


@pytest.fixture
def unreachable_dsn() -> str:
    """A DSN whose port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=5"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many hostile inputs the hostile-input suites tried (tests/hostile_support.py)."""
    support = sys.modules.get("hostile_support")
    if support is not None and support.HOSTILE_INPUTS.count:
        terminalreporter.write_line(f"hostile inputs tried: {support.HOSTILE_INPUTS.count}")
