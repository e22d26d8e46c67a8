"""Reading OwnTracks Recorder .rec files: positions as POST /owntracks maps them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from geotrack.errors import SourceError
from geotrack.importing import import_files
from geotrack.relay.http_devices import parse_owntracks
from geotrack.schema import Position
from geotrack.sources.base import Item, Notice, ReadOptions, Skipped
from geotrack.sources.formats import formats
from geotrack.sources.owntracks_rec import read_rec
from geotrack.store import open_store
from tests.conftest import SAMPLES
from tests.factories import stored

DEMO = SAMPLES / "owntracks" / "demo-iphone.rec"


def read(path: Path, **options: Any) -> list[Item]:
    return list(read_rec(path, ReadOptions(**options)))


def positions(items: list[Item]) -> list[Position]:
    return [i for i in items if isinstance(i, Position)]


def detect(path: Path) -> str:
    head = path.read_bytes()[: 1 << 16]
    return next(name for name, fmt in formats().items() if fmt.sniff(head))


def line(message: dict[str, Any], topic: str = "*", at: str = "2024-03-07T08:00:00Z") -> str:
    return f"{at}\t{topic:<18}\t{json.dumps(message)}\n"


LOCATION = {
    "_type": "location",
    "tid": "jd",
    "lat": 48.85,
    "lon": 2.29,
    "tst": 1709798400,
    "acc": 5,
    "alt": 40,
    "vel": 36,
    "cog": 90,
    "batt": 80,
    "conn": "w",
}


def test_recorder_layout_names_the_device_and_fields_map_as_over_http(tmp_path: Path) -> None:
    folder = tmp_path / "rec" / "jane" / "phone"
    folder.mkdir(parents=True)
    path = folder / "2024-03.rec"
    path.write_text(
        line(LOCATION)
        + line({"_type": "lwt", "tst": 1709798000}, topic="-")
        + line({"_type": "transition", "event": "enter", "tst": 1709798460}, topic="event")
        + line({**LOCATION, "tst": 1709798401, "lat": 95})
        + "garbage without tabs\n"
        + line({**LOCATION, "tst": 1709798402})[:-20]
        + "\n"
        + line({**LOCATION, "tst": 1709798403}),
        encoding="utf-8",
    )
    items = read(path)
    first, last = positions(items)
    # Exactly what POST /owntracks?u=jane&d=phone stores for the same message.
    assert first == parse_owntracks(LOCATION, user="jane", device="phone")
    assert first.device == "jane:phone"
    assert (first.speed, first.heading, first.acc, first.alt) == (10, 90, 5, 40)
    assert first.attrs == {"tid": "jd", "batt": 80, "conn": "w"}
    assert last.ts == "2024-03-07T08:00:03.000Z"
    assert [(s.reason, s.where) for s in items if isinstance(s, Skipped)] == [
        ("lat: " + _lat_reason(), "line 4"),
        ("not a recorder line (TIME<TAB>TOPIC<TAB>JSON)", "line 5"),
        ("not valid JSON (a cut line?)", "line 6"),
    ]
    notices = [n.text for n in items if isinstance(n, Notice)]
    assert notices == ["2 messages other than locations ignored (1 lwt, 1 transition)"]
    assert isinstance(items[-1], Notice)
    assert detect(path) == "owntracks"


def _lat_reason() -> str:
    try:
        parse_owntracks({**LOCATION, "lat": 95})
    except Exception as exc:
        return str(exc).removeprefix("lat: ")
    raise AssertionError("lat 95 was accepted")


def test_device_from_option_then_tid_then_stem(tmp_path: Path) -> None:
    path = tmp_path / "phone.rec"
    no_tid = {k: v for k, v in LOCATION.items() if k != "tid"}
    path.write_text(line(LOCATION) + line({**no_tid, "tst": 1709798401}), encoding="utf-8")
    assert [p.device for p in positions(read(path))] == ["jd", "phone"]
    assert [p.device for p in positions(read(path, device="mine"))] == ["mine", "mine"]


def test_demo_sample_and_gzip(tmp_path: Path) -> None:
    """The Recorder's own demo file: 23 locations and 2 last-will messages."""
    messages = [json.loads(row.split("\t")[2]) for row in DEMO.read_text().splitlines()]
    items = read(DEMO)
    got = positions(items)
    assert len(got) == sum(m["_type"] == "location" for m in messages) == 23
    assert [p.ts_ms // 1000 for p in got] == [
        int(m["tst"]) for m in messages if m["_type"] == "location"
    ]
    assert {p.device for p in got} == {"NE"}
    assert not [s for s in items if isinstance(s, Skipped)]
    assert [n.text for n in items if isinstance(n, Notice)] == [
        "2 messages other than locations ignored (2 lwt)"
    ]
    packed = tmp_path / "2015-08.rec.gz"
    packed.write_bytes(gzip.compress(DEMO.read_bytes()))
    assert positions(read(packed)) == got


def test_not_a_rec_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.rec"
    path.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"notes\.rec: not an OwnTracks \.rec file"):
        read(path)


def test_import_into_sqlite_and_again_store_nothing(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    with open_store(f"sqlite:///{db}") as store:
        (first,) = import_files(store, [DEMO])
        (again,) = import_files(store, [DEMO])
    assert (first.format, first.stored, dict(first.skipped)) == (
        "owntracks",
        23,
        {},
    )
    assert (again.stored, again.duplicates) == (0, 23)
    assert stored(db) == positions(read(DEMO))
