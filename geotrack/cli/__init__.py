"""The ``geotrack`` command: a thin shell over the library, one module per command.

Each command turns its options into a configuration and calls one library function.
Errors geotrack raises on purpose become one ``Error: ...`` line and exit code 1 here
(:func:`geotrack.cli._common.errors`), and only here; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from geotrack.cli import export as _export  # noqa: F401
from geotrack.cli import import_ as _import  # noqa: F401
from geotrack.cli import prune as _prune  # noqa: F401
from geotrack.cli import publish as _publish  # noqa: F401

# Importing a command's module registers it on the app, in --help's order.
from geotrack.cli import serve as _serve  # noqa: F401
from geotrack.cli import share as _share  # noqa: F401
from geotrack.cli import tail as _tail  # noqa: F401
from geotrack.cli import trips as _trips  # noqa: F401
from geotrack.cli import watch as _watch  # noqa: F401
from geotrack.cli._common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``geotrack`` console script."""
    app()
