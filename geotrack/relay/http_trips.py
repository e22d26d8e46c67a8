"""``GET /api/trips`` and ``GET /api/stops`` on the HTTP listener (docs/http.md).

The same answers as ``geotrack trips`` and ``geotrack stops``, with the same parameters
(``device`` repeated, ``since``, ``until``, ``stop-radius``, ``stop-duration``, ``gap``)
and ``format=json|csv|geojson``. Reads need a token that may subscribe, as GET
/api/positions does; a share link reads its own devices and is refused (403) any other.
The store is read and the trips computed on the listener's worker threads, never on the
event loop, a chunk at a time: the next is made once the client has taken the last, so
memory stays one chunk and one device's detection state however long the history.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

from aiohttp import web
from multidict import MultiMapping

from geotrack.analysis import FORMATS, Kind, Params, Stop, Trip, analyze
from geotrack.analysis.output import CONTENT_TYPES, pieces
from geotrack.auth import Grant
from geotrack.errors import InvalidParameter, StoreError
from geotrack.relay.access import Role, device_ids
from geotrack.schema import parse_duration, parse_time
from geotrack.store import Store

__all__ = ["TRIPS_PARAMETERS", "TripsEndpoints"]

#: Query parameters of /api/trips and /api/stops.
TRIPS_PARAMETERS: Final = (
    "device",
    "since",
    "until",
    "stop-radius",
    "stop-duration",
    "gap",
    "format",
    "token",
)

log = logging.getLogger("geotrack.http")

#: Characters of text handed to the response at a time.
CHUNK_CHARS: Final = 64 * 1024

GrantCheck = Callable[[web.Request, Role], Grant | None]
Viewable = Callable[[web.Request, Grant | None, tuple[str, ...]], tuple[str, ...]]
StoreCall = Callable[..., Awaitable[Any]]


class TripsEndpoints:
    """The two handlers, over the listener's store, token checks and worker threads."""

    def __init__(
        self, store: Store, grant: GrantCheck, viewable: Viewable, store_call: StoreCall
    ) -> None:
        self._store = store
        self._grant = grant
        self._viewable = viewable
        self._store_call = store_call

    async def trips(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/trips``."""
        return await self._answer(request, "trips")

    async def stops(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/stops``."""
        return await self._answer(request, "stops")

    async def _answer(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        grant = self._grant(request, "subscribe")
        try:
            query = _Query.parse(request.query)
        except InvalidParameter as exc:
            return _text(400, str(exc))
        query.devices = self._viewable(request, grant, query.devices)
        text = _Text(self._store, kind, query)
        response: web.StreamResponse | None = None
        try:
            while chunk := await self._store_call(text.next_chunk):
                if response is None:
                    response = web.StreamResponse(
                        headers={
                            "Content-Type": CONTENT_TYPES[query.format],
                            "Content-Disposition": f'inline; filename="{kind}.{query.format}"',
                        }
                    )
                    await response.prepare(request)
                await response.write(chunk)
            assert response is not None  # every format has a head
            await response.write_eof()
        except StoreError as exc:
            if response is None:
                return _text(503, f"store read failed: {exc}")
            # Cut, so that the client sees a truncated transfer, not a complete-looking one.
            log.error("%s to %s cut off: store read failed: %s", kind, request.remote, exc)
            if request.transport is not None:
                request.transport.abort()
        except ConnectionResetError:
            log.debug("%s to %s stopped: the client went away", kind, request.remote)
        finally:
            with contextlib.suppress(Exception):
                await self._store_call(text.close)
        return response if response is not None else web.Response(status=499)


class _Text:
    """The answer's text, made a chunk at a time by calls on worker threads, one at a time."""

    def __init__(self, store: Store, kind: Kind, query: _Query) -> None:
        self._store = store
        self._kind = kind
        self._query = query
        self._positions: Iterator[Any] | None = None
        self._pieces: Iterator[str] | None = None

    def next_chunk(self) -> bytes:
        """The next chunk of the answer; empty at its end."""
        if self._pieces is None:
            query = self._query
            positions = self._store.query(query.devices, query.since_ms, query.until_ms)
            self._positions = positions
            wanted = Trip if self._kind == "trips" else Stop
            found = analyze(positions, query.params, paths=query.format == "geojson")
            items = (i for i in found if isinstance(i, wanted))
            self._pieces = pieces(query.format, self._kind, items)
        taken: list[str] = []
        size = 0
        for piece in self._pieces:
            taken.append(piece)
            size += len(piece)
            if size >= CHUNK_CHARS:
                break
        return "".join(taken).encode()

    def close(self) -> None:
        """Release the store's cursor now rather than whenever it is collected."""
        close = getattr(self._positions, "close", None)
        if close is not None:
            close()


class _Query:
    """The parameters of one request, checked."""

    def __init__(
        self,
        devices: tuple[str, ...],
        since_ms: int | None,
        until_ms: int | None,
        params: Params,
        format: str,
    ) -> None:
        self.devices = devices
        self.since_ms = since_ms
        self.until_ms = until_ms
        self.params = params
        self.format = format

    @classmethod
    def parse(cls, query: MultiMapping[str]) -> _Query:
        unknown = sorted(set(query) - set(TRIPS_PARAMETERS))
        if unknown:
            supported = ", ".join(p for p in TRIPS_PARAMETERS if p != "token")
            raise InvalidParameter(unknown[0], f"unknown parameter (supported: {supported})")
        for name in TRIPS_PARAMETERS:
            if name not in ("device", "token") and len(query.getall(name, [])) > 1:
                raise InvalidParameter(name, "give it at most once")
        fmt = query.get("format", "json")
        if fmt not in FORMATS:
            raise InvalidParameter(
                "format", f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})"
            )
        now_ms = time.time_ns() // 1_000_000
        since = query.get("since")
        until = query.get("until")
        since_ms = parse_time(since, now_ms, "since") if since is not None else None
        until_ms = parse_time(until, now_ms, "until") if until is not None else None
        if since_ms is not None and until_ms is not None and until_ms < since_ms:
            raise InvalidParameter("until", "is before since: nothing could match")
        radius = query.get("stop-radius", "200")
        try:
            radius_m = float(radius)
        except ValueError:
            raise InvalidParameter("stop-radius", f"expected metres, got {radius[:40]!r}") from None
        try:
            params = Params(
                stop_radius_m=radius_m,
                stop_duration_s=parse_duration(query.get("stop-duration", "3m"), "stop-duration"),
                gap_s=parse_duration(query.get("gap", "1h"), "gap"),
            )
        except InvalidParameter as exc:
            # Params names the CLI's options; a URL has parameters without the dashes.
            raise InvalidParameter(exc.name.lstrip("-"), exc.reason) from None
        return cls(device_ids(query.getall("device", [])), since_ms, until_ms, params, fmt)


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text.replace("\n", " ").strip() + "\n")
