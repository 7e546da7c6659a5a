"""docs/deploying.md, *Error codes*: the table lists every error class, with its code and
whether retrying helps, exactly as the classes say."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from turnstore import errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploying.md"
ROW = re.compile(r"^\| `(?P<code>[a-z_]+)` \| `(?P<cls>\w+)` \| (?P<retry>yes|no) \|", re.M)


def _documented() -> dict[str, tuple[str, bool]]:
    section = DOC.read_text(encoding="utf-8").split("## Error codes", 1)[1]
    return {m["cls"]: (m["code"], m["retry"] == "yes") for m in ROW.finditer(section)}


def _classes() -> dict[str, tuple[str, bool]]:
    return {
        name: (cls.code, cls.retryable)
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.TurnStoreError) and cls is not errors.TurnStoreError
    }


def test_every_error_class_is_in_the_table_with_its_code_and_retryable() -> None:
    assert _documented() == _classes()


def test_every_error_has_a_code_and_says_whether_to_retry() -> None:
    for name, (code, retryable) in _classes().items():
        assert code != errors.TurnStoreError.code, name
        assert isinstance(retryable, bool), name
