"""The fence engine on constructed tracks whose answers are known."""

from __future__ import annotations

from typing import Any

import pytest

from geotrack.fences import Fence, FenceEngine, fence_from_feature
from geotrack.schema import FenceState, Position, ms_to_ts, ts_to_ms
from tests.factories import T0

# A square about 1.1 km wide around (13.40, 52.50), and a 100 m circle 5 km east of it.
SQUARE = [[13.395, 52.495], [13.405, 52.495], [13.405, 52.505], [13.395, 52.505], [13.395, 52.495]]
CENTRE = (13.475, 52.50)
# 0.005 deg of longitude at 52.5 N is about 339 m: the square's east edge from the centre.
M_PER_DEG_LON = 67_870.0


def square(name: str = "depot") -> Fence:
    feature = {
        "type": "Feature",
        "properties": {"name": name},
        "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
    }
    return fence_from_feature(feature, "test")


def circle(name: str = "yard", radius: float = 100.0) -> Fence:
    feature = {
        "type": "Feature",
        "properties": {"name": name, "radius": radius},
        "geometry": {"type": "Point", "coordinates": list(CENTRE)},
    }
    return fence_from_feature(feature, "test")


def fix(s: float, lon: float, lat: float = 52.50, device: str = "van", **extra: Any) -> Position:
    return Position(device=device, lat=lat, lon=lon, ts=ms_to_ts(T0 + round(s * 1000)), **extra)


def east_of_edge(metres: float) -> float:
    """The longitude ``metres`` east of the square's east edge (negative: west, inside)."""
    return 13.405 + metres / M_PER_DEG_LON


def kinds(events: list[Any]) -> list[tuple[str, str, float]]:
    return [(e.type, e.fence, (ts_to_ms(e.ts) - T0) / 1000) for e in events]


def test_enter_and_exit_a_polygon() -> None:
    engine = FenceEngine([square()])
    track = [fix(0, 13.30), fix(10, 13.40), fix(20, 13.40), fix(30, 13.30)]
    events = engine.evaluate(track)
    assert kinds(events) == [("enter", "depot", 10), ("exit", "depot", 30)]
    assert (events[0].lat, events[0].lon) == (52.50, 13.40)  # the deciding fix's place


def test_circle_is_geodesic_metres() -> None:
    engine = FenceEngine([circle(radius=100)])
    lon, lat = CENTRE
    just_in = lon + 95 / M_PER_DEG_LON
    just_out = lon + 105 / M_PER_DEG_LON
    assert engine.evaluate([fix(0, just_out, lat)]) == []
    assert kinds(engine.evaluate([fix(1, just_in, lat)])) == [("enter", "yard", 1)]
    assert kinds(engine.evaluate([fix(2, just_out, lat)])) == [("exit", "yard", 2)]


def test_jitter_at_the_edge_with_accuracy_does_not_flap() -> None:
    # A parked device 5 m inside the edge whose fixes jitter +-15 m with a 20 m accuracy:
    # every fix's circle straddles the edge, so none flips the state.
    engine = FenceEngine([square()])
    assert kinds(engine.evaluate([fix(0, east_of_edge(-200), acc=5)])) == [("enter", "depot", 0)]
    jitter = [fix(1 + i, east_of_edge(-5 + (15 if i % 2 else -15)), acc=20) for i in range(60)]
    assert engine.evaluate(jitter) == []
    assert engine.state("van", "depot").inside


def test_without_accuracy_jitter_flaps_and_dwell_stops_it() -> None:
    # 40 s well inside, then parked 10 m from the edge, fixes jittering to 10 m outside.
    track = [fix(s, 13.40) for s in range(0, 41, 10)]
    track += [fix(41 + i, east_of_edge(10 if i % 2 else -10)) for i in range(20)]
    assert len(FenceEngine([square()]).evaluate(track)) == 20  # the flapping dwell prevents
    assert kinds(FenceEngine([square()], dwell=30).evaluate(track)) == [("enter", "depot", 30)]


def test_dwell_inside_before_enter_and_outside_before_exit() -> None:
    engine = FenceEngine([square()], dwell=60)
    inside = [fix(s, 13.40) for s in range(0, 61, 10)]
    events = engine.evaluate(inside)
    assert kinds(events) == [("enter", "depot", 60)]  # the first fix 60 s after arriving
    # Out for 30 s, back in, out again for 60 s: one exit, decided 60 s after leaving.
    out = [fix(70, 13.30), fix(100, 13.30), fix(110, 13.40)]
    out += [fix(s, 13.30) for s in range(120, 181, 20)]
    assert kinds(engine.evaluate(out)) == [("exit", "depot", 180)]


