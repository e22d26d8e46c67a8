// Pure helpers of the map: no DOM, no Leaflet, so `node --test js/tests/` runs them.

/** A marker's inside: a navigation arrow (pointing north until rotated) and the id label. */
export const ARROW_HTML =
  '<div class="gt-arrow"><svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 2 20 21 12 16.5 4 21z"/></svg></div>' +
  '<span class="gt-label"></span>';

const EARTH_RADIUS_M = 6371008.8;
const toRad = (deg) => (deg * Math.PI) / 180;

/** Great-circle distance between two [lat, lon] points, in metres. */
export function distanceM(a, b) {
  const dLat = toRad(b[0] - a[0]);
  const dLon = toRad(b[1] - a[1]);
  const h =
    Math.sin(dLat / 2) ** 2 + Math.cos(toRad(a[0])) * Math.cos(toRad(b[0])) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** Initial bearing from a to b, degrees clockwise from north in [0, 360). */
export function bearing(a, b) {
  const y = Math.sin(toRad(b[1] - a[1])) * Math.cos(toRad(b[0]));
  const x =
    Math.cos(toRad(a[0])) * Math.sin(toRad(b[0])) -
    Math.sin(toRad(a[0])) * Math.cos(toRad(b[0])) * Math.cos(toRad(b[1] - a[1]));
  return ((Math.atan2(y, x) * 180) / Math.PI + 360) % 360;
}

/** Index of the last point of `track` (sorted by t) with t <= tMs; -1 before the first. */
export function indexAt(track, tMs) {
  let lo = 0;
  let hi = track.length - 1;
  if (hi < 0 || tMs < track[0].t) return -1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (track[mid].t <= tMs) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/**
 * Where a device was at tMs, along `track` ([{t, lat, lon, speed?, heading?}], sorted by t):
 * linear between the fixes around it. null before the first fix (the device is not shown
 * before it was seen); after the last one it stays there, speed 0. Speed (m/s) is the
 * fixes' own when they carry one, else distance over time; heading likewise.
 */
export function interpolate(track, tMs) {
  const i = indexAt(track, tMs);
  if (i < 0) return null;
  const a = track[i];
  if (i === track.length - 1 && tMs > a.t) {
    const prev = i > 0 ? track[i - 1] : null;
    const heading = a.heading ?? (prev ? bearing([prev.lat, prev.lon], [a.lat, a.lon]) : null);
    return { lat: a.lat, lon: a.lon, speed: 0, heading, index: i };
  }
  const b = track[Math.min(i + 1, track.length - 1)];
  if (a === b || b.t === a.t) {
    const prev = i > 0 ? track[i - 1] : null;
    return {
      lat: a.lat,
      lon: a.lon,
      speed: a.speed ?? (prev ? segmentSpeed(prev, a) : 0),
      heading: a.heading ?? (prev ? bearing([prev.lat, prev.lon], [a.lat, a.lon]) : null),
      index: i,
    };
  }
  const f = (tMs - a.t) / (b.t - a.t);
  const measured = a.speed != null && b.speed != null ? a.speed + (b.speed - a.speed) * f : null;
  return {
    lat: a.lat + (b.lat - a.lat) * f,
    lon: a.lon + (b.lon - a.lon) * f,
    speed: measured ?? segmentSpeed(a, b),
    heading: a.heading ?? (distanceM([a.lat, a.lon], [b.lat, b.lon]) > 0.5 ? bearing([a.lat, a.lon], [b.lat, b.lon]) : null),
    index: i,
  };
}

function segmentSpeed(a, b) {
  const dt = (b.t - a.t) / 1000;
  return dt > 0 ? distanceM([a.lat, a.lon], [b.lat, b.lon]) / dt : 0;
}

/** The playback cursor after `elapsedMs` of wall time at `speed`x, stopping at endMs. */
export function advance(tMs, elapsedMs, speed, endMs) {
  return Math.min(endMs, tMs + elapsedMs * speed);
}

/** "12 s", "4 min", "3 h", "2 d": how long ago, for the device list. */
export function formatAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

/** A speed in m/s as km/h text ("" when unknown). */
export function formatSpeed(mps) {
  return mps == null || Number.isNaN(mps) ? "" : `${(mps * 3.6).toFixed(mps * 3.6 < 10 ? 1 : 0)} km/h`;
}

/** "2026-11-30 21:04:05Z": a time for the list, UTC, to the second. */
export function formatTime(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** A datetime-local value read as UTC, in ms; NaN when empty or invalid. */
export function parseUtcInput(value) {
  if (!value) return NaN;
  return Date.parse(value.length === 16 ? `${value}:00Z` : `${value}Z`);
}

/** A datetime-local value (UTC, to the second) for ms. */
export function utcInputValue(ms) {
  return new Date(ms).toISOString().slice(0, 19);
}

/**
 * Collects items and hands them over once per frame: `schedule` is requestAnimationFrame
 * in the page (a fake in tests). However many arrive between two frames, `flush` runs once.
 */
export class FrameBatcher {
  constructor(flush, schedule) {
    this.flush = flush;
    this.schedule = schedule;
    this.items = [];
    this.pending = false;
  }

  push(items) {
    for (const item of items) this.items.push(item);
    if (!this.pending) {
      this.pending = true;
      this.schedule(() => {
        this.pending = false;
        const batch = this.items;
        this.items = [];
        this.flush(batch);
      });
    }
  }
}

/**
 * Put `point` (taken at time `t`) into `points` at its place in time (`times` holds the
 * points' times, ascending), keeping at most `max` (the newest). false, changing nothing,
 * for a time already there or one older than all of a full list.
 */
export function insertByTime(times, points, t, point, max) {
  let i = times.length;
  while (i > 0 && times[i - 1] > t) i--;
  if ((i > 0 && times[i - 1] === t) || (i === 0 && times.length >= max)) return false;
  times.splice(i, 0, t);
  points.splice(i, 0, point);
  if (times.length > max) {
    times.shift();
    points.shift();
  }
  return true;
}

/** Device ids from the history input: comma or space separated, empty = all. */
export function parseDeviceList(text) {
  return [...new Set(text.split(/[\s,]+/).filter(Boolean))];
}

/** Tracks by device from NDJSON lines of positions: {id: [{t, lat, lon, speed, heading}]}. */
export function tracksFromNdjson(text) {
  const tracks = new Map();
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const p = JSON.parse(line);
    let track = tracks.get(p.device);
    if (!track) tracks.set(p.device, (track = []));
    track.push({ t: Date.parse(p.ts), lat: p.lat, lon: p.lon, speed: p.speed, heading: p.heading });
  }
  for (const track of tracks.values()) track.sort((a, b) => a.t - b.t);
  return tracks;
}
