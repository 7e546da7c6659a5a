"""``python -m turnstore``: the same as the ``turnstore`` command."""

import sys

from turnstore.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
