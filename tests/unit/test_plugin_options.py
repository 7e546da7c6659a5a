"""The plugin's backend selection, seen from a host's command line and ini file."""

import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).parents[1] / "conformance" / "test_conformance.py"


def collect(tmp_path: Path, *args: str, ini: str = "") -> list[str]:
    """Node ids pytest collects from the conformance suite, run as a separate process."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + ini)
    (tmp_path / "test_suite.py").write_text(SUITE.read_text())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def backends_of(ids: list[str]) -> set[str]:
    """The backends the collected tests run on; every test must name exactly one."""
    found: set[str] = set()
    for node in ids:
        params = node.rsplit("[", 1)[1].rstrip("]").split("-")
        named = [p for p in params if p in ("memory", "postgres")]
        assert len(named) == 1, node
        found.update(named)
    return found


def test_default_runs_both_backends(tmp_path: Path) -> None:
    ids = collect(tmp_path)
    assert backends_of(ids) == {"memory", "postgres"}


@pytest.mark.parametrize("backend", ["memory", "postgres"])
def test_option_keeps_one_backend(tmp_path: Path, backend: str) -> None:
    every = collect(tmp_path)
    ids = collect(tmp_path, "--turnstore-backend", backend)
    assert backends_of(ids) == {backend}
    assert len(ids) * 2 == len(every)


def test_ini_key_keeps_one_backend(tmp_path: Path) -> None:
    ids = collect(tmp_path, ini="turnstore_backends = memory\n")
    assert backends_of(ids) == {"memory"}


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nturnstore_backends = mysql\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "mysql" in result.stdout + result.stderr
