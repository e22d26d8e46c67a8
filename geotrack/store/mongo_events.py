"""Geofence events and fence states in the MongoDB store (behind MongoStore's methods).

Two collections beside ``positions``, in the same database::

    events        {_id, device, fence, ts: datetime (ms), type, lat, lon, stored, origin?}
                  unique (device, fence, ts, type), and (ts) for queries by time
    fence_states  {device, fence, inside, pending_ms, last_ms}, unique (device, fence)

The unique index makes :meth:`MongoStore.write_events` idempotent across relays: the
second relay's insert of the same transition is a duplicate-key error, reported as not
new. The event feed is a change stream on ``events`` (inserts only), its cursor
``mongo:`` and the resume token, like the position feed's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Final

from bson import DatetimeMS
from pymongo import ASCENDING, IndexModel, ReplaceOne
from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection as MongoCollection
from pymongo.errors import BulkWriteError, PyMongoError

from geotrack.errors import GeotrackError, StoreError
from geotrack.schema import Event, FenceState, ms_to_ts, ts_to_ms
from geotrack.store.base import EventChange, EventFeed

__all__ = [
    "EVENTS_COLLECTION",
    "STATES_COLLECTION",
    "MongoEventFeed",
    "ensure_event_indexes",
    "ensure_state_index",
    "find_events",
    "find_states",
    "insert_events",
    "replace_states",
]

EVENTS_COLLECTION: Final = "events"
STATES_COLLECTION: Final = "fence_states"
_DUPLICATE_KEY: Final = 11000
_PROJECTION: Final = {"_id": 0, "type": 1, "device": 1, "fence": 1, "ts": 1, "lat": 1, "lon": 1}

Document = dict[str, Any]


def ensure_event_indexes(events: MongoCollection[Document]) -> None:
    """Create the events' indexes (idempotent); the unique one is what dedupes."""
    events.create_indexes(
        [
            IndexModel(
                [("device", ASCENDING), ("fence", ASCENDING), ("ts", ASCENDING), ("type", 1)],
                unique=True,
            ),
            IndexModel([("ts", ASCENDING)]),
        ]
    )


def ensure_state_index(states: MongoCollection[Document]) -> None:
    """Create the unique (device, fence) index of the saved states (idempotent)."""
    states.create_index([("device", ASCENDING), ("fence", ASCENDING)], unique=True)


def _to_event(doc: Mapping[str, Any], ms: Callable[[Any], int]) -> Event:
    return Event(
        doc["type"], doc["device"], doc["fence"], ms_to_ts(ms(doc["ts"])), doc["lat"], doc["lon"]
    )


