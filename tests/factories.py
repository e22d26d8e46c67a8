"""Things many tests build: positions, what a SQLite file holds, tokens and token files.

One copy of each, so that a change to the schema or the token format is made once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geotrack.auth import Tokens
from geotrack.schema import Position, ms_to_ts
from geotrack.store import open_store

__all__ = [
    "BUS",
    "PUB",
    "SUB",
    "T0",
    "T0_S",
    "pos",
    "stored",
    "token_entries",
    "token_file",
    "tokens",
]

#: 2025-11-25T12:00:00Z in Unix milliseconds, and in seconds.
T0 = 1_764_072_000_000
T0_S = T0 // 1000

#: Tokens of the standard test grants: publish anything, subscribe, publish as bus-* only.
PUB = "publisher-token-0123456789"
SUB = "subscriber-token-0123456789"
BUS = "bus-only-token-0123456789"


def pos(device: str = "car-1", i: int = 0, **extra: Any) -> Position:
    """The ``i``-th fix of ``device``: one second and about 13 m after the one before."""
    fields: dict[str, Any] = {
        "device": device,
        "lat": 52.5 + i * 1e-4,
        "lon": 13.4 + i * 1e-4,
        "ts": ms_to_ts(T0 + i * 1000),
    }
    return Position(**fields | extra)


def stored(db: Path, *, sort: bool = False) -> list[Position]:
    """Every position in the SQLite file ``db`` (by device, then time; by key if ``sort``)."""
    with open_store(f"sqlite:///{db}") as store:
        positions = list(store.query())
    return sorted(positions, key=lambda p: p.key) if sort else positions


def token_entries(bus_role: str = "publish") -> list[dict[str, Any]]:
    """The standard grants as token-file entries; ``bus_role`` is the bus token's role."""
    return [
        {"name": "pub", "token": PUB, "role": "publish"},
        {"name": "sub", "token": SUB, "role": "subscribe"},
        {"name": "bus", "token": BUS, "role": bus_role, "devices": ["bus-*"]},
    ]


def tokens(bus_role: str = "publish") -> Tokens:
    """The standard grants, loaded."""
    return Tokens.from_entries(token_entries(bus_role))


def token_file(
    path: Path, entries: list[dict[str, Any]] | None = None, *, share_secret: str | None = None
) -> Path:
    """Write ``entries`` (default: the standard grants) as a TOML token file at ``path``.

    With ``share_secret``, the file has a ``[share]`` table with that secret too.
    """
    lines: list[str] = []
    for entry in entries if entries is not None else token_entries():
        lines.append("[[token]]")
        for key, value in entry.items():
            if isinstance(value, list):
                items = ", ".join(f'"{v}"' for v in value)
                lines.append(f"{key} = [{items}]")
            else:
                lines.append(f'{key} = "{value}"')
        lines.append("")
    if share_secret is not None:
        lines += ["[share]", f'secret = "{share_secret}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
