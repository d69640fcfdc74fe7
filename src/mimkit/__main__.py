"""``python -m mimkit``: the ``mimkit`` command."""

import sys

from mimkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
