// Pure logic of the map, run by `node --test geotrack/web/js/tests/` (and by pytest).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  FrameBatcher,
  advance,
  bearing,
  distanceM,
  formatAge,
  formatSpeed,
  indexAt,
  insertByTime,
  interpolate,
  parseDeviceList,
  parseUtcInput,
  tracksFromNdjson,
  utcInputValue,
} from "../geo.js";
import { position } from "../track.js";

const T0 = Date.parse("2026-11-25T12:00:00Z");
// Due north along a meridian, 0.001 degree (about 111 m) every 10 s.
const track = [0, 1, 2, 3].map((i) => ({ t: T0 + i * 10000, lat: 52 + i * 0.001, lon: 13 }));

test("distance and bearing", () => {
  assert.ok(Math.abs(distanceM([52, 13], [52.001, 13]) - 111.19) < 0.1);
  assert.ok(Math.abs(bearing([52, 13], [52.001, 13])) < 1e-9);
  assert.ok(Math.abs(bearing([52, 13], [52, 13.001]) - 90) < 0.01);
  assert.ok(Math.abs(bearing([52, 13], [51.999, 13]) - 180) < 1e-9);
});

test("indexAt finds the fix at or before the time", () => {
  assert.equal(indexAt(track, T0 - 1), -1);
  assert.equal(indexAt(track, T0), 0);
  assert.equal(indexAt(track, T0 + 9999), 0);
  assert.equal(indexAt(track, T0 + 10000), 1);
  assert.equal(indexAt(track, T0 + 99999), 3);
  assert.equal(indexAt([], T0), -1);
});

test("interpolate is linear between fixes, with speed and heading from the segment", () => {
  const at = interpolate(track, T0 + 15000);
  assert.ok(Math.abs(at.lat - 52.0015) < 1e-12);
  assert.equal(at.lon, 13);
  assert.ok(Math.abs(at.speed - 11.119) < 0.01); // 111.19 m in 10 s
  assert.ok(Math.abs(at.heading) < 1e-9);
  assert.equal(at.index, 1);
});

test("interpolate: nothing before the first fix, the last fix (stopped) after it", () => {
  assert.equal(interpolate(track, T0 - 1), null);
  const end = interpolate(track, T0 + 30000);
  assert.equal(end.lat, 52.003);
  const after = interpolate(track, T0 + 99000);
  assert.deepEqual([after.lat, after.speed], [52.003, 0]);
});

test("interpolate prefers the speed and heading the fixes carry", () => {
  const measured = [
    { t: T0, lat: 0, lon: 0, speed: 10, heading: 45 },
    { t: T0 + 1000, lat: 0, lon: 0.001, speed: 20, heading: 50 },
  ];
  const at = interpolate(measured, T0 + 500);
  assert.equal(at.speed, 15);
  assert.equal(at.heading, 45);
});

test("one fix alone is shown at its time", () => {
  const at = interpolate([{ t: T0, lat: 1, lon: 2 }], T0);
  assert.deepEqual([at.lat, at.lon, at.speed], [1, 2, 0]);
});

test("advance moves the cursor by wall time times speed, stopping at the end", () => {
  assert.equal(advance(T0, 16, 1000, T0 + 60000), T0 + 16000);
  assert.equal(advance(T0, 1000, 1, T0 + 60000), T0 + 1000);
  assert.equal(advance(T0 + 59000, 100, 1000, T0 + 60000), T0 + 60000);
});

test("FrameBatcher hands everything pushed between two frames over in one flush", () => {
  const frames = [];
  const flushed = [];
  const batcher = new FrameBatcher((batch) => flushed.push(batch), (f) => frames.push(f));
  for (let i = 0; i < 1000; i++) batcher.push([{ i }]);
  assert.equal(frames.length, 1);
  frames.shift()();
  assert.equal(flushed.length, 1);
  assert.equal(flushed[0].length, 1000);
  batcher.push([{ i: 1000 }]);
  assert.equal(frames.length, 1);
});

test("formatting for the list and the readout", () => {
  assert.equal(formatAge(4400), "4 s");
  assert.equal(formatAge(125000), "2 min");
  assert.equal(formatAge(-50), "0 s");
  assert.equal(formatSpeed(10), "36 km/h");
  assert.equal(formatSpeed(1), "3.6 km/h");
  assert.equal(formatSpeed(undefined), "");
});

test("datetime-local values are UTC", () => {
  assert.equal(parseUtcInput("2026-11-25T12:00"), T0);
  assert.equal(parseUtcInput("2026-11-25T12:00:30"), T0 + 30000);
  assert.ok(Number.isNaN(parseUtcInput("")));
  assert.equal(utcInputValue(T0), "2026-11-25T12:00:00");
});

test("device list and NDJSON tracks", () => {
  assert.deepEqual(parseDeviceList(" bus-12, bus-14 bus-12,,"), ["bus-12", "bus-14"]);
  const text =
    '{"device":"a","lat":1,"lon":2,"ts":"2026-11-25T12:00:01.000Z"}\n' +
    '{"device":"a","lat":1.5,"lon":2,"ts":"2026-11-25T12:00:00.000Z","speed":3}\n' +
    '{"device":"b","lat":5,"lon":6,"ts":"2026-11-25T12:00:00.000Z"}\n';
  const tracks = tracksFromNdjson(text);
  assert.deepEqual([...tracks.keys()], ["a", "b"]);
  assert.deepEqual(tracks.get("a").map((p) => p.t), [T0, T0 + 1000]);
  assert.equal(tracks.get("a")[0].speed, 3);
});

test("a browser fix becomes a Position, leaving out what the browser does not know", () => {
  const fix = {
    timestamp: T0 + 250,
    coords: { latitude: 52.5, longitude: 13.4, accuracy: 8, altitude: null, speed: null, heading: NaN },
  };
  assert.deepEqual(position("phone-1", fix), {
    device: "phone-1",
    lat: 52.5,
    lon: 13.4,
    ts: (T0 + 250) / 1000,
    acc: 8,
  });
  fix.coords.speed = 3;
  fix.coords.heading = 90;
  assert.equal(position("p", fix).speed, 3);
  assert.equal(position("p", fix).heading, 90);
});

test("a late fix goes into the trail at its place in time, once", () => {
  const times = [10, 20, 40];
  const points = ["a", "b", "d"];
  assert.equal(insertByTime(times, points, 30, "c", 4), true);
  assert.deepEqual([times, points], [[10, 20, 30, 40], ["a", "b", "c", "d"]]);
  assert.equal(insertByTime(times, points, 30, "c again", 4), false); // a duplicate
  assert.equal(insertByTime(times, points, 5, "too old", 4), false); // full, and older than all
  assert.equal(insertByTime(times, points, 15, "a2", 4), true); // the oldest drops out
  assert.deepEqual([times, points], [[15, 20, 30, 40], ["a2", "b", "c", "d"]]);
  assert.equal(insertByTime([], [], 1, "x", 4), true);
});
