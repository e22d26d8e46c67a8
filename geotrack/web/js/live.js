// Live positions: one marker per device (arrow by heading, id label), a trail of its last
// positions, and the device list. Trails are drawn on a canvas (no DOM element each):
// window.geotrack.trail(id) gives their points.
//
// Positions are applied once per animation frame, never one DOM update per message:
// markers move at the next frame; trails and list rows, which cost a repaint of the trail
// layer or a layout of the list, are redrawn at most every half second (every 2 s with
// more than 200 devices on the map), for every device that moved meanwhile at once. That keeps 1,000 devices at one fix per second
// smooth (docs/benchmarks.md).

import { ARROW_HTML, FrameBatcher, formatAge, formatSpeed, formatTime, insertByTime } from "./geo.js";

const TRAIL_LENGTH = 100;
const TRAIL_COLOUR = "#93b1f3"; // opaque: cheaper to paint than translucent, a thousand at a time
const SLOW_EVERY_MS = 500;
const SLOW_EVERY_MS_CROWDED = 2000;
// Above this many devices on the map, id labels show from this zoom on only: a thousand
// overlapping labels are unreadable, and painting them costs frames. Hovering a marker
// still shows its id.
const CROWDED = 200;
const LABELS_FROM_ZOOM = 16;
// How long a marker pulses for a fence event (js/fences.js).
const PULSE_MS = 2500;

export class Live {
  constructor(map, { staleAfterS, clockOffsetMs, schedule = (f) => requestAnimationFrame(f) }) {
    this.map = map;
    // Trails are drawn on one canvas, in a pane of their own under the markers and the
    // history tracks: a thousand SVG paths cost the browser far more to restyle and paint.
    map.createPane("gtTrails").style.zIndex = 350;
    this.trailRenderer = L.canvas({ pane: "gtTrails" });
    this.staleAfterMs = staleAfterS * 1000;
    this.clockOffsetMs = clockOffsetMs;
    this.schedule = schedule;
    this.devices = new Map();
    this.pulses = new Map(); // device id -> until when a marker not yet drawn should pulse
    this.filter = "";
    this.following = null;
    this.fitted = false;
    this.listDirty = new Set(); // rows and trails to redraw at the next slow pass
    this.slowPending = false;
    this.lastSlowMs = 0;
    this.list = document.getElementById("devices");
    this.count = document.getElementById("device-count");
    this.batcher = new FrameBatcher((batch) => this.apply(batch), schedule);
    this.list.addEventListener("click", (event) => {
      const li = event.target.closest("li[data-device]");
      if (li) this.follow(li.dataset.device);
    });
    document.getElementById("filter").addEventListener("input", (event) => {
      this.filter = event.target.value.trim().toLowerCase();
      for (const device of this.devices.values()) this.showOrHide(device);
      this.updateCount();
    });
    setInterval(() => schedule(() => this.tick()), 1000);
    map.on("zoomend", () => this.updateCrowding());
  }

  /** Take positions as they arrive; the map and list change at the next frame. */
  push(positions) {
    this.batcher.push(positions);
  }

