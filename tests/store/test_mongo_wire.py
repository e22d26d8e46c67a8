"""What MongoDB itself sees from the MongoDB store, pinned with mockupdb.

mockupdb is MongoDB's scripted wire-protocol server: each test runs the store in a thread
(``mockupdb.go``), receives the commands the driver sends, checks them and answers the way
a replica set primary would. nx-27017 cannot show these (it ignores the write concern,
sends no invalidate and refuses no change stream), so they are pinned here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from bson import ObjectId, Timestamp
from mockupdb import MockupDB, OpMsg, go

from geotrack.errors import StoreError
from geotrack.schema import Position
from geotrack.store.mongo import DROPPED, MongoChangeFeed, MongoStore, encode_cursor
from tests.factories import T0, pos

pytestmark = pytest.mark.timeout(30)

NS = "fleet.positions"
RESUMABLE = ["ResumableChangeStreamError"]


def event(token: str, position: Position, origin: str | None = None) -> dict[str, Any]:
    """An insert change event as MongoDB sends it."""
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "device": position.device,
        "ts": datetime.fromisoformat(position.time.replace("Z", "+00:00")),
        "loc": {"type": "Point", "coordinates": [position.lon, position.lat]},
    }
    if origin is not None:
        doc["origin"] = origin
    return {
        "_id": {"_data": token},
        "operationType": "insert",
        "clusterTime": Timestamp(T0 // 1000, 1),
        "ns": {"db": "fleet", "coll": "positions"},
        "documentKey": {"_id": doc["_id"]},
        "fullDocument": doc,
    }


def first_batch(cursor_id: int, token: str, *events: dict[str, Any]) -> dict[str, Any]:
    batch = {"id": cursor_id, "ns": NS, "firstBatch": list(events)}
    return {"cursor": batch | {"postBatchResumeToken": {"_data": token}}}


def next_batch(cursor_id: int, token: str, *events: dict[str, Any]) -> dict[str, Any]:
    batch = {"id": cursor_id, "ns": NS, "nextBatch": list(events)}
    return {"cursor": batch | {"postBatchResumeToken": {"_data": token}}}


class Wire:
    """A mock replica set primary and the stores opened against it."""

    def __init__(self, server: MockupDB) -> None:
        self.server = server
        self.stores: list[MongoStore] = []
        self.killed: list[int] = []  # cursor ids the client killed

    def url(self, options: str = "") -> str:
        query = "replicaSet=rs0&serverSelectionTimeoutMS=3000" + (f"&{options}" if options else "")
        return f"mongodb://{self.server.address_string}/fleet?{query}"

    def expect(self, name: str) -> OpMsg:
        """The next command, which must be ``name``."""
        request = self.server.receives(timeout=5)
        assert request.command_name == name, request
        return request

    def open(self, options: str = "") -> MongoStore:
        future = go(MongoStore.from_url, self.url(options))
        self.expect("createIndexes").ok()
        store: MongoStore = future()
        self.stores.append(store)
        return store

    def follow(self, store: MongoStore, token: str = "T0", **kwargs: Any) -> MongoChangeFeed:
        future = go(store.follow, **kwargs)
        self.expect("aggregate").replies(first_batch(42, token))
        feed: MongoChangeFeed = future()
        return feed


@pytest.fixture(scope="module")
def stopping() -> Iterator[list[threading.Thread]]:
    """Servers being stopped; MockupDB.stop() takes a second, so they stop side by side."""
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(15)
    assert not any(thread.is_alive() for thread in threads), "a mock server did not stop"


@pytest.fixture
def wire(stopping: list[threading.Thread]) -> Iterator[Wire]:
    server = MockupDB(request_timeout=5)
    server.run()
    wire = Wire(server)
    hello = {
        "isWritablePrimary": True,
        "ismaster": True,
        "helloOk": True,
        "setName": "rs0",
        "hosts": [server.address_string],
        "primary": server.address_string,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "logicalSessionTimeoutMinutes": 30,
    }

    def routine(request: OpMsg) -> bool:
        name = (request.command_name or "").lower()
        if name in ("ismaster", "hello"):
            return bool(request.replies(hello))
        if name == "endsessions":
            return bool(request.ok())
        if name == "killcursors":
            wire.killed.extend(request["cursors"])
            return bool(request.ok())
        return False

    server.autoresponds(routine)
    try:
        yield wire
    finally:
        for store in wire.stores:
            store.close()
        thread = threading.Thread(target=server.stop, name="mockupdb-stop")
        thread.start()
        stopping.append(thread)


def test_open_creates_the_indexes_with_the_write_concern(wire: Wire) -> None:
    future = go(MongoStore.from_url, wire.url())
    request = wire.expect("createIndexes")
    assert request["createIndexes"] == "positions"
    indexes = [(dict(ix["key"]), ix.get("unique", False)) for ix in request["indexes"]]
    assert indexes == [({"device": 1, "ts": 1}, True), ({"loc": "2dsphere"}, False)]
    assert request["writeConcern"] == {"w": "majority", "j": True}
    request.ok()
    wire.stores.append(future())


def test_write_is_one_unordered_insert_waiting_for_majority_and_journal(wire: Wire) -> None:
    store = wire.open()
    full = pos(speed=12.5, heading=90.0, alt=-3.0, acc=4.0, attrs={"batt": 87})
    future = go(store.write, [full, pos("bare", 0)], "relay-a")
    request = wire.expect("insert")
    assert request["insert"] == "positions"
    assert request["ordered"] is False
    assert request["writeConcern"] == {"w": "majority", "j": True}
    first, bare = request["documents"]
    assert first["loc"] == {"type": "Point", "coordinates": [full.lon, full.lat]}
    assert first["ts"] == datetime(2025, 11, 25, 12, 0)
    assert (first["speed"], first["heading"], first["alt"], first["acc"]) == (12.5, 90, -3, 4)
    assert first["attrs"] == {"batt": 87}
    assert first["origin"] == "relay-a"
    assert isinstance(first["_id"], ObjectId) and isinstance(first["stored"], datetime)
    # Absent optional fields are left out, not stored as null.
    assert set(bare) == {"_id", "device", "ts", "loc", "stored", "origin"}
    request.replies({"n": 2})
    assert future() == [True, True]


@pytest.mark.parametrize(
    ("options", "concern"),
    [
        ("w=1", {"w": 1}),
        ("journal=false", {"j": False}),
        ("w=2&wtimeoutMS=500", {"w": 2, "wtimeout": 500}),
        ("wtimeoutMS=500", {"w": "majority", "j": True, "wtimeout": 500}),
    ],
)
def test_the_url_write_concern_replaces_the_default(
    wire: Wire, options: str, concern: dict[str, Any]
) -> None:
    store = wire.open(options)
    future = go(store.write, [pos()])
    request = wire.expect("insert")
    assert request["writeConcern"] == concern
    request.replies({"n": 1})
    assert future() == [True]


def test_duplicate_key_errors_are_duplicates(wire: Wire) -> None:
    store = wire.open()
    batch = [pos(i=0), pos(i=1), pos(i=0, lat=1.0), pos(i=2)]
    future = go(store.write, batch)
    request = wire.expect("insert")
    # The repeat within the batch is not sent: it is a duplicate of its first occurrence.
    assert [doc["ts"] for doc in request["documents"]] == [
        datetime(2025, 11, 25, 12, 0, s) for s in (0, 1, 2)
    ]
    request.replies(
        {
            "n": 2,
            "writeErrors": [
                {"index": 1, "code": 11000, "errmsg": "E11000 duplicate key error"},
            ],
        }
    )
    assert future() == [True, False, False, True]


def test_another_write_error_fails_the_batch(wire: Wire) -> None:
    store = wire.open()
    future = go(store.write, [pos(i=0), pos(i=1)])
    wire.expect("insert").replies(
        {
            "n": 0,
            "writeErrors": [
                {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error"},
                {"index": 1, "code": 121, "errmsg": "Document failed validation"},
            ],
        }
    )
    with pytest.raises(StoreError, match=r"Document failed validation \(code 121\)"):
        future()


def test_a_write_concern_error_fails_the_batch(wire: Wire) -> None:
    store = wire.open()
    future = go(store.write, [pos()])
    wire.expect("insert").replies(
        {"n": 1, "writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"}}
    )
    with pytest.raises(StoreError, match=r"not confirmed by the write concern.*timed out"):
        future()


def test_follow_opens_a_change_stream_filtered_on_the_server(wire: Wire) -> None:
    store = wire.open()
    future = go(store.follow, devices=["car-1", "bus"], exclude_origin="relay-b")
    request = wire.expect("aggregate")
    assert request["aggregate"] == "positions"
    assert request["pipeline"] == [
        {"$changeStream": {}},
        {
            "$match": {
                "operationType": "insert",
                "fullDocument.device": {"$in": ["bus", "car-1"]},
                "fullDocument.origin": {"$ne": "relay-b"},
            }
        },
    ]
    request.replies(first_batch(42, "T0"))
    with future() as feed:
        assert feed.cursor == encode_cursor({"_data": "T0"})
        polled = go(feed.poll, 5.0)
        get_more = wire.expect("getMore")
        assert get_more["getMore"] == 42
        assert get_more["maxTimeMS"] == 50  # an idle getMore waits at most this long
        get_more.replies(
            next_batch(42, "T2", event("T1", pos(i=1), "relay-a"), event("T2", pos(i=2)))
        )
        changes = polled()
        assert [c.position for c in changes] == [pos(i=1), pos(i=2)]
        assert [c.origin for c in changes] == ["relay-a", None]
        assert [c.cursor for c in changes] == [encode_cursor({"_data": t}) for t in ("T1", "T2")]
        assert feed.cursor == changes[-1].cursor
    assert wire.killed == [42]


def test_an_idle_feed_moves_on_with_post_batch_resume_tokens(wire: Wire) -> None:
    store = wire.open()
    feed = wire.follow(store)
    polled = go(feed.poll, 0.0)
    wire.expect("getMore").replies(next_batch(42, "T7"))
    assert polled() == []
    assert feed.cursor == encode_cursor({"_data": "T7"})


def _resumable_error(request: OpMsg) -> None:
    request.replies({"ok": 0, "code": 6, "errmsg": "host unreachable", "errorLabels": RESUMABLE})


def _shutting_down(request: OpMsg) -> None:
    request.replies(
        {"ok": 0, "code": 91, "errmsg": "shutdown in progress", "errorLabels": RESUMABLE}
    )


def _network_error(request: OpMsg) -> None:
    request.hangup()


@pytest.mark.parametrize("fail", [_resumable_error, _shutting_down, _network_error])
def test_a_resumable_error_resumes_after_the_last_token(
    wire: Wire, fail: Callable[[OpMsg], None]
) -> None:
    store = wire.open()
    feed = wire.follow(store, devices=["car-1"])
    polled = go(feed.poll, 5.0)
    wire.expect("getMore").replies(next_batch(42, "T1", event("T1", pos(i=1))))
    assert [c.position for c in polled()] == [pos(i=1)]

    polled = go(feed.poll, 5.0)
    fail(wire.expect("getMore"))
    resumed = wire.expect("aggregate")
    stages = resumed["pipeline"]
    assert stages[0] == {"$changeStream": {"resumeAfter": {"_data": "T1"}}}
    assert stages[1]["$match"]["fullDocument.device"] == {"$in": ["car-1"]}
    resumed.replies(first_batch(43, "T2", event("T2", pos(i=2))))
    changes = polled()
    assert [c.position for c in changes] == [pos(i=2)]
    assert feed.cursor == encode_cursor({"_data": "T2"})


def test_since_a_time_starts_at_that_operation_time(wire: Wire) -> None:
    store = wire.open()
    future = go(store.follow, since=T0 + 1500)
    request = wire.expect("aggregate")
    assert request["pipeline"][0] == {
        "$changeStream": {"startAtOperationTime": Timestamp(T0 // 1000 + 1, 0)}
    }
    request.replies(first_batch(42, "T0"))
    future()


def test_since_a_cursor_resumes_after_its_token(wire: Wire) -> None:
    store = wire.open()
    token = {"_data": "8263A0B4C1000000012B022C0100296E5A1004"}
    future = go(store.follow, since=encode_cursor(token))
    request = wire.expect("aggregate")
    assert request["pipeline"][0] == {"$changeStream": {"resumeAfter": token}}
    request.replies(first_batch(42, token["_data"]))
    assert future().cursor == encode_cursor(token)


@pytest.mark.parametrize("delivered", [True, False], ids=["invalidate-event", "cursor-closed"])
def test_a_dropped_collection_ends_the_feed_clearly(wire: Wire, delivered: bool) -> None:
    store = wire.open()
    feed = wire.follow(store)
    polled = go(feed.poll, 5.0)
    invalidate = {
        "_id": {"_data": "T9"},
        "operationType": "invalidate",
        "clusterTime": Timestamp(T0 // 1000, 2),
    }
    # MongoDB sends the invalidate event past any $match, then closes the cursor (id 0).
    wire.expect("getMore").replies(next_batch(0, "T9", *([invalidate] if delivered else [])))
    with pytest.raises(StoreError, match=f"^{DROPPED}$"):
        polled()
    with pytest.raises(StoreError, match=f"^{DROPPED}$"):
        feed.poll(0.1)
    feed.close()


def test_a_standalone_server_cannot_follow(wire: Wire) -> None:
    store = wire.open()
    future = go(store.follow)
    wire.expect("aggregate").replies(
        {
            "ok": 0,
            "code": 40573,
            "codeName": "Location40573",
            "errmsg": "The $changeStream stage is only supported on replica sets",
        }
    )
    with pytest.raises(StoreError) as info:
        future()
    message = str(info.value)
    assert message.endswith(
        "change streams need a replica set: start mongod with --replSet rs0 and run rs.initiate()"
    )


def test_since_before_the_oplog_is_a_clear_error(wire: Wire) -> None:
    store = wire.open()
    future = go(store.follow, since=0)
    wire.expect("aggregate").replies(
        {
            "ok": 0,
            "code": 286,
            "codeName": "ChangeStreamHistoryLost",
            "errmsg": "Resume of change stream was not possible",
            "errorLabels": ["NonResumableChangeStreamError"],
        }
    )
    with pytest.raises(StoreError, match="oplog no longer reaches back to 1970-01-01T00:00:00"):
        future()


def test_failed_authentication_is_one_clear_line(wire: Wire) -> None:
    wire.server.autoresponds("saslStart", {"ok": 0, "code": 18, "errmsg": "Authentication failed."})
    url = wire.url().replace("mongodb://", "mongodb://ann:s3cret@")
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        MongoStore.from_url(url)
    message = str(info.value)
    assert message == (
        f"authentication to MongoDB at {wire.server.address_string} as 'ann' failed: "
        "check the user name, password and authSource"
    )
    assert time.monotonic() - started < 5


def test_display_url_keeps_the_user_and_hides_the_secrets(wire: Wire) -> None:
    wire.server.autoresponds(
        "saslStart", {"ok": 1, "conversationId": 1, "done": True, "payload": b""}
    )
    url = wire.url("authMechanism=PLAIN").replace("mongodb://", "mongodb://ann:s3cr%40t@")
    future = go(MongoStore.from_url, url)
    wire.expect("createIndexes").ok()
    store: MongoStore = future()
    wire.stores.append(store)
    assert store.display_url == (
        f"mongodb://ann@{wire.server.address_string}/fleet"
        "?replicaSet=rs0&serverSelectionTimeoutMS=3000&authMechanism=PLAIN"
    )


def test_query_is_one_find_sorted_by_device_and_time(wire: Wire) -> None:
    store = wire.open()
    future = go(
        lambda: list(store.query(devices=["car-1", "bus"], since_ms=T0 + 1, until_ms=T0 + 2500))
    )
    request = wire.expect("find")
    assert request["filter"] == {
        "device": {"$in": ["bus", "car-1"]},
        "ts": {
            "$gte": datetime(2025, 11, 25, 12, 0, 0, 1000),
            "$lte": datetime(2025, 11, 25, 12, 0, 2, 500_000),
        },
    }
    assert request["sort"] == {"device": 1, "ts": 1}
    assert request["batchSize"] == 1000
    found = event("T1", pos(i=1, speed=2.0))["fullDocument"]
    request.replies({"cursor": {"id": 0, "ns": NS, "firstBatch": [found | {"speed": 2.0}]}})
    assert future() == [pos(i=1, speed=2.0)]


def test_prune_finds_ids_oldest_first_then_deletes_them_by_id(wire: Wire) -> None:
    store = wire.open()
    store.prune_batch = 2
    store.prune_pause = 0.0
    ids = [ObjectId() for _ in range(3)]
    future = go(lambda: list(store.prune(T0 + 5000, devices=["car-1"])))
    old = {"device": "car-1", "ts": {"$lt": datetime(2025, 11, 25, 12, 0, 5)}}
    for batch in (ids[:2], ids[2:]):
        request = wire.expect("find")
        assert request["filter"] == old
        assert request["projection"] == {"_id": 1}
        assert (request["sort"], request["limit"]) == ({"ts": 1}, 2)
        docs = [{"_id": i} for i in batch]
        request.replies({"cursor": {"id": 0, "ns": NS, "firstBatch": docs}})
        request = wire.expect("delete")
        # A bounded delete by _id, not the range: each batch is short whatever the store
        # holds, and it waits for the write concern like every write.
        assert request["deletes"] == [{"q": {"_id": {"$in": batch}}, "limit": 0}]
        assert request["writeConcern"] == {"w": "majority", "j": True}
        request.replies({"n": len(batch)})
    # The last batch was short: no more positions are asked for. Then the old events
    # of the same devices, the same way (down their ts index).
    request = wire.expect("find")
    assert request["find"] == "events"
    assert request["filter"] == {"ts": old["ts"], "device": {"$in": ["car-1"]}}
    assert (request["sort"], request["limit"]) == ({"ts": 1}, 2)
    request.replies({"cursor": {"id": 0, "ns": "fleet.events", "firstBatch": []}})
    assert [(p.device, p.count) for p in future()] == [("car-1", 2), ("car-1", 1)]


def test_a_dry_run_prune_only_counts(wire: Wire) -> None:
    store = wire.open()
    future = go(lambda: list(store.prune(T0, devices=["car-1"], dry_run=True)))
    request = wire.expect("aggregate")
    match = request["pipeline"][0]["$match"]
    assert match == {"device": "car-1", "ts": {"$lt": datetime(2025, 11, 25, 12, 0)}}
    request.replies({"cursor": {"id": 0, "ns": NS, "firstBatch": [{"_id": 1, "n": 7}]}})
    request = wire.expect("distinct")  # events: which devices have old ones, then counts
    assert (request["distinct"], request["key"]) == ("events", "device")
    request.replies({"values": ["car-1"]})
    request = wire.expect("aggregate")
    request.replies({"cursor": {"id": 0, "ns": "fleet.events", "firstBatch": [{"_id": 1, "n": 2}]}})
    assert [(p.device, p.count, p.events) for p in future()] == [
        ("car-1", 7, False),
        ("car-1", 2, True),
    ]
