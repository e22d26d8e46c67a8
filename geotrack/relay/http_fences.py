"""REST for fences on the HTTP listener: ``GET /api/fences``, ``GET/PUT/DELETE
/api/fences/NAME`` (docs/fences.md).

Reading needs a token that may subscribe; changing (PUT, DELETE) needs one that may do
everything: role ``both`` and no device patterns, not a share link (fences decide
events about every device). Without ``--auth`` anyone may do both, as with the rest of
the listener. Changes go to the ``--fences`` file (:class:`~geotrack.relay.fencing.
Fencing`), so they survive a restart and a SIGHUP reload keeps them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from geotrack.auth import Grant
from geotrack.errors import FenceError
from geotrack.fences import feature_collection
from geotrack.relay.access import Role
from geotrack.relay.fencing import Fencing

__all__ = ["fence_item", "fences_list"]

GrantCheck = Callable[[web.Request, Role], Grant | None]

_NO_FENCES = "this relay has no fences: start it with --fences FILE (docs/fences.md)"


def _answer(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text.replace("\n", " ").strip() + "\n")


def _json_text(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, body=text.encode(), content_type="application/geo+json")


async def fences_list(
    request: web.Request, fencing: Fencing | None, grant: GrantCheck
) -> web.StreamResponse:
    """``GET /api/fences``: every fence in use, as a GeoJSON FeatureCollection."""
    grant(request, "subscribe")
    if fencing is None:
        return _answer(404, _NO_FENCES)
    return _json_text(feature_collection(fencing.fences))


async def fence_item(
    request: web.Request, fencing: Fencing | None, grant: GrantCheck
) -> web.StreamResponse:
    """``GET``, ``PUT`` (a GeoJSON Feature) or ``DELETE`` one fence by name."""
    name = request.match_info["name"]
    method = request.method
    if method not in ("GET", "HEAD", "PUT", "DELETE"):
        raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD", "PUT", "DELETE"])
    if method in ("GET", "HEAD"):
        grant(request, "subscribe")
        if fencing is None:
            return _answer(404, _NO_FENCES)
        for fence in fencing.fences:
            if fence.name == name:
                return _json_text(fence.source)
        return _answer(404, f"no fence named {name[:100]!r}")
    _may_change(grant(request, "publish"), grant(request, "subscribe"))
    if fencing is None:
        return _answer(404, _NO_FENCES)
    if method == "DELETE":
        try:
            deleted = await fencing.delete(name)
        except FenceError as exc:
            return _answer(409, f"the fences file does not load, fix it first: {exc}")
        if not deleted:
            return _answer(404, f"no fence named {name[:100]!r}")
        return web.Response(status=204)
    try:
        feature = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        return _answer(400, f"the body must be a GeoJSON Feature: {exc}")
    try:
        new = await fencing.put(name, feature)
    except FenceError as exc:
        if exc.where.startswith("fence "):
            return _answer(400, str(exc))
        return _answer(409, f"the fences file does not load, fix it first: {exc}")
    current = next(f for f in fencing.fences if f.name == name)
    return _json_text(current.source, 201 if new else 200)


def _may_change(*grants: Grant | None) -> None:
    """403 unless the token may publish and view every device (or there is no auth)."""
    for grant in grants:
        if grant is not None and (grant.devices or grant.views is not None):
            raise web.HTTPForbidden(
                text=f"token {grant.name!r} may not change fences: that takes a token of "
                "role both without device patterns\n"
            )
