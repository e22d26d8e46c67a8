"""Exporting geofence events (``geotrack export --events``): NDJSON or CSV.

Events come in the order :meth:`Store.query_events` gives (device time, then device and
fence). NDJSON lines are the objects ``/events`` sends; CSV has the same fields as
columns, under a header. Streamed, memory flat in the number of events.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Final, TextIO

from geotrack.errors import InvalidParameter
from geotrack.export.ndjson import write_lines
from geotrack.schema import Event, encode_event

__all__ = ["EVENTS_HEADER", "EVENT_FORMATS", "export_events"]

EVENT_FORMATS: Final[dict[str, str]] = {
    "ndjson": "newline-delimited JSON: one event per line, as /events sends it",
    "csv": "CSV with a header: type,device,fence,ts,lat,lon",
}
EVENTS_HEADER: Final = ("type", "device", "fence", "ts", "lat", "lon")
# Lines are written in batches: one write per event costs more than the encoding.
_BATCH: Final = 1024


def export_events(fmt: str, events: Iterable[Event], out: TextIO) -> int:
    """Write ``events`` to ``out`` as ``fmt`` (ndjson or csv); returns how many.

    CSV uses the csv module's ``\\r\\n`` line ends (open a file with ``newline=""``) and
    ``repr`` precision for coordinates. InvalidParameter("--format") for another format,
    before anything is written.
    """
    if fmt == "ndjson":
        return _ndjson(events, out)
    if fmt == "csv":
        return _csv(events, out)
    raise InvalidParameter(
        "--format", f"events export as {' or '.join(EVENT_FORMATS)}, not {fmt!r}"
    )


def _ndjson(events: Iterable[Event], out: TextIO) -> int:
    return write_lines(map(encode_event, events), out)


def _csv(events: Iterable[Event], out: TextIO) -> int:
    writer = csv.writer(out)
    writer.writerow(EVENTS_HEADER)
    count = 0
    rows: list[tuple[str, str, str, str, float, float]] = []
    for event in events:
        rows.append((event.type, event.device, event.fence, event.ts, event.lat, event.lon))
        if len(rows) >= _BATCH:
            writer.writerows(rows)
            count += len(rows)
            rows.clear()
    writer.writerows(rows)
    return count + len(rows)
