"""``python -m mimkit``: the ``mimkit`` command."""

from mimkit.cli import run

if __name__ == "__main__":
    run()
