"""Run the conformance example project of docs/testing.md, which needs a PostgreSQL server."""

from pathlib import Path

import pytest

from docs_testing_examples import run_example_project


@pytest.mark.parametrize("project", ["conformance"])
def test_example_project_passes(tmp_path: Path, project: str) -> None:
    run_example_project(tmp_path, project)
