"""What every command shares: the app, the error edge, store and device options, logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TextIO, TypeVar, get_args

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType as CommandFunction

from geotrack import __version__
from geotrack.errors import GeotrackError, InvalidParameter
from geotrack.store import Store, open_store

__all__ = [
    "CafileOption",
    "DeviceOption",
    "StoreOption",
    "TokenOption",
    "app",
    "configure_logging",
    "err",
    "errors",
    "event_loop_factory",
    "event_loop_runner",
    "fail",
    "main_options",
    "now_ms",
    "open_db",
    "within",
    "write_file",
]

# typer 0.29 prints a type tag such as `<int>` after every option in --help, and `<bool>`
# even after flags, which take no value (its rich help does not skip flags the way its
# plain help does). Well-kept click tools show a metavar after options that take a value
# (`--port INTEGER`) and nothing after a flag. Typer shows a parameter's metavar instead
# of the tag whenever one is set, so every command of this app names its parameters the
# click way, unless the command set a metavar of its own.
_METAVARS: Final = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN"}


def _name_values(params: list[Any]) -> None:
    for param in params:
        if param.metavar is not None:
            continue
        if isinstance(param, TyperArgument):
            param.metavar = (param.name or "value").upper()
            if type(param) is TyperArgument:
                param.__class__ = _Argument
        elif isinstance(param, TyperOption):
            param.metavar = "" if param.is_flag or param.count else _metavar(param)


def _metavar(param: TyperOption) -> str:
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(c) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    annotation = desc.annotation
    if desc.is_list:
        (annotation,) = get_args(annotation) or (str,)
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "PATH"
    return _METAVARS.get(annotation, "VALUE") if isinstance(annotation, type) else "VALUE"


class _Argument(TyperArgument):
    """An argument without a type tag: its name says what it takes."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _name_values(params)
        return params


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _name_values(params)
        return params


class _App(typer.Typer):
    """A typer app whose commands show click-style metavars in --help (see above)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[CommandFunction], CommandFunction]:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    name="geotrack",
    cls=_Group,
    help=(
        "Realtime position ingestion and replay over WebSocket.\n\n"
        "Devices (or `geotrack publish`) stream positions to a relay (`geotrack serve`, "
        "over WebSocket, HTTP or MQTT), which stores them and pushes them at once to every "
        "subscriber; stored tracks can be followed live (`geotrack tail`, `geotrack watch`, "
        "the web map), exported (`geotrack export`) and summed up (`geotrack trips`, "
        "`geotrack stops`); `geotrack import` loads files from other tools, `geotrack prune` "
        "deletes old positions, `geotrack share` makes read-only links to the map.\n\n"
        "Quick start, in three terminals (the map is then at http://127.0.0.1:5055/):\n\n"
        "  geotrack serve --http-port 5055\n\n"
        "  geotrack watch --store sqlite:///geotrack.db\n\n"
        "  geotrack publish --simulate 20 --profile bike --duration 10m"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Messages are single lines that the terminal wraps itself; where stderr is not a
# terminal (a file, a pipe, a log), rich would otherwise cut them at 80 columns.
err = Console(stderr=True, soft_wrap=True)
_N = TypeVar("_N", int, float)

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="GEOTRACK_STORE",
        help="Where positions live: sqlite:///FILE.db (embedded, the default) or mongodb://...",
        show_default=True,
    ),
]
DeviceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--device", "-d", help="Only this device (repeat for several).", show_default=False
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="GEOTRACK_TOKEN",
        help="Token for a relay started with --auth.",
        show_default=False,
    ),
]
CafileOption = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="CA certificate (PEM) to trust for a wss:// relay, instead of the system's "
        "(which SSL_CERT_FILE or SSL_CERT_DIR can name).",
        show_default=False,
    ),
]


def write_file(output: Path, write: Callable[[TextIO], int]) -> int:
    """Run ``write`` on ``output`` opened for text, under a temporary name, then rename.

    A failure leaves no truncated file (an unwritable place is one ``Error:`` line);
    returns what ``write`` returned (the count of records written).
    """
    partial = output.with_name(output.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="") as out:
            count = write(out)
        partial.replace(output)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        fail(f"cannot write {output}: {exc.strerror or exc}")
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return count


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line and exit."""
    # Escaped: messages quote things in brackets ([share], [[token]]) that are not markup.
    err.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn geotrack's own errors into one line on stderr and exit code 1."""
    try:
        yield
    except GeotrackError as exc:
        fail(str(exc))


def open_db(url: str) -> Store:
    return open_store(url)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geotrack {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Realtime position ingestion and replay over WebSocket."""


def configure_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    # Plain lines, one per event: relay logs end up in files and journald, where wrapped
    # or colored output gets in the way of grep.
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(message)s",
        force=True,
    )
    # websockets logs every failed handshake (a port scan, a bad path) at error level;
    # we log connections ourselves.
    # Never DEBUG: websockets then logs request lines, and those may carry ?token=.
    logging.getLogger("websockets").setLevel(logging.INFO if verbose else logging.CRITICAL)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed; None means asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_event_loop


def event_loop_runner() -> asyncio.Runner:
    return asyncio.Runner(loop_factory=event_loop_factory())


def within(name: str, value: _N, low: _N, high: _N) -> _N:
    if not low <= value <= high:
        raise InvalidParameter(name, f"must be within {low}..{high}, got {value}")
    return value


def now_ms() -> int:
    return time.time_ns() // 1_000_000
