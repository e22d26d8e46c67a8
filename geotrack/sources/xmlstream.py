"""Stream an XML file as element events, refusing DTDs and entities (hostile files).

The KML and TCX readers walk their files with this: start, text and end events by the
elements' local names (namespaces dropped: KML 2.1, 2.2 and Google's ``gx`` extensions
then read alike), a chunk at a time, so memory stays flat in the file's size. A document
type declaration is refused outright, which rules out entity expansion ("billion laughs")
and external entities whatever the expat version; the file is not a track file then.
A file that breaks off gives every event before the damage, then :class:`XmlBroken`
saying where.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from typing import IO, Final
from xml.parsers import expat

from geotrack.errors import GeotrackError
from geotrack.sources.timing import datetime_ms

__all__ = ["CHUNK", "XmlBroken", "declares_doctype", "events", "parse_xml_time"]

#: Bytes fed to the parser at a time.
CHUNK: Final = 1 << 16

_DATE_ONLY: Final = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


class XmlBroken(GeotrackError):
    """The XML breaks off or is malformed at ``line``/``column`` (or declares a DTD)."""

    def __init__(self, reason: str, line: int = 0, column: int = 0) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        where = f" at line {line}, column {column}" if line else ""
        super().__init__(f"{reason}{where}")


def events(stream: IO[bytes]) -> Iterator[tuple[str, str, object]]:
    """The events of an XML stream, by local element name; raises XmlBroken at damage.

    Each is ``("start", name, attributes)``, ``("text", "", text)`` or
    ``("end", name, None)``.
    Text arrives in pieces (expat splits it at chunk ends and entities); a reader joins
    the pieces between a start and its end.
    """
    parser = expat.ParserCreate(namespace_separator="}")
    pending: list[tuple[str, str, object]] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        pending.append(("start", name.rpartition("}")[2], attrs))

    def end(name: str) -> None:
        pending.append(("end", name.rpartition("}")[2], None))

    def text(data: str) -> None:
        pending.append(("text", "", data))

    def refuse(*_args: object) -> None:
        raise XmlBroken(
            "declares a document type (DTD), which track files never need: refused, as "
            "its entities could expand without bound",
            parser.CurrentLineNumber,
            parser.CurrentColumnNumber + 1,
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.buffer_text = True
    try:
        while chunk := stream.read(CHUNK):
            parser.Parse(chunk, False)
            yield from pending
            pending.clear()
        parser.Parse(b"", True)
    except expat.ExpatError as exc:
        yield from pending
        reason = expat.errors.messages.get(exc.code, "not well-formed XML")
        if exc.code == expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS]:
            reason = "the file ends before its XML does (truncated?)"
        raise XmlBroken(reason, exc.lineno, exc.offset + 1) from None
    yield from pending


def declares_doctype(text: str) -> bool:
    """Whether a document's prolog (the only place a DTD can be) declares a document type.

    For readers that hand the whole text to another parser (gpxpy): refuse such a file
    first, as :func:`events` does.
    """
    i = len(text) - len(text.lstrip())
    while True:
        if text.startswith("<?", i):
            end = text.find("?>", i)
            i = end + 2 if end >= 0 else len(text)
        elif text.startswith("<!--", i):
            end = text.find("-->", i)
            i = end + 3 if end >= 0 else len(text)
        else:
            return text.startswith("<!DOCTYPE", i)
        i += len(text[i:]) - len(text[i:].lstrip())


def parse_xml_time(text: str, tz: tzinfo | None = None) -> int:
    """Unix ms of an ``xsd:dateTime`` (or a date: its midnight); ValueError if it is none.

    A time without an offset is in ``tz``, else UTC (as GPX times are read).
    """
    s = text.strip()
    if _DATE_ONLY.fullmatch(s):
        parts = [int(p) for p in s.split("-")] + [1, 1]
        return datetime_ms(datetime(parts[0], parts[1], parts[2], tzinfo=tz or UTC))
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    # fromisoformat takes at most 6 fractional digits: cut longer fractions.
    s = re.sub(r"(\.\d{6})\d+", r"\1", s)
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz or UTC)
    return datetime_ms(dt)