def insert_events(
    events: MongoCollection[Document], batch: Sequence[Event], origin: str | None
) -> list[bool]:
    """Insert unordered; for each event whether it was new. Raises StoreError for others."""
    stored = DatetimeMS(time.time_ns() // 1_000_000)
    first: dict[tuple[str, str, str, str], int] = {}
    sent: list[int] = []
    docs: list[Document] = []
    for i, event in enumerate(batch):
        if event.key not in first:
            first[event.key] = i
            sent.append(i)
            doc: Document = {
                "device": event.device,
                "fence": event.fence,
                "ts": DatetimeMS(ts_to_ms(event.ts)),
                "type": event.type,
                "lat": event.lat,
                "lon": event.lon,
                "stored": stored,
            }
            if origin is not None:
                doc["origin"] = origin
            docs.append(doc)
    new = [False] * len(batch)
    for i in sent:
        new[i] = True
    try:
        events.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        concern = exc.details.get("writeConcernErrors", [])
        other = [e for e in errors if e.get("code") != _DUPLICATE_KEY]
        if concern or other:
            what = (concern or other)[0]
            raise StoreError(f"writing events failed: {what.get('errmsg', '?')}") from None
        for error in errors:
            new[sent[error["index"]]] = False
    return new


def find_events(
    events: MongoCollection[Document],
    devices: Collection[str],
    fences: Collection[str],
    since_ms: int | None,
    until_ms: int | None,
    ms: Callable[[Any], int],
) -> Iterator[Event]:
    """Stored events by device time, then device and fence."""
    spec: Document = {}
    if devices:
        spec["device"] = {"$in": sorted(devices)}
    if fences:
        spec["fence"] = {"$in": sorted(fences)}
    bounds: Document = {}
    if since_ms is not None:
        bounds["$gte"] = DatetimeMS(since_ms)
    if until_ms is not None:
        bounds["$lte"] = DatetimeMS(until_ms)
    if bounds:
        spec["ts"] = bounds
    cursor = (
        events.find(spec, _PROJECTION)
        .sort([("ts", ASCENDING), ("device", ASCENDING), ("fence", ASCENDING)])
        .batch_size(1000)
    )
    try:
        for doc in cursor:
            yield _to_event(doc, ms)
    finally:
        cursor.close()


def find_states(states: MongoCollection[Document], devices: Collection[str]) -> list[FenceState]:
    """The saved fence states (of ``devices``; all when empty), by device and fence."""
    spec: Document = {"device": {"$in": sorted(devices)}} if devices else {}
    found = [
        FenceState(
            doc["device"],
            doc["fence"],
            bool(doc["inside"]),
            doc.get("pending_ms"),
            doc.get("last_ms"),
        )
        for doc in states.find(spec, {"_id": 0})
    ]
    return sorted(found, key=lambda s: (s.device, s.fence))


def replace_states(states: MongoCollection[Document], batch: Sequence[FenceState]) -> None:
    """Upsert each (device, fence) state in one unordered bulk write."""
    states.bulk_write(
        [
            ReplaceOne(
                {"device": s.device, "fence": s.fence},
                {
                    "device": s.device,
                    "fence": s.fence,
                    "inside": s.inside,
                    "pending_ms": s.pending_ms,
                    "last_ms": s.last_ms,
                },
                upsert=True,
            )
            for s in batch
        ],
        ordered=False,
    )


class MongoEventFeed(EventFeed):
    """Follows inserted events through a change stream (as MongoChangeFeed follows fixes)."""

    batch: int = 1000

    def __init__(
        self,
        stream: CollectionChangeStream[Document],
        start: str | None,
        max_await_s: float,
        error: Callable[[BaseException, str], GeotrackError],
        ms: Callable[[Any], int],
        encode_cursor: Callable[[Mapping[str, Any]], str],
    ) -> None:
        self._stream = stream
        self._max_await_s = max_await_s
        self._error = error
        self._ms = ms
        self._encode = encode_cursor
        token = stream.resume_token
        self._cursor = encode_cursor(token) if token is not None else start
        self._closed = False

    @property
    def cursor(self) -> str:
        if self._cursor is None:
            raise StoreError("the event stream has not given a resume token yet")
        return self._cursor

    def poll(self, timeout: float) -> list[EventChange]:
        if self._closed:
            raise StoreError("the event feed is closed")
        deadline = time.monotonic() + timeout
        changes: list[EventChange] = []
        while True:
            started = time.monotonic()
            try:
                change = self._stream.try_next()
            except PyMongoError as exc:
                raise self._error(exc, "following events") from None
            if change is not None and change.get("operationType") == "insert":
                self._cursor = self._encode(self._stream.resume_token or change["_id"])
                changes.append(
                    EventChange(self._cursor, _to_event(change["fullDocument"], self._ms))
                )
                if len(changes) < self.batch:
                    continue
                return changes
            if change is None and not self._stream.alive:
                raise StoreError("the events collection was dropped or renamed")
            token = self._stream.resume_token
            if token is not None:
                self._cursor = self._encode(token)
            now = time.monotonic()
            if changes or now >= deadline:
                return changes
            pause = min(self._max_await_s - (now - started), deadline - now)
            if pause > 0:
                time.sleep(pause)
            if time.monotonic() >= deadline:
                return changes

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(PyMongoError):
                self._stream.close()