  apply(batch) {
    const changed = new Set();
    let added = false;
    for (const p of batch) {
      const tsMs = Date.parse(p.ts);
      let device = this.devices.get(p.device);
      if (!device) {
        device = this.create(p.device);
        added = true;
      } else if (tsMs <= device.tsMs) {
        // A replayed or late fix: the marker shows the newest one; the trail takes it in
        // its place (the replay after the first fixes from /api/devices draws the trails).
        if (insertByTime(device.trailTimes, device.trail, tsMs, [p.lat, p.lon], TRAIL_LENGTH)) {
          this.listDirty.add(device);
        }
        continue;
      }
      Object.assign(device, { lat: p.lat, lon: p.lon, tsMs, speed: p.speed, heading: p.heading });
      device.trail.push([p.lat, p.lon]);
      device.trailTimes.push(tsMs);
      if (device.trail.length > TRAIL_LENGTH) {
        device.trail.shift();
        device.trailTimes.shift();
      }
      changed.add(device);
    }
    for (const device of changed) {
      device.marker.setLatLng([device.lat, device.lon]);
      this.styleMarker(device);
      this.listDirty.add(device);
    }
    if (!changed.size && this.listDirty.size) this.scheduleSlow();
    if (added) {
      for (const device of changed) this.showOrHide(device);
      this.sortList();
      this.updateCount();
      this.slow(); // a new device shows its row and trail at once
    } else if (changed.size) {
      this.scheduleSlow();
    }
    if (!this.fitted && changed.size) {
      this.fitted = true; // once: after that the view is the user's
      this.fitAll();
    }
    const followed = this.following && this.devices.get(this.following);
    if (followed && changed.has(followed)) this.map.panTo([followed.lat, followed.lon]);
  }

  scheduleSlow() {
    if (this.slowPending) return;
    this.slowPending = true;
    const every = (this.shownCount || 0) > CROWDED ? SLOW_EVERY_MS_CROWDED : SLOW_EVERY_MS;
    const wait = Math.max(0, this.lastSlowMs + every - performance.now());
    setTimeout(() => this.schedule(() => this.slow()), wait);
  }

  /** Redraw the trails and rows of the devices that moved since the last pass. */
  slow() {
    this.slowPending = false;
    this.lastSlowMs = performance.now();
    const now = Date.now() + this.clockOffsetMs;
    for (const device of this.listDirty) {
      device.trailLine.setLatLngs(device.trail);
      this.updateRow(device, now);
    }
    this.listDirty.clear();
  }

  create(id) {
    const icon = L.divIcon({
      className: "gt-marker",
      html: ARROW_HTML,
      iconSize: [22, 22],
      iconAnchor: [11, 11],
    });
    const marker = L.marker([0, 0], { icon, keyboard: false, title: id });
    const trailLine = L.polyline([], {
      className: "gt-trail",
      renderer: this.trailRenderer,
      interactive: false,
      color: TRAIL_COLOUR,
      weight: 3,
      opacity: 1,
      fill: false,
    });
    const li = document.createElement("li");
    li.dataset.device = id;
    li.innerHTML = `<span class="id"></span><span class="speed"></span><span class="time"></span><span class="age"></span>`;
    li.querySelector(".id").textContent = id;
    const device = {
      id,
      marker,
      trailLine,
      li,
      cells: {
        time: li.querySelector(".time"),
        age: li.querySelector(".age"),
        speed: li.querySelector(".speed"),
      },
      shown: { time: "", age: "", speed: "", heading: undefined },
      trail: [],
      trailTimes: [],
      tsMs: -Infinity,
      visible: false,
      stale: false,
    };
    marker.on("add", () => {
      const el = marker.getElement();
      el.setAttribute("data-device", id);
      el.querySelector(".gt-label").textContent = id;
      device.shown.heading = undefined;
      this.styleMarker(device);
      if (this.pulses.has(id) && this.pulses.get(id) > performance.now()) this.pulse(id);
    });
    marker.on("click", () => this.follow(id));
    this.devices.set(id, device);
    return device;
  }

  styleMarker(device) {
    const el = device.marker.getElement();
    if (!el) return;
    const heading = device.heading ?? null;
    if (heading !== device.shown.heading) {
      device.shown.heading = heading;
      const arrow = el.firstChild;
      arrow.classList.toggle("gt-no-heading", heading == null);
      arrow.style.transform = heading == null ? "" : `rotate(${heading}deg)`;
    }
    el.classList.toggle("gt-stale", device.stale);
  }

