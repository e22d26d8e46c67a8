"""The MongoDB store: one regular collection, followed through a change stream.

URL: any standard connection string, ``mongodb://`` or ``mongodb+srv://``, with
credentials and TLS options, e.g. ``mongodb://user:pw@h1,h2,h3/fleet?replicaSet=rs0``. The
database is the URL's path (default ``geotrack``); positions live in its ``positions``
collection. Unless the URL says otherwise: writes wait for ``w=majority`` and the journal
(an ack means a majority of the replica set has the fix on disk; when the URL sets ``w`` or
``journal`` its write concern is used as given), ``serverSelectionTimeoutMS=10000``,
``appname=geotrack``. One geotrack option is removed before pymongo sees the URL:
``maxAwaitTimeMS``, how long an idle change stream waits on the server per round trip
(default 50; ``poll`` never waits much longer than its timeout, so keep it small).

One document per position::

    {_id: ObjectId, device, ts: datetime (ms), loc: {type: "Point", coordinates: [lon, lat]},
     speed?, heading?, alt?, acc?, attrs?, stored: datetime, origin?}

Absent optional fields are omitted. Indexes, created idempotently at open: unique
``(device, ts)`` (dedupe, and track queries) and ``2dsphere`` on ``loc``. The collection
is a regular one, not a time-series collection, because change streams do not work on
time-series collections.

Opened with ``create=False`` (commands that only read), a database without a
``positions`` collection is "no store": StoreNotFound is raised, and no collection or
index is created (MongoDB would create the collection on the first index or insert).

The change feed is ``collection.watch()``, which needs a replica set (or a sharded
cluster): inserts only, filtered by device on the server. Its cursor is ``mongo:`` and the
resume token as base64url BSON; a time ``since`` becomes ``startAtOperationTime`` and can
reach back only as far as the oplog does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import time
from collections.abc import Collection, Generator, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn
from urllib.parse import unquote

import bson
from bson import DatetimeMS, Int64, Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, GEOSPHERE, IndexModel, MongoClient
from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection as MongoCollection
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    InvalidURI,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.uri_parser import split_options

from geotrack.errors import GeotrackError, InvalidParameter, StoreError, StoreNotFound
from geotrack.schema import Event, FenceState, Position, ms_to_ts, ts_to_ms
from geotrack.store.base import Change, ChangeFeed, Pruned, Store
from geotrack.store.mongo_events import (
    EVENTS_COLLECTION,
    STATES_COLLECTION,
    MongoEventFeed,
    ensure_event_indexes,
    ensure_state_index,
    find_events,
    find_states,
    insert_events,
    replace_states,
)

__all__ = ["CURSOR_PREFIX", "MongoChangeFeed", "MongoStore", "decode_cursor"]

CURSOR_PREFIX: Final = "mongo:"
DEFAULT_DATABASE: Final = "geotrack"
COLLECTION: Final = "positions"
DROPPED: Final = "the positions collection was dropped; the change stream ended"

# Options geotrack reads from the URL itself (pymongo would warn about them).
_GEOTRACK_OPTIONS: Final = ("maxawaittimems",)
_DEFAULT_MAX_AWAIT_MS: Final = 50
_DEFAULT_SERVER_SELECTION_MS: Final = 10_000

_DUPLICATE_KEY: Final = 11000
_UNAUTHORIZED: Final = 13
_AUTH_FAILED: Final = 18
_INVALIDATED: Final = 260
_RESUME_TOKEN_NOT_FOUND: Final = 280
_HISTORY_LOST: Final = 286
_NOT_A_REPLICA_SET: Final = 40573

Document = dict[str, Any]

_CODEC: Final[CodecOptions[Document]] = CodecOptions(
    datetime_conversion=DatetimeConversion.DATETIME_MS
)
_FIELDS: Final = ("speed", "heading", "alt", "acc")
_PROJECTION: Final = {"_id": 0, "device": 1, "ts": 1, "loc": 1, "attrs": 1} | {
    name: 1 for name in _FIELDS
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_CONFIGURED_TIMEOUTS_RE: Final = re.compile(r"\s*\(configured timeouts:[^)]*\)")


class _Url:
    """A MongoDB URL taken apart: what pymongo gets, and what we keep or show."""

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        query_at = rest.find("?")
        query_at = len(rest) if query_at == -1 else query_at
        # Userinfo must escape "@" and "/", so the last "@" before the query ends it.
        at = rest.rfind("@", 0, query_at)
        userinfo = rest[:at] if at != -1 else ""
        after_user = rest[at + 1 :]
        host_end = min(
            (i for i in (after_user.find("/"), after_user.find("?")) if i != -1),
            default=len(after_user),
        )
        self.hosts = hosts = after_user[:host_end]
        path, _, query = after_user[host_end:].partition("?")
        self.user = unquote(userinfo.partition(":")[0]) if userinfo else None

        kept: list[str] = []
        shown: list[str] = []
        self.geotrack: dict[str, str] = {}
        for item in filter(None, re.split("[&;]", query)):
            key, _, value = item.partition("=")
            if key.lower() in _GEOTRACK_OPTIONS:
                self.geotrack[key.lower()] = unquote(value)
                shown.append(item)
                continue
            kept.append(item)
            if "password" not in key.lower() and key.lower() != "authmechanismproperties":
                shown.append(item)
        self.options = kept
        user = f"{userinfo.partition(':')[0]}@" if userinfo else ""
        self.display = f"{scheme}://{user}{self.hosts}{path}" + (
            "?" + "&".join(shown) if shown else ""
        )
        self.for_pymongo = f"{scheme}://{rest[: at + 1]}{hosts}{path}" + (
            "?" + "&".join(kept) if kept else ""
        )

    def validated_options(self) -> dict[str, Any]:
        """The standard options, each checked so an error can name it."""
        options: dict[str, Any] = {}
        for item in self.options:
            key = item.partition("=")[0]
            try:
                options.update({k.lower(): v for k, v in split_options(item).items()})
            except (ConfigurationError, ValueError) as exc:
                reason = str(exc)
                if reason.startswith("Unknown option"):
                    reason = "unknown option"
                raise InvalidParameter(
                    "store", f"bad MongoDB URL option {key!r} in {self.display}: {reason}"
                ) from None
        return options


def _max_await_ms(url: _Url) -> int:
    text = url.geotrack.get("maxawaittimems", str(_DEFAULT_MAX_AWAIT_MS))
    if not text.isdigit() or not 0 < int(text) <= 60_000:
        raise InvalidParameter("maxAwaitTimeMS", f"expected 1 to 60000 milliseconds, got {text!r}")
    return int(text)


def _ms(value: Any) -> int:
    """Unix milliseconds of a stored ``ts``.

    A BSON datetime normally. nx-27017 (the wire-protocol server the tests run against)
    hands change events' ``fullDocument`` over as Extended JSON, so ``{"$date": ...}``
    is read too; naive ISO strings there are UTC.
    """
    if isinstance(value, DatetimeMS):
        return int(value)
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MS
    if isinstance(value, Mapping) and "$date" in value:
        date = value["$date"]
        if isinstance(date, Mapping) and "$numberLong" in date:
            return int(date["$numberLong"])
        if isinstance(date, int):
            return date
        if isinstance(date, str):
            return _ms(datetime.fromisoformat(date.replace("Z", "+00:00")))
    raise StoreError(f"a stored position has an unreadable ts: {value!r}")


def _to_document(position: Position, stored: DatetimeMS, origin: str | None) -> Document:
    doc: Document = {
        "device": position.device,
        "ts": DatetimeMS(ts_to_ms(position.time)),
        "loc": {"type": "Point", "coordinates": [position.lon, position.lat]},
    }
    for name in _FIELDS:
        value = getattr(position, name)
        if value is not None:
            doc[name] = value
    if position.attrs is not None:
        doc["attrs"] = position.attrs
    doc["stored"] = stored
    if origin is not None:
        doc["origin"] = origin
    return doc


def _to_position(doc: Mapping[str, Any]) -> Position:
    try:
        lon, lat = doc["loc"]["coordinates"][:2]
        attrs = doc.get("attrs")
        return Position(
            device=doc["device"],
            lat=lat,
            lon=lon,
            ts=ms_to_ts(_ms(doc["ts"])),
            speed=doc.get("speed"),
            heading=doc.get("heading"),
            alt=doc.get("alt"),
            acc=doc.get("acc"),
            # bson hands back int64 values as bson.Int64; keep plain ints in a Position.
            attrs=(
                {k: int(v) if type(v) is Int64 else v for k, v in attrs.items()}
                if attrs is not None
                else None
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(
            f"document {doc.get('_id', '?')} is not a stored position: {exc!r}"
        ) from None


def encode_cursor(token: Mapping[str, Any]) -> str:
    """The printable cursor of a change stream resume token."""
    return CURSOR_PREFIX + base64.urlsafe_b64encode(bson.encode(token)).decode().rstrip("=")


def decode_cursor(text: str) -> Document:
    """The resume token a ``mongo:`` cursor holds."""
    body = text[len(CURSOR_PREFIX) :].strip() if text.startswith(CURSOR_PREFIX) else ""
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        token = bson.decode(raw) if body else None
    except (binascii.Error, ValueError, BSONError):
        token = None
    if not token:
        raise InvalidParameter(
            "cursor", f"{text[:80]!r} is not a MongoDB cursor (mongo:<token>, as tail prints it)"
        )
    return token


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OperationFailure) and exc.details and exc.details.get("errmsg"):
        text = str(exc.details["errmsg"])
    else:
        text = str(exc).split(", full error:")[0].split(", Timeout:")[0]
    return " ".join(_CONFIGURED_TIMEOUTS_RE.sub("", text).split())[:300]


class MongoStore(Store):
    """Positions in a MongoDB collection (see the module docstring)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        parsed = _Url(url)
        self.display_url = parsed.display
        self._hosts = parsed.hosts
        self._user = parsed.user
        options = parsed.validated_options()
        self._max_await_ms = _max_await_ms(parsed)
        defaults: dict[str, Any] = {"appname": "geotrack"}
        if "w" not in options and "journal" not in options:
            defaults.update(w="majority", journal=True)
        if "serverselectiontimeoutms" not in options:
            defaults["serverSelectionTimeoutMS"] = _DEFAULT_SERVER_SELECTION_MS
        if "appname" in options:
            del defaults["appname"]
        try:
            self._client: MongoClient[Document] = MongoClient(parsed.for_pymongo, **defaults)
        except ConfigurationError as exc:
            if "DNS" in str(exc):
                raise StoreError(f"cannot look up {self._hosts}: {_one_line(exc)}") from None
            raise InvalidParameter(
                "store", f"bad MongoDB connection string {self.display_url}: {_one_line(exc)}"
            ) from None
        except (InvalidURI, ValueError, TypeError) as exc:
            raise InvalidParameter(
                "store", f"bad MongoDB connection string {self.display_url}: {_one_line(exc)}"
            ) from None
        self._closed = False
        try:
            database = self._client.get_default_database(DEFAULT_DATABASE)
            self._positions: MongoCollection[Document] = database.get_collection(
                COLLECTION, codec_options=_CODEC
            )
            if create:
                self._ensure_indexes()
            else:
                self._check_exists(database.name)
        except BaseException:
            self._client.close()
            raise

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> MongoStore:
        """Open the store a ``mongodb://`` or ``mongodb+srv://`` URL names."""
        return cls(url, create=create)

    @property
    def write_concern(self) -> Mapping[str, Any]:
        """The write concern every write waits for, as sent to the server."""
        return self._client.write_concern.document

    def _check_exists(self, database: str) -> None:
        """Raise StoreNotFound unless the database has a positions collection."""
        try:
            names = self._positions.database.list_collection_names(filter={"name": COLLECTION})
        except PyMongoError as exc:
            self._raise(exc, "opening the store")
        if COLLECTION not in names:
            raise StoreNotFound(
                f"database {database!r}",
                self.display_url,
                f"it has no {COLLECTION} collection: nothing has been stored there yet",
            )

    def _ensure_indexes(self) -> None:
        indexes = [
            IndexModel([("device", ASCENDING), ("ts", ASCENDING)], unique=True),
            IndexModel([("loc", GEOSPHERE)]),
        ]
        try:
            self._positions.create_indexes(indexes)
        except OperationFailure as exc:
            if exc.code != _UNAUTHORIZED:
                self._raise(exc, "creating the indexes")
            # A read-only user cannot create indexes: fine if they exist, and dedupe
            # depends on the unique one.
            try:
                existing = list(self._positions.list_indexes())
            except PyMongoError as again:
                self._raise(again, "listing the indexes")
            if not any(
                index.get("unique") and list(index["key"]) == ["device", "ts"] for index in existing
            ):
                raise StoreError(
                    f"{self.display_url}: the unique (device, ts) index is missing and this "
                    f"user may not create it; open the store once as a user who may"
                ) from None
        except PyMongoError as exc:
            self._raise(exc, "opening the store")

    def _raise(self, exc: BaseException, doing: str) -> NoReturn:
        raise self._error(exc, doing) from None

    def _error(self, exc: BaseException, doing: str) -> GeotrackError:
        """One clear line for a pymongo error."""
        if isinstance(exc, ServerSelectionTimeoutError):
            timeout = self._client.options.server_selection_timeout
            return StoreError(
                f"cannot reach MongoDB at {self._hosts} within {timeout:g} s "
                f"(serverSelectionTimeoutMS): {_one_line(exc)}"
            )
        if isinstance(exc, ConnectionFailure):
            return StoreError(
                f"lost the connection to MongoDB at {self._hosts} while {doing}: {_one_line(exc)}"
            )
        if isinstance(exc, OperationFailure):
            code = exc.code
            if code == _AUTH_FAILED:
                who = f" as {self._user!r}" if self._user else ""
                return StoreError(
                    f"authentication to MongoDB at {self._hosts}{who} failed: check the user "
                    f"name, password and authSource"
                )
            if code == _NOT_A_REPLICA_SET or "only supported on replica sets" in str(exc):
                return StoreError(
                    f"MongoDB at {self._hosts} is not a replica set member, and change streams "
                    f"need a replica set: start mongod with --replSet rs0 and run rs.initiate()"
                )
            if code == _INVALIDATED:
                return StoreError(DROPPED)
            if code in (_HISTORY_LOST, _RESUME_TOKEN_NOT_FOUND):
                return StoreError(
                    f"cannot resume the change stream of {self.display_url}: the oplog no "
                    f"longer holds that point ({_one_line(exc)}); follow from a later time"
                )
            return StoreError(
                f"{doing} on {self.display_url} failed: {_one_line(exc)} (code {code})"
            )
        return StoreError(f"{doing} on {self.display_url} failed: {_one_line(exc)}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.display_url} is closed")

    def write(self, positions: Sequence[Position], origin: str | None = None) -> list[bool]:
        self._check_open()
        if not positions:
            return []
        stored = DatetimeMS(time.time_ns() // 1_000_000)
        # A repeat within the batch is a duplicate of its first occurrence: never sent, so
        # which one wins does not depend on how the server orders unordered inserts.
        first: dict[tuple[str, int], int] = {}
        sent: list[int] = []  # batch index of each document sent
        docs: list[Document] = []
        for i, position in enumerate(positions):
            key = (position.device, ts_to_ms(position.time))
            if key not in first:
                first[key] = i
                sent.append(i)
                docs.append(_to_document(position, stored, origin))
        new = [False] * len(positions)
        for i in sent:
            new[i] = True
        try:
            self._positions.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            details = exc.details
            errors = details.get("writeErrors", [])
            concern = details.get("writeConcernErrors", [])
            if concern:
                raise StoreError(
                    f"write to {self.display_url} was not confirmed by the write concern "
                    f"{dict(self.write_concern)}: {concern[0].get('errmsg', '?')}"
                ) from None
            other = [e for e in errors if e.get("code") != _DUPLICATE_KEY]
            if other:
                raise StoreError(
                    f"write to {self.display_url} failed: {other[0].get('errmsg', '?')} "
                    f"(code {other[0].get('code')})"
                ) from None
            for error in errors:
                new[sent[error["index"]]] = False
        except (PyMongoError, BSONError) as exc:
            self._raise(exc, "writing")
        return new

    def query(
        self,
        devices: Collection[str] = (),
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[Position]:
        self._check_open()
        spec: Document = {}
        if devices:
            spec["device"] = {"$in": sorted(devices)}
        bounds: Document = {}
        if since_ms is not None:
            bounds["$gte"] = DatetimeMS(since_ms)
        if until_ms is not None:
            bounds["$lte"] = DatetimeMS(until_ms)
        if bounds:
            spec["ts"] = bounds
        return self._query(spec)

    def _query(self, spec: Document) -> Iterator[Position]:
        cursor = (
            self._positions.find(spec, _PROJECTION)
            .sort([("device", ASCENDING), ("ts", ASCENDING)])
            .batch_size(1000)
        )
        try:
            for doc in cursor:
                yield _to_position(doc)
        except PyMongoError as exc:
            self._raise(exc, "querying")
        finally:
            cursor.close()

    def devices(self) -> list[str]:
        self._check_open()
        try:
            return sorted(self._positions.distinct("device"))
        except PyMongoError as exc:
            self._raise(exc, "listing devices")

    def latest(self, devices: Collection[str] = ()) -> list[Position]:
        self._check_open()
        names = sorted(devices) if devices else self.devices()
        last: list[Position] = []
        try:
            # One indexed lookup per device: the end of its (device, ts) range.
            for name in names:
                doc = self._positions.find_one(
                    {"device": name}, _PROJECTION, sort=[("ts", DESCENDING)]
                )
                if doc is not None:
                    last.append(_to_position(doc))
        except PyMongoError as exc:
            self._raise(exc, "querying")
        return last

    def _events(self) -> MongoCollection[Document]:
        """The events collection, its indexes ensured once per store object."""
        events = self._positions.database.get_collection(EVENTS_COLLECTION, codec_options=_CODEC)
        if not getattr(self, "_events_indexed", False):
            ensure_event_indexes(events)
            self._events_indexed = True
        return events

    def write_events(
        self,
        events: Sequence[Event],
        origin: str | None = None,
        *,
        states: Sequence[FenceState] = (),
        cursor: tuple[str, str] | None = None,
    ) -> list[bool]:
        self._check_open()
        new: list[bool] = []
        if events:
            try:
                new = insert_events(self._events(), events, origin)
            except (PyMongoError, BSONError) as exc:
                self._raise(exc, "writing events")
        # After the events (no transaction across collections): a crash in between
        # leaves the older state, which decides the same events again, stored once.
        self.save_fence_states(states)
        if cursor is not None:  # last: a crash before it leaves an older cursor (a replay)
            try:
                self._cursors().replace_one(
                    {"_id": cursor[0]}, {"_id": cursor[0], "cursor": cursor[1]}, upsert=True
                )
            except PyMongoError as exc:
                self._raise(exc, "saving a cursor")
        return new

    def _cursors(self) -> MongoCollection[Document]:
        return self._positions.database.get_collection("geotrack_cursors", codec_options=_CODEC)

    def saved_cursor(self, name: str) -> str | None:
        self._check_open()
        try:
            doc = self._cursors().find_one({"_id": name})
        except PyMongoError as exc:
            self._raise(exc, "reading a cursor")
        return None if doc is None else str(doc["cursor"])

    def query_events(
        self,
        devices: Collection[str] = (),
        fences: Collection[str] = (),
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[Event]:
        self._check_open()
        events = self._positions.database.get_collection(EVENTS_COLLECTION, codec_options=_CODEC)
        try:
            yield from find_events(events, devices, fences, since_ms, until_ms, _ms)
        except PyMongoError as exc:
            self._raise(exc, "querying events")

    def follow_events(
        self,
        since: str | int | None = None,
        devices: Collection[str] = (),
        fences: Collection[str] = (),
    ) -> MongoEventFeed:
        self._check_open()
        match: Document = {"operationType": "insert"}
        if devices:
            match["fullDocument.device"] = {"$in": sorted(devices)}
        if fences:
            match["fullDocument.fence"] = {"$in": sorted(fences)}
        options: dict[str, Any] = {}
        if isinstance(since, str):
            options["resume_after"] = decode_cursor(since)
        elif since is not None:
            options["start_at_operation_time"] = Timestamp(min(max(since // 1000, 0), 2**32 - 1), 0)
        try:
            stream = self._events().watch(
                [{"$match": match}],
                max_await_time_ms=self._max_await_ms,
                batch_size=MongoEventFeed.batch,
                **options,
            )
        except PyMongoError as exc:
            self._raise(exc, "opening the event stream")
        start = since if isinstance(since, str) else None
        return MongoEventFeed(
            stream, start, self._max_await_ms / 1000, self._error, _ms, encode_cursor
        )

    def fence_states(self, devices: Collection[str] = ()) -> list[FenceState]:
        self._check_open()
        states = self._positions.database.get_collection(STATES_COLLECTION, codec_options=_CODEC)
        try:
            return find_states(states, devices)
        except PyMongoError as exc:
            self._raise(exc, "reading fence states")

    def save_fence_states(self, states: Sequence[FenceState]) -> None:
        self._check_open()
        if not states:
            return
        database = self._positions.database
        collection = database.get_collection(STATES_COLLECTION, codec_options=_CODEC)
        try:
            if not getattr(self, "_states_indexed", False):
                ensure_state_index(collection)
                self._states_indexed = True
            replace_states(collection, states)
        except PyMongoError as exc:
            self._raise(exc, "saving fence states")

    def follow(
        self,
        since: str | int | None = None,
        devices: Collection[str] = (),
        exclude_origin: str | None = None,
    ) -> MongoChangeFeed:
        self._check_open()
        match: Document = {"operationType": "insert"}
        if devices:
            match["fullDocument.device"] = {"$in": sorted(devices)}
        if exclude_origin is not None:
            match["fullDocument.origin"] = {"$ne": exclude_origin}
        options: dict[str, Any] = {}
        if isinstance(since, str):
            options["resume_after"] = decode_cursor(since)
        elif since is not None:
            seconds = min(max(since // 1000, 0), 2**32 - 1)
            options["start_at_operation_time"] = Timestamp(seconds, 0)
        try:
            stream = self._positions.watch(
                [{"$match": match}],
                max_await_time_ms=self._max_await_ms,
                batch_size=MongoChangeFeed.batch,
                **options,
            )
        except PyMongoError as exc:
            if (
                isinstance(exc, OperationFailure)
                and exc.code == _HISTORY_LOST
                and isinstance(since, int)
            ):
                raise StoreError(
                    f"MongoDB's oplog no longer reaches back to {ms_to_ts(since)}: the "
                    f"changes stored then are gone from it; follow from a later time"
                ) from None
            self._raise(exc, "opening the change stream")
        start = since if isinstance(since, str) else None
        return MongoChangeFeed(stream, self, self._max_await_ms, start)

    #: Seconds between batches: room for the relay's inserts on a busy primary.
    prune_pause: float = 0.01

    def prune(
        self, before_ms: int, devices: Collection[str] = (), *, dry_run: bool = False
    ) -> Generator[Pruned, None, None]:
        # Batched deletes by _id rather than a TTL index: docs/storage.md, "Retention".
        self._check_open()
        names = sorted(set(devices)) if devices else self.devices()
        before = DatetimeMS(before_ms)
        pause = 0.0
        for device in names:
            spec: Document = {"device": device, "ts": {"$lt": before}}
            try:
                if dry_run:
                    count = self._positions.count_documents(spec)
                    if count:
                        yield Pruned(device, count)
                    continue
                while True:
                    time.sleep(pause)
                    pause = self.prune_pause
                    # The oldest first, down the (device, ts) index; each delete is a
                    # bounded list of _ids, whatever else matches by then.
                    ids = [
                        doc["_id"]
                        for doc in self._positions.find(spec, {"_id": 1})
                        .sort("ts", ASCENDING)
                        .limit(self.prune_batch)
                    ]
                    if not ids:
                        break
                    deleted = self._positions.delete_many({"_id": {"$in": ids}}).deleted_count
                    if deleted:
                        yield Pruned(device, deleted)
                    if len(ids) < self.prune_batch:
                        break
            except PyMongoError as exc:
                self._raise(exc, "pruning")
        yield from self._prune_events(before, names if devices else (), dry_run)

    def _prune_events(
        self, before: DatetimeMS, devices: Collection[str], dry_run: bool
    ) -> Iterator[Pruned]:
        """The events' part of :meth:`prune`: oldest first down their (ts) index."""
        events = self._positions.database.get_collection(EVENTS_COLLECTION, codec_options=_CODEC)
        spec: Document = {"ts": {"$lt": before}}
        if devices:
            spec["device"] = {"$in": sorted(devices)}
        try:
            if dry_run:
                for device in sorted(events.distinct("device", spec)):
                    count = events.count_documents(spec | {"device": device})
                    if count:
                        yield Pruned(device, count, events=True)
                return
            while True:
                time.sleep(self.prune_pause)
                found = list(
                    events.find(spec, {"_id": 1, "device": 1})
                    .sort("ts", ASCENDING)
                    .limit(self.prune_batch)
                )
                if not found:
                    return
                events.delete_many({"_id": {"$in": [doc["_id"] for doc in found]}})
                counts: dict[str, int] = {}
                for doc in found:
                    counts[doc["device"]] = counts.get(doc["device"], 0) + 1
                for device, count in counts.items():
                    yield Pruned(device, count, events=True)
                if len(found) < self.prune_batch:
                    return
        except PyMongoError as exc:
            self._raise(exc, "pruning events")

    def is_cursor(self, text: str) -> bool:
        return text.startswith(CURSOR_PREFIX)

    def ping(self) -> None:
        self._check_open()
        try:
            self._client.admin.command("ping")
        except PyMongoError as exc:
            self._raise(exc, "pinging")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()


def _has_buffered(stream: CollectionChangeStream[Document]) -> bool:
    # pymongo has no public way to ask whether the last batch still holds changes. Without
    # it (a future pymongo) poll returns one change at a time, which is slower, not wrong.
    has_next = getattr(getattr(stream, "_cursor", None), "_has_next", None)
    return bool(has_next()) if callable(has_next) else False


class MongoChangeFeed(ChangeFeed):
    """Follows inserts through a change stream.

    The cursor is the stream's resume token after the last change returned, so it skips
    nothing and repeats nothing; while idle it moves on with the server's post-batch
    resume tokens, so a resume does not rescan what this feed already waited through.
    Resumable interruptions (elections, dropped connections) are resumed by pymongo.
    """

    #: Most changes one getMore returns.
    batch: int = 1000

    def __init__(
        self,
        stream: CollectionChangeStream[Document],
        store: MongoStore,
        max_await_ms: int,
        start: str | None,
    ) -> None:
        self._stream = stream
        self._store = store
        self._max_await_s = max_await_ms / 1000
        token = stream.resume_token
        self._cursor = encode_cursor(token) if token is not None else start
        self._failure: str | None = None  # why the stream ended for good
        self._closed = False

    @property
    def cursor(self) -> str:
        if self._cursor is None:
            raise StoreError("the change stream has not given a resume token yet")
        return self._cursor

    def poll(self, timeout: float) -> list[Change]:
        if self._closed:
            raise StoreError("the change feed is closed")
        if self._failure is not None:
            raise StoreError(self._failure)
        deadline = time.monotonic() + timeout
        changes: list[Change] = []
        while True:
            started = time.monotonic()
            try:
                event = self._next()
            except StoreError:
                if changes and self._failure is not None:
                    return changes  # the stream ended after them: the next poll says so
                raise
            if event is not None:
                self._cursor = encode_cursor(self._stream.resume_token or event["_id"])
                doc = event["fullDocument"]
                changes.append(Change(self._cursor, _to_position(doc), doc.get("origin")))
                if len(changes) < self.batch and _has_buffered(self._stream):
                    continue
                return changes
            token = self._stream.resume_token
            if token is not None:
                self._cursor = encode_cursor(token)
            now = time.monotonic()
            if now >= deadline:
                return changes
            # Some servers (nx-27017) answer an idle getMore at once instead of waiting
            # maxAwaitTimeMS: wait here rather than ask again straight away.
            pause = min(self._max_await_s - (now - started), deadline - now)
            if pause > 0:
                time.sleep(pause)
            if time.monotonic() >= deadline:
                return changes

    def _next(self) -> Document | None:
        """The next insert event, None when there is none yet."""
        try:
            event = self._stream.try_next()
        except PyMongoError as exc:
            error = self._store._error(exc, "following changes")
            if not self._stream.alive:  # pymongo gave up: no later poll can succeed
                self._failure = str(error)
            raise error from None
        # The server ends a change stream only with an invalidate (drop, rename,
        # dropDatabase); the event itself passes the $match or not, the cursor closes.
        if (event is None and not self._stream.alive) or (
            event is not None and event.get("operationType") != "insert"
        ):
            self._failure = DROPPED
            raise StoreError(DROPPED)
        return event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            # On failure the server forgets the cursor with the connection anyway.
            with contextlib.suppress(PyMongoError):
                self._stream.close()
