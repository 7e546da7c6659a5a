"""Run the examples of docs/testing.md that need no server: the in-memory fake project (the
conformance project runs in ``tests/postgres/test_docs_testing_conformance.py``)."""

from pathlib import Path

import pytest

from docs_testing_examples import PROJECTS, examples, run_example_project


def test_every_example_project_is_run() -> None:
    assert set(examples()) == set(PROJECTS)


@pytest.mark.parametrize("project", ["fake"])
def test_example_project_passes(tmp_path: Path, project: str) -> None:
    run_example_project(tmp_path, project)
