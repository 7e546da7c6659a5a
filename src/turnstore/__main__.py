"""``python -m turnstore``: the same as the ``turnstore`` command."""

import sys

from turnstore.cli import main

if __name__ == "__main__":
    sys.exit(main())
