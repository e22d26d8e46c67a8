"""Every file format geotrack reads, and recognising a file's format by its content.

Each reader module exposes one :class:`~geotrack.sources.base.Format` named ``FORMAT``;
this module lists them (the order is the order of ``--format``'s choices and of
detection: the first whose ``sniff`` accepts the content wins, the suffix breaking ties).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import importlib
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

from geotrack.errors import InvalidParameter, SourceError
from geotrack.sources.base import GZIP_MAGIC, Format, Item, ReadOptions

__all__ = ["HEAD_BYTES", "MODULES", "detect", "format_names", "formats", "read", "resolve"]

#: How much of a file (decompressed, for gzip) the sniffers see.
HEAD_BYTES: Final = 65536

#: The reader modules, each with a ``FORMAT``. Add a reader by adding its module here.
MODULES: Final[tuple[str, ...]] = (
    "geotrack.sources.gpx",
    "geotrack.sources.kml",
    "geotrack.sources.tcx",
    # geotrack's own line format: a first line that is a position (before any JSON shape).
    "geotrack.sources.ndjson",
    # JSON: the specific shapes before generic GeoJSON, which an Overland batch also is.
    "geotrack.sources.overland",
    "geotrack.sources.google",
    "geotrack.sources.geojson",
    "geotrack.sources.owntracks_rec",
    "geotrack.sources.fit",
    # Last: a header naming latitude and longitude columns, whatever else the file holds.
    "geotrack.sources.csv",
)


@cache
def formats() -> dict[str, Format]:
    """Every readable format by name, in detection order (readers load on first use)."""
    found: dict[str, Format] = {}
    for name in MODULES:
        fmt: Format = importlib.import_module(name).FORMAT
        found[fmt.name] = fmt
    return found


def format_names() -> list[str]:
    """The ``--format`` choices: ``auto`` and every format's name."""
    return ["auto", *formats()]


def resolve(path: Path, name: str = "auto") -> Format:
    """The format to read ``path`` with: ``name``'s, or the detected one for ``auto``.

    Raises InvalidParameter for an unknown name, SourceError when ``auto`` finds none.
    A gzip file given to a reader that cannot unpack it is unpacked first (see
    :attr:`Format.gzip`).
    """
    if name == "auto":
        return detect(path)
    known = formats()
    if name not in known:
        raise InvalidParameter(
            "--format", f"unknown format {name!r} (use one of: {', '.join(format_names())})"
        )
    fmt = known[name]
    return fmt if fmt.gzip or not _gzipped(path) else _unpacking(fmt)


def read(path: Path, fmt: str = "auto", options: ReadOptions | None = None) -> Iterator[Item]:
    """Stream the items of a file in format ``fmt`` (``auto``: detected by content)."""
    return resolve(path, fmt).read(path, options or ReadOptions())


def detect(path: Path) -> Format:
    """The format of a file, by its content (the suffix breaking ties between readers).

    Looks at the first :data:`HEAD_BYTES` (decompressed, for a gzip file of any format).
    Raises SourceError in one line when no reader accepts the file: what it looks like
    (HTML, binary data, JSON with other keys, a table without coordinates) and the
    formats expected.
    """
    head, gzipped = _head(path)
    known = formats()
    accepted = [fmt for fmt in known.values() if _accepts(fmt, head)]
    if not accepted:
        what = _looks_like(head)
        raise SourceError(
            str(path),
            f"not a file geotrack can import: it looks like {'gzip of ' if gzipped else ''}"
            f"{what}; expected {_expected(known)}",
        )
    suffix = _suffix(path)
    fmt = next((f for f in accepted if suffix in f.suffixes), accepted[0])
    return fmt if fmt.gzip or not gzipped else _unpacking(fmt)


def _accepts(fmt: Format, head: bytes) -> bool:
    try:
        return bool(fmt.sniff(head))
    except Exception:  # a sniffer must not raise; one that does declines
        return False