  updateRow(device, nowMs) {
    const set = (cell, text) => {
      if (device.shown[cell] !== text) {
        device.shown[cell] = text;
        device.cells[cell].textContent = text;
      }
    };
    set("time", formatTime(device.tsMs));
    set("age", formatAge(nowMs - device.tsMs));
    set("speed", formatSpeed(device.speed));
    const stale = nowMs - device.tsMs > this.staleAfterMs;
    if (stale !== device.stale) {
      device.stale = stale;
      device.li.classList.toggle("stale", stale);
      this.styleMarker(device);
    }
  }

  matches(id) {
    return !this.filter || id.toLowerCase().includes(this.filter);
  }

  showOrHide(device) {
    const show = this.matches(device.id);
    device.li.hidden = !show;
    if (show && !device.visible) {
      device.trailLine.addTo(this.map);
      device.marker.addTo(this.map);
    } else if (!show && device.visible) {
      device.marker.remove();
      device.trailLine.remove();
    }
    device.visible = show;
  }

  sortList() {
    const ids = [...this.devices.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    const fragment = document.createDocumentFragment();
    for (const id of ids) fragment.appendChild(this.devices.get(id).li);
    this.list.appendChild(fragment);
  }

  updateCount() {
    const total = this.devices.size;
    const shown = [...this.devices.values()].filter((d) => d.visible).length;
    this.count.textContent = shown === total ? `${total} device${total === 1 ? "" : "s"}` : `${shown} of ${total}`;
    this.shownCount = shown;
    this.updateCrowding();
  }

  updateCrowding() {
    const crowded = (this.shownCount || 0) > CROWDED && this.map.getZoom() < LABELS_FROM_ZOOM;
    this.map.getContainer().classList.toggle("gt-crowded", crowded);
  }

  follow(id) {
    const previous = this.following && this.devices.get(this.following);
    if (previous) previous.li.classList.remove("following");
    this.following = this.following === id ? null : id;
    const device = this.following && this.devices.get(this.following);
    if (device) {
      device.li.classList.add("following");
      this.map.setView([device.lat, device.lon], Math.max(this.map.getZoom(), 15));
    }
  }

  /** Ages and staleness move with the clock, not with messages. */
  tick() {
    const now = Date.now() + this.clockOffsetMs;
    for (const device of this.devices.values()) this.updateRow(device, now);
  }

  /** Fit the map to the devices shown. */
  fitAll() {
    const points = [...this.devices.values()].filter((d) => d.visible).map((d) => [d.lat, d.lon]);
    if (points.length) this.map.fitBounds(points, { padding: [40, 40], maxZoom: 15 });
  }

  /** The points of the trail drawn for ``id`` ([lat, lon] each), or null. */
  trail(id) {
    const device = this.devices.get(id);
    if (!device || !device.visible) return null;
    return device.trailLine.getLatLngs().map((ll) => [ll.lat, ll.lng]);
  }

  /**
   * Make a device's marker pulse briefly (a fence event about it). An event can come
   * before the fix that decided it is drawn (another connection, the next frame): then
   * the marker pulses once it is on the map, if that is within PULSE_MS.
   */
  pulse(id) {
    const device = this.devices.get(id);
    const el = device?.marker.getElement();
    if (!el) {
      this.pulses.set(id, performance.now() + PULSE_MS);
      return;
    }
    this.pulses.delete(id);
    el.classList.remove("gt-pulse");
    void el.offsetWidth; // restart the animation when it is already running
    el.classList.add("gt-pulse");
    clearTimeout(device.pulseTimer);
    device.pulseTimer = setTimeout(() => el.classList.remove("gt-pulse"), PULSE_MS);
  }

  /** Whether a device's marker is pulsing now (for the tests). */
  pulsing(id) {
    return Boolean(this.devices.get(id)?.marker.getElement()?.classList.contains("gt-pulse"));
  }

  snapshot() {
    const out = {};
    for (const d of this.devices.values()) {
      out[d.id] = {
        lat: d.lat,
        lon: d.lon,
        ts: new Date(d.tsMs).toISOString(),
        speed: d.speed ?? null,
        heading: d.heading ?? null,
        stale: d.stale,
      };
    }
    return out;
  }
}
