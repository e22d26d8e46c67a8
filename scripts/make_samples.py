"""Regenerate the GPX files in samples/: python scripts/make_samples.py [OUT_DIR].

The routes follow real streets and paths, traced by hand from memory, so they are close
but not exact. GPS noise, elevations and speeds come from a seeded generator: the same
run gives the same bytes. The XML is written here by hand, not with geotrack's exporter,
so that tests reading these files test the reader, not the exporter's own assumptions.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

SEED = 20260314
EARTH_RADIUS_M = 6_371_008.8
GPX11 = (
    '<gpx version="1.1" creator="geotrack scripts/make_samples.py"'
    ' xmlns="http://www.topografix.com/GPX/1/1"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xsi:schemaLocation="http://www.topografix.com/GPX/1/1'
    ' http://www.topografix.com/GPX/1/1/gpx.xsd"'
)
TPX_V2 = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"
GT = "https://geotrack.dev/gpx/1"

# (lat, lon) corners of each route.
UNTER_DEN_LINDEN = [  # Berlin: Pariser Platz east along Unter den Linden to Bebelplatz
    (52.516240, 13.378900),
    (52.516700, 13.381600),
    (52.517080, 13.388700),
    (52.517230, 13.391700),
    (52.516950, 13.393600),
]
MADISON_42ND = [  # New York: north on Madison Ave from E 23rd St, east on E 42nd St
    (40.741500, -73.987200),
    (40.752650, -73.979300),
    (40.749400, -73.971000),
]
ROTTEN_ROW = [  # London, Hyde Park: west along Rotten Row from Hyde Park Corner
    (51.502900, -0.153300),
    (51.502700, -0.160000),
    (51.502600, -0.166500),
    (51.502350, -0.172500),
    (51.502200, -0.177000),
]
BROAD_WALK = [  # London, Kensington Gardens: north along the Broad Walk
    (51.502800, -0.187000),
    (51.506500, -0.187500),
    (51.510500, -0.187700),
]
ARTHURS_SEAT = [  # Edinburgh: Holyrood Park up to the summit of Arthur's Seat
    (55.952100, -3.172000),
    (55.949500, -3.168600),
    (55.947300, -3.166900),
    (55.945400, -3.164300),
    (55.944100, -3.161800),
]
SEINE_RIDE = [  # Paris: Louvre, Tuileries, Concorde, up the Champs-Elysees
    (48.861000, 2.335800),
    (48.863400, 2.327000),
    (48.865600, 2.321100),
    (48.869800, 2.307800),
    (48.873800, 2.295000),
]


@dataclass(frozen=True)
class Fix:
    """One generated point: where, when (ms since the epoch, or None) and its extras."""

    lat: float
    lon: float
    ms: int | None
    ele: float | None = None
    extra: str = ""  # elements after <time> (hdop, ...), already formatted
    extensions: str = ""  # children of <extensions>, already formatted


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance."""
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b[1] - a[1]) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def along(route: list[tuple[float, float]], distance: float) -> tuple[float, float, float]:
    """(lat, lon, bearing) at ``distance`` metres along the route (clamped to its end)."""
    for a, b in itertools.pairwise(route):
        leg = metres(a, b)
        if distance <= leg or b == route[-1]:
            f = min(distance / leg, 1.0)
            bearing = math.degrees(
                math.atan2(
                    (b[1] - a[1]) * math.cos(math.radians(a[0])),
                    b[0] - a[0],
                )
            )
            return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, bearing % 360
        distance -= leg
    raise ValueError("empty route")


