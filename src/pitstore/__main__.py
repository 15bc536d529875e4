"""``python -m pitstore``: the ``pitstore`` command line."""

from pitstore.cli import app

if __name__ == "__main__":
    app(prog_name="pitstore")
