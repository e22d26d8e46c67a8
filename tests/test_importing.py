"""import_files into a real SQLite file: batches, dedupe, --start, failures mid-file."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from geotrack.errors import InvalidParameter
from geotrack.export.csv import write_csv
from geotrack.export.ndjson import write_ndjson
from geotrack.importing import (
    SHARED_TIME,
    FileReport,
    ImportConfig,
    ImportProgress,
    import_files,
)
from geotrack.schema import Position
from geotrack.store import Store, open_store
from tests.factories import pos, stored
from tests.sources.test_ndjson import varied


def ndjson(path: Path, positions: list[Position]) -> Path:
    out = io.StringIO()
    write_ndjson(positions, out)
    path.write_text(out.getvalue())
    return path


def csv_file(path: Path, positions: list[Position]) -> Path:
    out = io.StringIO(newline="")
    write_csv(positions, out)
    path.write_bytes(out.getvalue().encode())
    return path


class Recorder(ImportProgress):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def file_started(self, path: Path, size: int) -> None:
        self.events.append(("start", size))

    def advanced(self, done_bytes: int | None, positions: int) -> None:
        self.events.append(("advanced", (done_bytes, positions)))

    def file_done(self, report: FileReport) -> None:
        self.events.append(("done", report.path))


def test_every_format_round_trips_through_a_store(tmp_path: Path) -> None:
    """positions in = positions out, and a second import stores nothing new."""
    db = tmp_path / "g.db"
    positions = sorted(varied(), key=lambda p: p.key)
    files = [ndjson(tmp_path / "a.ndjson", positions), csv_file(tmp_path / "b.csv", positions)]
    for path in files:
        db.unlink(missing_ok=True)
        with open_store(f"sqlite:///{db}") as store:
            (first,) = import_files(store, [path])
            (again,) = import_files(store, [path])
        assert (first.read, first.stored, first.duplicates, first.ok) == (6, 6, 0, True)
        assert (again.read, again.stored, again.duplicates, again.ok) == (6, 0, 6, True)
        assert stored(db, sort=True) == positions


def test_batches_repeats_and_progress(tmp_path: Path) -> None:
    track = [pos(i=i) for i in range(250)]
    path = ndjson(tmp_path / "t.ndjson", track + track[:10] + [pos("bus-3", 0)])
    recorder = Recorder()
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        (report,) = import_files(store, [path], ImportConfig(batch=7), recorder)
    assert (report.read, report.stored, report.duplicates) == (261, 251, 10)
    assert len(stored(tmp_path / "g.db")) == 251
    assert recorder.events[0] == ("start", path.stat().st_size)
    assert recorder.events[-1] == ("done", str(path))
    progress = [e[1] for e in recorder.events if e[0] == "advanced"]
    assert progress[-1] == (path.stat().st_size, 261)
    assert len(progress) > 30  # one per batch


def test_start_shifts_each_file_keeping_intervals(tmp_path: Path) -> None:
    path = ndjson(tmp_path / "t.ndjson", [pos(i=0), pos(i=3), pos(i=10)])
    start = 1_900_000_000_000
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        import_files(store, [path], ImportConfig(start_ms=start, device="demo"))
        (again,) = import_files(store, [path], ImportConfig(start_ms=start, device="demo"))
    assert again.stored == 0
    got = stored(tmp_path / "g.db")
    assert [(p.device, p.ts_ms) for p in got] == [
        ("demo", start),
        ("demo", start + 3000),
        ("demo", start + 10_000),
    ]


def test_a_file_failing_midway_keeps_what_was_read_and_the_others_import(tmp_path: Path) -> None:
    track = [pos(i=i) for i in range(20_000)]
    packed = gzip.compress(ndjson(tmp_path / "x", track).read_bytes())
    damaged = tmp_path / "damaged.ndjson.gz"
    damaged.write_bytes(packed[: len(packed) * 2 // 3])
    good = ndjson(tmp_path / "good.ndjson", [pos("bus-3", i) for i in range(5)])
    bad = tmp_path / "bad.ndjson"
    bad.write_text("<html></html>")
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        first, second, third, fourth = import_files(
            store, [damaged, bad, tmp_path / "missing.csv", good]
        )
    assert first.error is not None and first.error.startswith("cannot read past line")
    assert 0 < first.stored == first.read < 20_000
    assert not first.ok
    assert second.format is None and "looks like HTML" in (second.error or "")
    assert second.summary().startswith(f"{bad}: not imported: not a file geotrack can import")
    assert third.error == "cannot read: No such file or directory"
    assert fourth.ok and fourth.stored == 5
    assert len(stored(tmp_path / "g.db")) == first.stored + 5


def test_skips_are_counted_by_reason_in_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "lat,lon,time\n"
        "52.5,13.4,2025-11-25T12:00:00Z\n"
        "95,13.4,2025-11-25T12:00:01Z\n"
        "52.5,13.4,\n"
        "52.5,13.4,\n"
        "52.5,13.4,2025-11-25T12:00:00Z\n"
    )
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        (report,) = import_files(store, [path])
    (lat_reason,) = set(report.skipped) - {"no time"}
    assert lat_reason.startswith("lat: ")
    assert report.skipped == {"no time": 2, lat_reason: 1}
    assert report.summary() == (
        f"{path} (csv): read 2, stored 1, 1 duplicate, 3 skipped: 2 no time (first at line 4); "
        f"1 {lat_reason} (first at line 3)"
    )
    assert not report.ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xls"}, "--format: unknown format 'xls'"),
        ({"device": "my phone"}, "--device: 'my phone' is not a device id"),
        ({"retime_kmh": 0.0}, "--retime: must be a speed above 0 km/h"),
    ],
)
def test_config_is_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        ImportConfig(**kwargs)  # type: ignore[arg-type]


def test_points_sharing_a_time_elsewhere_are_skipped_and_retime_stores_them(
    tmp_path: Path,
) -> None:
    same = [pos(i=i, ts="1901-12-13T20:45:52.207Z") for i in range(184)]
    path = ndjson(tmp_path / "t.ndjson", same + same[:1])  # and one true duplicate
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        (report,) = import_files(store, [path])
        assert (report.read, report.stored, report.duplicates) == (2, 1, 1)
        assert report.skipped == {SHARED_TIME: 183}
        assert f"183 {SHARED_TIME} (first at car-1 1901-12-13T20:45:52.207Z)" in report.summary()
        assert not report.ok
        (retimed,) = import_files(store, [path], ImportConfig(retime_kmh=30))
    # The first point was stored already; the repeat of it at the end gets a time of its own.
    assert retimed.ok and (retimed.stored, retimed.duplicates) == (184, 1)
    got = stored(tmp_path / "g.db")
    assert len(got) == 185 and len({p.ts for p in got}) == 185


def test_a_batch_the_store_refuses_ends_the_file_and_the_next_file_is_tried(
    tmp_path: Path,
) -> None:
    path = ndjson(tmp_path / "t.ndjson", [pos(i=i) for i in range(30)])
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        store.close()  # every write now fails with StoreError
        first, second = import_files(store, [path, path], ImportConfig(batch=10))
    for report in (first, second):
        assert report.error is not None and report.error.endswith("is closed")
        assert (report.read, report.stored, report.duplicates) == (10, 0, 0)
        assert not report.ok


def test_every_backend_imports_and_deduplicates(store: Store, tmp_path: Path) -> None:
    """The importer only uses Store.write: MongoDB (over the wire) as well as SQLite."""
    positions = sorted(varied(), key=lambda p: p.key)
    files = [ndjson(tmp_path / "a.ndjson", positions), csv_file(tmp_path / "b.csv", positions)]
    first, second = import_files(store, files)
    assert (first.stored, second.stored, second.duplicates) == (6, 0, 6)
    assert sorted(store.query(), key=lambda p: p.key) == positions