def test_unsure_fix_keeps_a_pending_dwell() -> None:
    engine = FenceEngine([square()], dwell=20)
    track = [fix(0, 13.40), fix(10, east_of_edge(2), acc=50), fix(20, 13.40)]
    assert kinds(engine.evaluate(track)) == [("enter", "depot", 20)]


def test_late_fix_never_flips_a_state() -> None:
    engine = FenceEngine([square()])
    assert kinds(engine.evaluate([fix(10, 13.40)])) == [("enter", "depot", 10)]
    # Older than the device's latest: ignored, even though it is outside.
    assert engine.evaluate([fix(5, 13.30)]) == []
    assert engine.state("van", "depot").inside
    assert kinds(engine.evaluate([fix(11, 13.30)])) == [("exit", "depot", 11)]


def test_a_batch_is_taken_in_device_time_order() -> None:
    engine = FenceEngine([square()])
    shuffled = [fix(20, 13.30), fix(0, 13.30), fix(10, 13.40), fix(5, 13.40, device="bike")]
    assert sorted(kinds(engine.evaluate(shuffled))) == [
        ("enter", "depot", 5),
        ("enter", "depot", 10),
        ("exit", "depot", 20),
    ]


def test_devices_and_fences_are_independent() -> None:
    engine = FenceEngine([square(), circle()])
    events = engine.evaluate(
        [fix(0, 13.40, device="a"), fix(0, CENTRE[0], device="b"), fix(1, 13.30, device="a")]
    )
    assert sorted((e.device, e.type, e.fence) for e in events) == [
        ("a", "enter", "depot"),
        ("a", "exit", "depot"),
        ("b", "enter", "yard"),
    ]


def test_state_survives_through_saved_states() -> None:
    first = FenceEngine([square()], dwell=30)
    first.evaluate([fix(0, 13.40), fix(30, 13.40), fix(40, 13.30)])  # in, exit pending
    saved = first.take_changed()
    assert saved == [FenceState("van", "depot", True, T0 + 40_000, T0 + 40_000)]
    assert first.take_changed() == []
    again = FenceEngine([square()], dwell=30, states=saved)
    assert again.evaluate([fix(35, 13.30)]) == []  # late after the restart too
    assert kinds(again.evaluate([fix(70, 13.30)])) == [("exit", "depot", 70)]


def test_reload_keeps_states_by_name_and_forgets_removed_fences() -> None:
    engine = FenceEngine([square(), circle()])
    engine.evaluate([fix(0, 13.40)])
    engine.take_changed()
    engine.set_fences([square()])
    assert engine.evaluate([fix(1, 13.40)]) == []  # still inside: no second enter
    engine.set_fences([circle()])
    assert engine.take_changed() == [FenceState("van", "depot", False, None, T0 + 1000)]
    assert engine.evaluate([fix(2, 13.30)]) == []  # no exit from a fence that is gone


def test_far_fixes_cost_no_state() -> None:
    engine = FenceEngine([square()])
    assert engine.evaluate([fix(i, 0.0, 0.0, device=f"d{i}") for i in range(100)]) == []
    assert engine.take_changed() == []


def test_negative_dwell_is_refused() -> None:
    with pytest.raises(ValueError, match="dwell"):
        FenceEngine([], dwell=-1)


def test_a_circle_with_accuracy_straddling_its_edge_is_unsure() -> None:
    engine = FenceEngine([circle(radius=100)])
    lon, lat = CENTRE
    assert kinds(engine.evaluate([fix(0, lon, lat, acc=10)])) == [("enter", "yard", 0)]
    # 95 m out with 10 m accuracy: the circle of the fix crosses the edge at 100 m.
    assert engine.evaluate([fix(1, lon + 95 / M_PER_DEG_LON, lat, acc=10)]) == []
    assert kinds(engine.evaluate([fix(2, lon + 115 / M_PER_DEG_LON, lat, acc=10)])) == [
        ("exit", "yard", 2)
    ]


def test_many_fixes_and_fences_in_one_batch_match_fix_by_fix() -> None:
    # The batch path (one STRtree query, vectorized tests) decides what fix-by-fix does.
    fences = [square(), circle()]
    track = [
        fix(s * 0.5, 13.38 + (s // 3 % 60) * 0.0017, acc=(s % 4) * 20.0, device=f"d{s % 3}")
        for s in range(900)
    ]
    whole = FenceEngine(fences, dwell=1).evaluate(track)
    one = FenceEngine(fences, dwell=1)
    single = [e for p in track for e in one.evaluate([p])]
    assert sorted(whole, key=lambda e: e.key) == sorted(single, key=lambda e: e.key)
    assert len(whole) > 10
