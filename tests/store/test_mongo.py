"""The MongoDB store opened without creating, and its ping, over the wire with nx-27017."""

from __future__ import annotations

from pathlib import Path

import pytest

from geotrack.errors import StoreError, StoreNotFound
from geotrack.store import open_store
from tests.mongo_servers import Nx27017, fresh_database, nx27017_server
from tests.test_store_contract import pos

pytestmark = pytest.mark.timeout(60)


def test_a_database_without_positions_is_no_store_and_nothing_is_created(
    request: pytest.FixtureRequest,
) -> None:
    server = nx27017_server(request)
    database = fresh_database()
    url = server.url(database)
    request.addfinalizer(lambda: server.drop_database(database))
    with pytest.raises(StoreNotFound) as caught:
        open_store(url, create=False)
    assert str(caught.value) == (
        f"no store at database {database!r} ({url}): it has no positions collection: "
        "nothing has been stored there yet; check --store"
    )
    assert "positions" not in server.client[database].list_collection_names()

    # A relay (create=True) makes the store; from then on a reader finds it, empty or not.
    open_store(url).close()
    with open_store(url, create=False) as reader:
        assert list(reader.query()) == []
        with open_store(url) as writer:
            writer.write([pos(i=0)])
        assert list(reader.query()) == [pos(i=0)]


def test_ping_succeeds_while_the_server_runs_and_fails_once_it_stopped(tmp_path: Path) -> None:
    server = Nx27017(tmp_path)  # a server of this test's own, to stop
    server.start()
    try:
        url = server.url(fresh_database(), "serverSelectionTimeoutMS=300&connectTimeoutMS=300")
        with open_store(url) as store:
            store.ping()
            server.stop()
            # The pooled connection is found closed first, then no server answers.
            with pytest.raises(StoreError, match=f"MongoDB at {server.address}"):
                store.ping()
            with pytest.raises(StoreError, match=f"cannot reach MongoDB at {server.address}"):
                store.ping()
    finally:
        server.stop()