def _suffix(path: Path) -> str:
    """The suffix that names the format: ``.csv`` of ``walk.csv.gz`` too."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _head(path: Path) -> tuple[bytes, bool]:
    """The first HEAD_BYTES of the file, decompressed if it is gzip, and whether it was."""
    try:
        with open(path, "rb") as f:
            data = f.read(HEAD_BYTES)
            if not data.startswith(GZIP_MAGIC):
                return data, False
            unpack = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = b""
            while data and len(out) < HEAD_BYTES:
                try:
                    out += unpack.decompress(data, HEAD_BYTES - len(out))
                except zlib.error as exc:
                    if out:
                        break
                    raise SourceError(str(path), f"damaged gzip data: {exc}") from None
                data = unpack.unconsumed_tail or f.read(HEAD_BYTES)
            return out, True
    except IsADirectoryError:
        raise SourceError(str(path), "is a directory, not a file") from None
    except OSError as exc:
        raise SourceError(str(path), f"cannot read: {exc.strerror or exc}") from None


def _gzipped(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == GZIP_MAGIC
    except OSError:
        return False  # the reader says what is wrong with the file


def _unpacking(fmt: Format) -> Format:
    """``fmt``, reading a gzip file by unpacking it to a temporary file first."""

    def read_unpacked(path: Path, options: ReadOptions) -> Iterator[Item]:
        with tempfile.TemporaryDirectory(prefix="geotrack-") as tmp:
            name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
            plain = Path(tmp) / name
            try:
                with gzip.open(path, "rb") as packed, open(plain, "wb") as out:
                    shutil.copyfileobj(packed, out, 1 << 20)
            except (OSError, EOFError, zlib.error) as exc:
                # Read what was unpacked before the damage, then say so.
                yield from _renamed(fmt.read(plain, options), path)
                raise SourceError(str(path), f"damaged gzip data: {exc}") from None
            yield from _renamed(fmt.read(plain, options), path)

    return dataclasses.replace(fmt, read=read_unpacked, gzip=True)


def _renamed(items: Iterator[Item], path: Path) -> Iterator[Item]:
    """Pass items through, the errors naming ``path`` instead of the unpacked file."""
    try:
        yield from items
    except SourceError as exc:
        raise SourceError(str(path), exc.reason) from None


def _expected(known: dict[str, Format]) -> str:
    return "one of: " + ", ".join(
        f"{fmt.name} ({'/'.join(fmt.suffixes)})" if fmt.suffixes else fmt.name
        for fmt in known.values()
    )


_MAGIC: Final = (
    (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"SQLite format 3\x00", "a SQLite database"),
    (GZIP_MAGIC, "gzip data"),
)
_XML_ROOT: Final = re.compile(r"<([A-Za-z_][\w.:-]*)")


def _looks_like(head: bytes) -> str:
    """What a file no reader accepts looks like, for the one line that refuses it."""
    if not head.strip():
        return "an empty file" if not head else "a file of blank space"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return "binary data"
        text = head[: exc.start].decode("utf-8")
    if "\0" in text:
        return "binary data"
    text = text.lstrip("\ufeff \t\r\n")
    lowered = text[:200].lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered:
        return "HTML (a web page, not a track)"
    if text.startswith("<"):
        root = _XML_ROOT.search(re.sub(r"<[?!][^>]*>", "", text, count=20))
        return f"XML with root element <{root.group(1)}>" if root else "XML"
    if text.startswith("{"):
        keys = _top_keys(text)
        shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
        return f"JSON without positions: top-level keys {shown}" if keys else "a JSON object"
    if text.startswith("["):
        return "a JSON array without positions"
    first = text.split("\n", 1)[0].rstrip("\r")
    cells = max((next(csv.reader([first], delimiter=d), []) for d in ",;\t|"), key=len)
    if len(cells) > 1:
        names = ", ".join(repr(c.strip()) for c in cells[:12])
        return (
            f"a table with columns {names}, none a latitude (lat, latitude) with a "
            "longitude (lon, lng, longitude)"
        )
    return f"text starting {first[:40]!r}"


def _top_keys(text: str) -> list[str]:
    """The keys of a JSON object's top level, read from the start of its text."""
    keys: list[str] = []
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if depth == 1 and text[end + 1 : end + 40].lstrip().startswith(":"):
                keys.append(text[i + 1 : end])
            i = end + 1
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        i += 1
    return keys
