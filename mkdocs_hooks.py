"""mkdocs hooks for the documentation site (see mkdocs.yml).

The guides in docs/ link to files of the repository outside docs/ (``../README.md``,
``../CHANGELOG.md``): right when reading the repository, but not pages of the site. On the
site such a link becomes its label followed by the file's path in the repository, so
``mkdocs build --strict`` still fails on every other broken link.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["on_page_markdown"]

_OUTSIDE = re.compile(r"\[([^\]]+)\]\(\.\./([^)#\s]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _OUTSIDE.sub(lambda m: f"{m.group(1)} (`{m.group(2)}` in the repository)", markdown)
