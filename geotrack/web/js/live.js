// Live positions: one marker per device (arrow by heading, id label), a trail of its last
// positions, and the device list. Positions are applied once per animation frame.

import { ARROW_HTML, FrameBatcher, formatAge, formatSpeed, formatTime } from "./geo.js";

const TRAIL_LENGTH = 100;

export class Live {
  constructor(map, { staleAfterS, clockOffsetMs, schedule = (f) => requestAnimationFrame(f) }) {
    this.map = map;
    this.staleAfterMs = staleAfterS * 1000;
    this.clockOffsetMs = clockOffsetMs;
    this.devices = new Map();
    this.filter = "";
    this.following = null;
    this.fitted = false;
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
    setInterval(() => this.tick(), 1000);
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
        continue; // a replayed or late fix: the marker shows the newest one
      }
      Object.assign(device, { lat: p.lat, lon: p.lon, tsMs, speed: p.speed, heading: p.heading });
      device.trail.push([p.lat, p.lon]);
      if (device.trail.length > TRAIL_LENGTH) device.trail.shift();
      changed.add(device);
    }
    for (const device of changed) this.render(device);
    if (added) {
      this.sortList();
      this.updateCount();
    }
    if (!this.fitted && changed.size) {
      this.fitted = true; // once: after that the view is the user's
      this.fitAll();
    }
    const followed = this.following && this.devices.get(this.following);
    if (followed && changed.has(followed)) this.map.panTo([followed.lat, followed.lon]);
  }

  create(id) {
    const icon = L.divIcon({
      className: "gt-marker",
      html: ARROW_HTML,
      iconSize: [22, 22],
      iconAnchor: [11, 11],
    });
    const marker = L.marker([0, 0], { icon, keyboard: false, title: id });
    marker.on("add", () => {
      const el = marker.getElement();
      el.setAttribute("data-device", id);
      el.querySelector(".gt-label").textContent = id;
      this.styleMarker(device);
    });
    marker.on("click", () => this.follow(id));
    const trail = L.polyline([], { className: "gt-trail", interactive: false });
    const li = document.createElement("li");
    li.dataset.device = id;
    li.innerHTML = `<span class="id"></span><span class="speed"></span><span class="time"></span><span class="age"></span>`;
    li.querySelector(".id").textContent = id;
    const device = { id, marker, trailLine: trail, li, trail: [], tsMs: -Infinity, shown: false, stale: false };
    this.devices.set(id, device);
    return device;
  }

  render(device) {
    device.marker.setLatLng([device.lat, device.lon]);
    device.trailLine.setLatLngs(device.trail);
    this.showOrHide(device);
    this.styleMarker(device);
    this.updateRow(device, Date.now() + this.clockOffsetMs);
  }

  styleMarker(device) {
    const el = device.marker.getElement();
    if (!el) return;
    const arrow = el.firstChild;
    const known = device.heading != null;
    arrow.classList.toggle("gt-no-heading", !known);
    arrow.style.transform = known ? `rotate(${device.heading}deg)` : "";
    el.classList.toggle("gt-stale", device.stale);
  }

  updateRow(device, nowMs) {
    const li = device.li;
    li.querySelector(".time").textContent = formatTime(device.tsMs);
    li.querySelector(".age").textContent = formatAge(nowMs - device.tsMs);
    li.querySelector(".speed").textContent = formatSpeed(device.speed);
    const stale = nowMs - device.tsMs > this.staleAfterMs;
    if (stale !== device.stale) {
      device.stale = stale;
      li.classList.toggle("stale", stale);
      this.styleMarker(device);
    }
  }

  matches(id) {
    return !this.filter || id.toLowerCase().includes(this.filter);
  }

  showOrHide(device) {
    const show = this.matches(device.id);
    device.li.hidden = !show;
    if (show && !device.shown) {
      device.trailLine.addTo(this.map);
      device.marker.addTo(this.map);
    } else if (!show && device.shown) {
      device.marker.remove();
      device.trailLine.remove();
    }
    device.shown = show;
  }

  sortList() {
    const ids = [...this.devices.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    const fragment = document.createDocumentFragment();
    for (const id of ids) fragment.appendChild(this.devices.get(id).li);
    this.list.appendChild(fragment);
  }

  updateCount() {
    const total = this.devices.size;
    const shown = [...this.devices.values()].filter((d) => d.shown).length;
    this.count.textContent = shown === total ? `${total} devices` : `${shown} of ${total}`;
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

  /** Fit the map to every device once, when the first positions are in. */
  fitAll() {
    const points = [...this.devices.values()].filter((d) => d.shown).map((d) => [d.lat, d.lon]);
    if (points.length) this.map.fitBounds(points, { padding: [40, 40], maxZoom: 15 });
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