def jitter(rng: random.Random, lat: float, lon: float, sigma_m: float) -> tuple[float, float]:
    """The point moved by GPS-like noise of about ``sigma_m`` metres."""
    dlat = rng.gauss(0, sigma_m) / 111_320
    dlon = rng.gauss(0, sigma_m) / (111_320 * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def ms_of(text: str) -> int:
    """Unix ms of an ISO time with Z."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def iso(ms: int) -> str:
    """GPX time with milliseconds."""
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def point(tag: str, fix: Fix, indent: str) -> str:
    """One trkpt/rtept element, children in schema order."""
    body = ""
    if fix.ele is not None:
        body += f"<ele>{fix.ele:.1f}</ele>"
    if fix.ms is not None:
        body += f"<time>{iso(fix.ms)}</time>"
    body += fix.extra
    if fix.extensions:
        body += f"<extensions>{fix.extensions}</extensions>"
    return f'{indent}<{tag} lat="{fix.lat:.7f}" lon="{fix.lon:.7f}">{body}</{tag}>\n'


def track(name: str, segments: list[list[Fix]]) -> str:
    """A <trk> of GPX 1.1."""
    out = f"  <trk>\n    <name>{name}</name>\n"
    for fixes in segments:
        out += "    <trkseg>\n"
        out += "".join(point("trkpt", f, "      ") for f in fixes)
        out += "    </trkseg>\n"
    return out + "  </trk>\n"


def walk(rng: random.Random) -> str:
    """A 10-minute walk: 120 points 5 s apart, elevation, heart rate and cadence."""
    t0 = ms_of("2026-03-14T09:00:00Z")
    fixes = []
    distance, hr = 0.0, 92.0
    for i in range(120):
        lat, lon, _ = along(UNTER_DEN_LINDEN, distance)
        lat, lon = jitter(rng, lat, lon, 2.5)
        hr = min(125.0, max(85.0, hr + rng.gauss(0.25, 1.5)))
        tpx = (
            f"<gpxtpx:TrackPointExtension><gpxtpx:hr>{round(hr)}</gpxtpx:hr>"
            f"<gpxtpx:cad>{rng.randint(52, 58)}</gpxtpx:cad></gpxtpx:TrackPointExtension>"
        )
        ele = 34.0 + 1.5 * math.sin(i / 15) + rng.gauss(0, 0.3)
        fixes.append(Fix(lat, lon, t0 + i * 5000, ele, extensions=tpx))
        distance += 5 * rng.uniform(1.15, 1.45)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'{GPX11} xmlns:gpxtpx="{TPX_V2}">\n'
        "  <metadata><name>Unter den Linden walk</name>"
        f"<time>{iso(t0)}</time></metadata>\n"
        + track("Unter den Linden walk", [fixes])
        + "</gpx>\n"
    )


def drive_speeds() -> list[tuple[float, float]]:
    """(distance m, speed m/s) every 2 s of a city drive: red lights, a turn, 0-40 km/h."""
    # (where, how long) the car stands: three red lights, then parking at the route's end.
    stops = [(430.0, 38.0), (1050.0, 45.0), (1780.0, 32.0), (2170.0, math.inf)]
    turn, turn_speed = 1415.0, 4.0  # Madison Ave into E 42nd St
    cruise, accel, brake, dt = 11.0, 1.8, 2.5, 0.1
    samples: list[tuple[float, float]] = []
    distance = speed = 0.0
    stop, standing = 0, 0.0
    for step in range(200 * 20):
        if step % 20 == 0:
            samples.append((distance, speed))
        target = cruise
        where, dwell = stops[stop]
        if where - distance < speed * speed / (2 * brake) + 2.0:
            target = 0.0
            if speed == 0.0:
                standing += dt
                if standing >= dwell:
                    stop, standing = stop + 1, 0.0
        if -15.0 < turn - distance < (speed**2 - turn_speed**2) / (2 * brake) + 5.0:
            target = min(target, turn_speed)
        if speed < target:
            speed = min(speed + accel * dt, target)
        else:
            speed = max(speed - brake * dt, target)
        distance += speed * dt
    return samples


def drive(rng: random.Random) -> str:
    """A city drive: 200 points 2 s apart with speed, heading, accuracy and hdop."""
    t0 = ms_of("2026-03-14T14:32:07.250Z")
    fixes = []
    for i, (distance, speed) in enumerate(drive_speeds()):
        lat, lon, bearing = along(MADISON_42ND, distance)
        lat, lon = jitter(rng, lat, lon, 3.0)
        acc = round(rng.uniform(3.0, 9.0), 1)
        measured = max(0.0, speed + rng.gauss(0, 0.15)) if speed > 0 else 0.0
        ext = f"<gt:speed>{measured:.2f}</gt:speed>"
        if speed > 0.5:  # a stopped receiver has no heading to speak of
            ext += f"<gt:heading>{(bearing + rng.gauss(0, 2)) % 360:.1f}</gt:heading>"
        ext += f"<gt:acc>{acc}</gt:acc>"
        ext += '<gt:attr name="ignition" type="bool">true</gt:attr>'
        hdop = f"<hdop>{rng.uniform(0.7, 1.8):.1f}</hdop>"
        ele = 12.0 + 6.0 * distance / 2300 + rng.gauss(0, 0.8)
        fixes.append(Fix(lat, lon, t0 + i * 2000, ele, hdop, ext))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'{GPX11} xmlns:gt="{GT}">\n' + track("Madison Ave drive", [fixes]) + "</gpx>\n"
    )


def moving(
    rng: random.Random,
    route: list[tuple[float, float]],
    start_m: float,
    t0: int,
    n: int,
    every_s: int,
    mps: Callable[[], float],
) -> tuple[list[Fix], float]:
    """``n`` fixes every ``every_s`` s from ``start_m`` along ``route``; and where it ended."""
    fixes, distance = [], start_m
    for i in range(n):
        lat, lon, _ = along(route, distance)
        lat, lon = jitter(rng, lat, lon, 2.0)
        fixes.append(Fix(lat, lon, t0 + i * every_s * 1000, 25.0 + rng.gauss(0, 0.4)))
        distance += every_s * mps()
    return fixes, distance


def multi_segment(rng: random.Random) -> str:
    """A run in three segments, paused 4 and 6 minutes, and a dog walk at the same time."""
    t0 = ms_of("2026-03-15T07:30:00Z")
    segments, distance, t = [], 0.0, t0
    for n, pause_s in ((40, 240), (35, 360), (40, 0)):
        fixes, distance = moving(rng, ROTTEN_ROW, distance, t, n, 3, lambda: rng.uniform(2.7, 3.3))
        segments.append(fixes)
        t += (n * 3 + pause_s) * 1000
    dog, _ = moving(rng, BROAD_WALK, 0.0, t0 + 90_000, 50, 5, lambda: rng.uniform(1.0, 1.5))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"{GPX11}>\n" + track("Morning run", segments) + track("Dog walk", [dog]) + "</gpx>\n"
    )


def no_times(rng: random.Random) -> str:
    """A planned hike without any time: 60 points with elevation."""
    total = sum(metres(a, b) for a, b in itertools.pairwise(ARTHURS_SEAT))
    fixes = []
    for i in range(60):
        lat, lon, _ = along(ARTHURS_SEAT, total * i / 59)
        ele = 45.0 + 206.0 * (i / 59) ** 1.4 + rng.gauss(0, 0.5)
        fixes.append(Fix(round(lat, 6), round(lon, 6), None, ele))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"{GPX11}>\n" + track("Arthur's Seat (planned)", [fixes]) + "</gpx>\n"
    )


def gpx10_route(rng: random.Random) -> str:
    """GPX 1.0 as GPSBabel writes it: waypoints, a timed route, an empty track segment."""
    t0 = ms_of("2026-03-16T16:00:00Z")
    total = sum(metres(a, b) for a, b in itertools.pairwise(SEINE_RIDE))
    wpts = [
        ("Louvre", 48.860600, 2.337600),
        ("Concorde", 48.865500, 2.321200),
        ("Arc de Triomphe", 48.873800, 2.295000),
    ]
    out = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gpx version="1.0" creator="GPSBabel - https://www.gpsbabel.org"'
        ' xmlns="http://www.topografix.com/GPX/1/0">\n'
        f"<time>{iso(t0)}</time>\n"
        '<bounds minlat="48.860600" minlon="2.295000" maxlat="48.873800" maxlon="2.337600"/>\n'
    )
    for name, lat, lon in wpts:
        out += f'<wpt lat="{lat:.6f}" lon="{lon:.6f}"><name>{name}</name><sym>Flag</sym></wpt>\n'
    out += "<rte>\n  <name>Louvre to Etoile by bike</name>\n"
    for i in range(16):
        lat, lon, _ = along(SEINE_RIDE, total * i / 15)
        ms = t0 + (i * 60 + (rng.randint(-4, 4) if 0 < i < 15 else 0)) * 1000
        fix = Fix(round(lat, 6), round(lon, 6), ms, 35.0 + rng.gauss(0, 1.0))
        out += point("rtept", fix, "  ")
    out += "</rte>\n<trk>\n  <name>ACTIVE LOG</name>\n<trkseg>\n</trkseg>\n</trk>\n</gpx>\n"
    return out


MAKERS: dict[str, Callable[[random.Random], str]] = {
    "walk.gpx": walk,
    "drive.gpx": drive,
    "multi_segment.gpx": multi_segment,
    "no_times.gpx": no_times,
    "gpx10_route.gpx": gpx10_route,
}


def main(argv: list[str]) -> None:
    """Write every sample into the given directory (default: samples/ of this repo)."""
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "samples"
    out.mkdir(parents=True, exist_ok=True)
    for name, make in MAKERS.items():
        # One generator per file: changing one sample does not change the others.
        text = make(random.Random(f"{SEED}:{name}"))
        (out / name).write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main(sys.argv)
