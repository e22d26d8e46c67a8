// What both reference relays share: the store, validation and group commit.
//
// The job is geotrack's (docs/protocol.md), done the way a Node.js developer would:
// validate each position, store it in SQLite (WAL, synchronous=FULL like geotrack's
// default, a unique index on (device, ts) for dedupe), one transaction for everything that
// arrived since the last commit, then fan the new positions out and ack each frame.
"use strict";

const Database = require("better-sqlite3");

const DEVICE = /^[A-Za-z0-9._:-]{1,64}$/;
const MAX_BATCH = 1000;
// Subscriber frames hold at most this many positions, as geotrack's do.
const MAX_FRAME_POSITIONS = 1000;
const OPTIONAL = ["speed", "heading", "alt", "acc"];

function parseArgs(argv) {
  const args = { port: 8765, host: "127.0.0.1", db: "reference.db" };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    args[key] = key === "port" ? Number(argv[i + 1]) : argv[i + 1];
  }
  return args;
}

function openStore(path) {
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.exec(`
    CREATE TABLE IF NOT EXISTS positions (
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      device TEXT NOT NULL, ts INTEGER NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL,
      speed REAL, heading REAL, alt REAL, acc REAL, attrs TEXT, stored INTEGER NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS positions_device_ts ON positions (device, ts);`);
  const insert = db.prepare(
    `INSERT INTO positions (device, ts, lat, lon, speed, heading, alt, acc, attrs, stored)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, ts) DO NOTHING`,
  );
  // One transaction for a whole group of frames; returns, per position, whether it was new.
  const writeAll = db.transaction((rows) => {
    const stored = Date.now();
    const flags = new Array(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const p = rows[i].p;
      flags[i] =
        insert.run(p.device, rows[i].ms, p.lat, p.lon, p.speed ?? null, p.heading ?? null,
          p.alt ?? null, p.acc ?? null, p.attrs ? JSON.stringify(p.attrs) : null, stored)
          .changes === 1;
    }
    return flags;
  });
  return { db, writeAll };
}

function finite(v) {
  return typeof v === "number" && Number.isFinite(v);
}

// A valid position in its outgoing form (canonical ts) plus its key in ms, or an error.
function validate(p) {
  if (p === null || typeof p !== "object" || Array.isArray(p)) return "position: must be a JSON object";
  if (typeof p.device !== "string" || !DEVICE.test(p.device)) return "device: invalid";
  if (!finite(p.lat) || p.lat < -90 || p.lat > 90) return "lat: invalid";
  if (!finite(p.lon) || p.lon < -180 || p.lon > 180) return "lon: invalid";
  let ms;
  if (typeof p.ts === "number") ms = Math.floor(p.ts * 1000 + 1e-6);
  else if (typeof p.ts === "string" && /[Zz]|[+-]\d\d:\d\d$/.test(p.ts)) ms = Date.parse(p.ts);
  if (!Number.isFinite(ms)) return "ts: invalid";
  const out = { device: p.device, lat: p.lat, lon: p.lon, ts: new Date(ms).toISOString() };
  for (const key of OPTIONAL) {
    if (p[key] !== undefined && p[key] !== null) {
      if (!finite(p[key])) return `${key}: invalid`;
      out[key] = p[key];
    }
  }
  if (p.attrs !== undefined && p.attrs !== null) {
    if (typeof p.attrs !== "object" || Array.isArray(p.attrs)) return "attrs: invalid";
    out.attrs = p.attrs;
  }
  return { out, ms };
}

// One publish frame (JSON text) as rows to store and rejections; a string when unusable.
function parseFrame(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return `frame is not valid JSON: ${e.message}`;
  }
  return checkFrame(value);
}

// The same for a frame already parsed (socket.io hands over parsed JSON).
function checkFrame(value) {
  const items = Array.isArray(value) ? value : [value];
  if (items.length === 0 || items.length > MAX_BATCH) {
    return `a batch must hold 1 to ${MAX_BATCH} positions; got ${items.length}`;
  }
  const rows = [];
  const rejected = [];
  for (let i = 0; i < items.length; i++) {
    const v = validate(items[i]);
    if (typeof v === "string") rejected.push({ index: i, error: v });
    else rows.push({ p: v.out, ms: v.ms });
  }
  return { rows, rejected };
}

// Group commit: frames queue up while the loop is busy and go into one transaction on the
// next turn (setImmediate), so under load one fsync covers many frames. `deliver` gets the
// positions the transaction newly stored (arrays of at most MAX_FRAME_POSITIONS), then
// each frame's `done(ack)` is called, in frame order.
function groupCommitter(store, deliver) {
  let pending = [];
  let scheduled = false;
  function flush() {
    scheduled = false;
    const frames = pending;
    pending = [];
    const rows = [];
    for (const f of frames) for (const r of f.rows) rows.push(r);
    let flags;
    try {
      flags = rows.length ? store.writeAll(rows) : [];
    } catch (e) {
      for (const f of frames) f.fail(e);
      return;
    }
    const fresh = [];
    for (let i = 0; i < rows.length; i++) if (flags[i]) fresh.push(rows[i].p);
    for (let i = 0; i < fresh.length; i += MAX_FRAME_POSITIONS) {
      deliver(fresh.length <= MAX_FRAME_POSITIONS ? fresh : fresh.slice(i, i + MAX_FRAME_POSITIONS));
    }
    let offset = 0;
    for (const f of frames) {
      let stored = 0;
      for (let i = 0; i < f.rows.length; i++) if (flags[offset + i]) stored++;
      offset += f.rows.length;
      f.done({ type: "ack", stored, duplicates: f.rows.length - stored, rejected: f.rejected });
    }
  }
  return function submit(frame) {
    pending.push(frame);
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
}

function onSignals(close) {
  for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, close);
}

module.exports = { parseArgs, openStore, parseFrame, checkFrame, groupCommitter, onSignals };
