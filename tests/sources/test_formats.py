"""Recognising a file's format by its content, gzip of any format, and one-line refusals."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from geotrack.errors import InvalidParameter, SourceError
from geotrack.export.csv import write_csv
from geotrack.export.ndjson import write_ndjson
from geotrack.sources import formats as registry
from geotrack.sources.base import Format, Item, ReadOptions, Skipped
from geotrack.sources.formats import detect, format_names, formats, read, resolve
from tests.factories import pos

TRACK = [pos(i=i) for i in range(5)]
NOT_POSITIONS = b'{"version": 2, "data": {"x": [1, {"y": 2}]}, "name": "a \\" b"}'


def ndjson_text() -> str:
    out = io.StringIO()
    write_ndjson(TRACK, out)
    return out.getvalue()


def csv_text() -> str:
    out = io.StringIO(newline="")
    write_csv(TRACK, out)
    return out.getvalue()


def test_every_module_has_a_format_and_names_are_the_choices() -> None:
    known = formats()
    assert {"ndjson", "csv"} <= known.keys()
    assert format_names() == ["auto", *known]
    for fmt in known.values():
        assert fmt.name and fmt.description and fmt.suffixes
        assert fmt.sniff(b"") is False  # an empty file is nobody's


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("track.txt", ndjson_text(), "ndjson"),  # content, not the suffix
        ("track.json", ndjson_text(), "ndjson"),
        ("export.dat", csv_text(), "csv"),
        ("export", csv_text(), "csv"),
    ],
)
def test_detected_by_content(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert detect(path).name == expected
    assert [i for i in read(path) if not isinstance(i, Skipped)] == TRACK


def test_gzip_of_any_format(tmp_path: Path) -> None:
    for name, text in (("a.ndjson.gz", ndjson_text()), ("b.csv.gz", csv_text()), ("c", csv_text())):
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()))
        assert list(read(path)) == TRACK


@pytest.mark.parametrize(
    ("content", "looks_like"),
    [
        (b"", "an empty file"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
        (bytes(range(256)) * 4, "binary data"),
        (b"PK\x03\x04rest", "a ZIP archive"),
        (NOT_POSITIONS, "JSON without positions: top-level keys version, data, name"),
        (b"[1, 2, 3]", "a JSON array"),
        (b'<?xml version="1.0"?>\n<!-- c -->\n<svg width="1"/>', "XML with root element <svg>"),
        (b"name;x;y\na;1;2\n", "a table with columns 'name', 'x', 'y'"),
        (b"hello world\n", "text starting 'hello world'"),
    ],
)  # fmt: skip
def test_refusal_says_what_it_looks_like_and_what_is_expected(
    tmp_path: Path, content: bytes, looks_like: str
) -> None:
    path = tmp_path / "upload.gpx"
    path.write_bytes(content)
    with pytest.raises(SourceError) as info:
        detect(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not a file geotrack can import: it looks like {looks_like}")
    assert "expected one of: " in message and "csv (.csv" in message and "ndjson (" in message


def test_gzip_refusal_says_gzip(tmp_path: Path) -> None:
    path = tmp_path / "page.gz"
    path.write_bytes(gzip.compress(b"<html><body></body></html>"))
    with pytest.raises(SourceError, match="looks like gzip of HTML"):
        detect(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        detect(tmp_path / "nope.csv")
    with pytest.raises(SourceError, match="is a directory"):
        detect(tmp_path)


def test_unknown_format_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match=r"unknown format 'xls'.*auto, "):
        resolve(tmp_path / "a", "xls")


def fake(name: str, suffix: str, gzip_aware: bool = False) -> Format:
    """A format that accepts anything starting with "#" and gives one skip per line."""

    def read_lines(path: Path, options: ReadOptions) -> Iterator[Item]:
        with open(path, "rb") as f:  # not open_binary: cannot read gzip itself
            for n, line in enumerate(f, 1):
                if line.startswith(b"!"):
                    raise SourceError(str(path), f"bad line {n}")
                yield Skipped(line.decode().strip(), f"{path.name}:{n}")

    return Format(name, name, (suffix,), lambda head: head.startswith(b"#"), read_lines, gzip_aware)


def test_suffix_breaks_ties_and_order_decides_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = fake("one", ".one"), fake("two", ".two")
    monkeypatch.setattr(registry, "formats", lambda: {"one": first, "two": second})
    for name, expected in (
        ("a.two", "two"),
        ("a.one", "one"),
        ("a.txt", "one"),
        ("a.two.gz", "two"),
    ):
        path = tmp_path / name
        path.write_bytes(b"#x\n")
        assert detect(path).name == expected


def test_readers_that_cannot_unpack_gzip_get_it_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = fake("one", ".one")
    monkeypatch.setattr(registry, "formats", lambda: {"one": plain})
    path = tmp_path / "walk.one.gz"
    path.write_bytes(gzip.compress(b"#a\n#b\n"))
    fmt = detect(path)
    assert fmt.gzip and fmt.name == "one"
    # The reader sees the unpacked file under the inner name.
    assert list(fmt.read(path, ReadOptions())) == [
        Skipped("#a", "walk.one:1"),
        Skipped("#b", "walk.one:2"),
    ]
    assert list(resolve(path, "one").read(path, ReadOptions())) == list(read(path))
    # Its errors name the file the user gave, not the temporary one.
    path.write_bytes(gzip.compress(b"#a\n!\n"))
    with pytest.raises(SourceError) as info:
        list(read(path))
    assert info.value.path == str(path) and info.value.reason == "bad line 2"


def test_damaged_gzip_keeps_what_came_before(tmp_path: Path) -> None:
    text = "".join(ndjson_text() for _ in range(200))  # 1000 positions, same 5 repeated
    packed = gzip.compress(text.encode())
    path = tmp_path / "t.ndjson.gz"
    path.write_bytes(packed[: len(packed) // 2])
    items = []
    with pytest.raises(SourceError, match="cannot read past line"):
        for item in read(path):
            items.append(item)
    assert items and items[:5] == TRACK
