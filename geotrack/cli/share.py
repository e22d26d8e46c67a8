"""`geotrack share`: a read-only link to the web map showing some devices, until it expires."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final
from urllib.parse import urlsplit, urlunsplit

import typer

from geotrack.cli._common import app, err, errors
from geotrack.errors import InvalidParameter

__all__ = ["DEFAULT_BASE", "link_for", "share"]

#: Where `geotrack serve --http-port 5055` serves the map on this machine.
DEFAULT_BASE: Final = "http://127.0.0.1:5055/"


def link_for(base: str, token: str) -> str:
    """``base`` (an http(s) URL of the map) with ``?token=`` added; InvalidParameter if bad."""
    parts = urlsplit(base.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter(
            "--url", f"expected the map's http:// or https:// address, got {base!r}"
        )
    if parts.fragment:
        raise InvalidParameter("--url", f"give the address without a #fragment, got {base!r}")
    kept = "&".join(p for p in parts.query.split("&") if p and not p.startswith("token="))
    query = f"{kept}&token={token}" if kept else f"token={token}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))


@app.command()
def share(
    auth: Annotated[
        Path | None,
        typer.Option(
            help="The relay's token file (TOML); its [share] secret signs the link.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device",
            "-d",
            help="A device the link shows (repeat for several; exact ids, no patterns).",
            show_default=False,
        ),
    ] = None,
    expires: Annotated[
        str,
        typer.Option(help="How long the link works: 90m, 24h, 7d (at most 366d)."),
    ] = "24h",
    url: Annotated[
        str,
        typer.Option(help="The map's address, as the people you share with reach it."),
    ] = DEFAULT_BASE,
) -> None:
    """Print a read-only link to the web map that shows only some devices, until it expires.

    The link carries a token signed with the `[share]` secret of the token file: every
    relay started with that file (`geotrack serve --auth FILE --http-port P`) accepts it
    without storing anything, shows its devices live and their history, and refuses
    anything else (another device: 403; publishing: 403; after it expires: 401, and the
    page says when it expired). To revoke every link at once, put a new secret in the
    file and restart the relays. The link is a password for those devices: send it only
    to whom should see them.

    Examples:

      `geotrack share --auth tokens.toml --device bus-12 --expires 24h`

      `geotrack share --auth tokens.toml -d bus-12 -d bus-14 --expires 7d --url https://map.example.com/`
    """
    from geotrack.auth import Tokens
    from geotrack.errors import expiry_text
    from geotrack.schema import parse_duration

    with errors():
        if auth is None:
            raise InvalidParameter("--auth", "give the token file the relays use (--auth FILE)")
        seconds = parse_duration(expires, "--expires")
        link_for(url, "")  # a bad --url is refused before the file is read
        tokens = Tokens.load(auth)
        token = tokens.share(device or (), seconds)
        link = link_for(url, token)
        grant = tokens.check(token)
    assert grant is not None  # just signed
    assert grant.expires is not None
    assert grant.views is not None
    typer.echo(link)
    err.print(
        f"read-only link to {', '.join(sorted(grant.views))}, "
        f"valid until {expiry_text(grant.expires)}",
        highlight=False,
        soft_wrap=True,
    )
