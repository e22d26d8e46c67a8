"""Reading FIT activity files: real Garmin files, semicircles, the GPX attr names, damage."""

from __future__ import annotations

import gzip
from pathlib import Path

import fitdecode
import pytest

from geotrack.errors import SourceError
from geotrack.importing import import_files
from geotrack.schema import Position
from geotrack.sources.base import Item, ReadOptions, Skipped
from geotrack.sources.fit import SEMICIRCLE, read_fit
from geotrack.sources.formats import formats
from geotrack.sources.gpx import read_gpx
from geotrack.store import open_store
from tests.conftest import SAMPLES
from tests.factories import stored

WALK = SAMPLES / "fit" / "garmin-fenix-5-walk.fit"
BIKE = SAMPLES / "fit" / "garmin-edge-820-bike.fit"


def read(path: Path, **options: object) -> list[Item]:
    return list(read_fit(path, ReadOptions(**options)))  # type: ignore[arg-type]


def positions(items: list[Item]) -> list[Position]:
    return [i for i in items if isinstance(i, Position)]


def raw_records(path: Path) -> list[dict[str, object]]:
    """The record messages as fitdecode gives them, for comparing against."""
    with fitdecode.FitReader(str(path)) as fit:
        return [
            {f.name: f.value for f in frame.fields}
            for frame in fit
            if frame.frame_type == fitdecode.FIT_FRAME_DATA and frame.name == "record"
        ]


@pytest.mark.parametrize(("path", "count"), [(WALK, 17), (BIKE, 15)])
def test_real_garmin_files(path: Path, count: int) -> None:
    items = read(path)
    got = positions(items)
    records = [r for r in raw_records(path) if r.get("position_lat") is not None]
    assert len(got) == len(records) == count
    for p, r in zip(got, records, strict=True):
        assert p.lat == r["position_lat"] * SEMICIRCLE  # type: ignore[operator]
        assert p.lon == r["position_long"] * SEMICIRCLE  # type: ignore[operator]
        assert p.ts_ms == int(r["timestamp"].timestamp() * 1000)  # type: ignore[attr-defined]
        assert p.alt == pytest.approx(r.get("enhanced_altitude", r.get("altitude")), abs=1e-3)
        assert p.attrs is not None and p.attrs["hr"] == r["heart_rate"]
    assert {p.device for p in got} == {path.stem}
    head = path.read_bytes()[:64]
    assert next(name for name, fmt in formats().items() if fmt.sniff(head)) == "fit"


def test_walk_values_and_attr_names_agree_with_gpx() -> None:
    first = positions(read(WALK, device="watch"))[0]
    assert first.device == "watch"
    assert (round(first.lat, 7), round(first.lon, 7)) == (38.2305196, -122.6333219)
    assert first.ts == "2017-06-11T14:32:51.000Z"
    assert first.speed == 1.204
    assert first.attrs == {"hr": 71, "cad": 53, "atemp": 26, "distance": 0.0}
    # The names GPX's Garmin TrackPointExtension gives heart rate and cadence.
    [walk] = read_gpx(SAMPLES / "walk.gpx")
    assert {"hr", "cad"} <= set(walk.positions[0].attrs or {})


def test_truncated_file_keeps_the_records_before_the_cut(tmp_path: Path) -> None:
    whole = positions(read(WALK))
    cut = tmp_path / "cut.fit"
    cut.write_bytes(WALK.read_bytes()[: WALK.stat().st_size // 2])
    got: list[Item] = []
    with pytest.raises(SourceError, match=r"cut\.fit: the FIT file ends early") as caught:
        got.extend(read_fit(cut, ReadOptions()))
    assert "\n" not in str(caught.value)
    assert 3 <= len(got) < len(whole)
    assert got == [p.__class__(**{**_fields(p), "device": "cut"}) for p in whole[: len(got)]]


def _fields(p: Position) -> dict[str, object]:
    return {f: getattr(p, f) for f in p.__struct_fields__}


def test_gzip_and_not_a_fit_file(tmp_path: Path) -> None:
    packed = tmp_path / "garmin-fenix-5-walk.fit.gz"
    packed.write_bytes(gzip.compress(WALK.read_bytes()))
    assert len(positions(read(packed))) == 17
    bad = tmp_path / "bad.fit"
    bad.write_bytes(b"\x0e\x10this is not a FIT file at all")
    with pytest.raises(SourceError, match=r"bad\.fit: "):
        read(bad)


def test_records_without_a_position_are_skipped_with_the_reason() -> None:
    # The Edge 820 file starts recording before its first fix.
    all_records = raw_records(BIKE)
    without = sum(r.get("position_lat") is None for r in all_records)
    items = read(BIKE)
    assert [s.reason for s in items if isinstance(s, Skipped)] == ["no position"] * without


@pytest.mark.parametrize("path", [WALK, BIKE])
def test_import_into_sqlite_and_again_store_nothing(tmp_path: Path, path: Path) -> None:
    db = tmp_path / "f.db"
    with open_store(f"sqlite:///{db}") as store:
        (first,) = import_files(store, [path])
        (again,) = import_files(store, [path])
    assert first.format == "fit" and first.error is None
    assert (again.stored, again.duplicates) == (0, first.stored)
    assert stored(db) == positions(read(path))


def test_a_bad_checksum_is_reported_after_the_records(tmp_path: Path) -> None:
    data = bytearray(WALK.read_bytes())
    data[-1] ^= 0xFF  # the file's CRC, in its last two bytes
    damaged = tmp_path / "crc.fit"
    damaged.write_bytes(bytes(data))
    got: list[Item] = []
    with pytest.raises(SourceError, match=r"crc\.fit: mismatching CRC"):
        got.extend(read_fit(damaged, ReadOptions()))
    assert len(got) == 17
