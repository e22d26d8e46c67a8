// Fences and their events: the relay's fences (GET /api/fences) drawn with their names,
// and enter/exit events (WebSocket /events) flashed live: the fence lights up, the
// device's marker pulses, and the event goes to the top of a short list.
//
// A relay without --fences answers /api/fences with 404: then nothing is drawn, the
// events panel stays hidden and no /events connection is made.

import { authHeaders } from "./auth.js";
import { Subscription } from "./protocol.js";

const FLASH_MS = 2500;
const LIST_LENGTH = 50;
// Events decided this long before the page saw them are history (the replay at start, or
// what a reconnect catches up on): listed, not flashed.
const LIVE_WITHIN_MS = 60 * 1000;
// At start, the events stored in the last hour fill the list.
const REPLAY_MS = 60 * 60 * 1000;
const STYLE = { color: "#0f766e", weight: 2, opacity: 0.9, fillColor: "#14b8a6", fillOpacity: 0.12 };
const FLASH = {
  enter: { color: "#16a34a", weight: 4, fillColor: "#22c55e", fillOpacity: 0.45 },
  exit: { color: "#d97706", weight: 4, fillColor: "#f59e0b", fillOpacity: 0.45 },
};

function key(e) {
  return `${e.device}\u0000${e.fence}\u0000${e.ts}\u0000${e.type}`;
}

export class Fences {
  constructor(map, { token, live, clockOffsetMs, base }) {
    this.map = map;
    this.token = token;
    this.live = live;
    this.clockOffsetMs = clockOffsetMs;
    this.base = base;
    map.createPane("gtFences").style.zIndex = 340; // under the trails and markers
    this.layers = new Map(); // name -> {layer, kind, flashUntil, timer}
    this.seen = new Set();
    this.events = []; // newest first, as listed
    this.available = false;
    this.subscription = null;
    this.panel = document.getElementById("events-panel");
    this.list = document.getElementById("events");
  }

  /** Draw the fences and start following events; false when the relay has none. */
  async start() {
    let response;
    try {
      response = await fetch("/api/fences", { headers: authHeaders(this.token), cache: "no-store" });
    } catch {
      return false;
    }
    if (!response.ok) return false;
    this.draw(await response.json());
    this.available = true;
    this.refreshing = null;
    this.panel.hidden = false;
    const now = Date.now() + this.clockOffsetMs;
    this.subscription = new Subscription({
      base: this.base,
      token: this.token,
      clockOffsetMs: this.clockOffsetMs,
      path: "/events",
      onPositions: (events) => this.take(events),
      onState: () => {},
    });
    this.subscription.start(now - REPLAY_MS);
    return true;
  }

  draw(collection) {
    for (const { layer } of this.layers.values()) layer.remove();
    this.layers.clear();
    for (const feature of collection.features || []) {
      const name = feature.properties?.name;
      if (!name) continue;
      const geometry = feature.geometry || {};
      const options = { ...STYLE, pane: "gtFences", className: "gt-fence", interactive: true };
      let layer;
      let kind;
      if (geometry.type === "Point") {
        const [lon, lat] = geometry.coordinates;
        layer = L.circle([lat, lon], { ...options, radius: Number(feature.properties.radius) });
        kind = "circle";
      } else {
        layer = L.geoJSON(feature, { style: () => options, pane: "gtFences" });
        kind = "polygon";
      }
      layer.bindTooltip(name, {
        permanent: true,
        direction: "center",
        className: "gt-fence-label",
        pane: "gtFences",
      });
      layer.addTo(this.map);
      this.layers.set(name, { layer, kind, flashUntil: 0, flashType: null, timer: null });
    }
  }

  /** Events from /events: each once (a reconnect may send some again), newest listed first. */
  take(events) {
    const now = Date.now() + this.clockOffsetMs;
    const fresh = [];
    for (const e of events) {
      const k = key(e);
      if (this.seen.has(k)) continue;
      this.seen.add(k);
      const live = now - Date.parse(e.ts) <= LIVE_WITHIN_MS;
      this.addRow(e, live);
      if (live) fresh.push(e);
    }
    if (fresh.some((e) => !this.layers.has(e.fence))) {
      // A fence added through REST since the page drew them: draw them again, then flash.
      this.refresh().then(() => fresh.forEach((e) => this.flash(e)));
    } else {
      fresh.forEach((e) => this.flash(e));
    }
  }

  /** Draw the relay's fences again (one request at a time). */
  refresh() {
    this.refreshing ??= (async () => {
      try {
        const response = await fetch("/api/fences", {
          headers: authHeaders(this.token),
          cache: "no-store",
        });
        if (response.ok) this.draw(await response.json());
      } catch {
        // the fences drawn stay
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  addRow(e, live) {
    this.events.unshift({ ...e, live });
    const li = document.createElement("li");
    li.className = `gt-event gt-${e.type}${live ? " gt-new" : ""}`;
    li.dataset.device = e.device;
    li.dataset.fence = e.fence;
    li.innerHTML = `<span class="type"></span><span class="device"></span><span class="fence"></span><span class="time"></span>`;
    li.querySelector(".type").textContent = e.type === "enter" ? "entered" : "left";
    li.querySelector(".device").textContent = e.device;
    li.querySelector(".fence").textContent = e.fence;
    li.querySelector(".time").textContent = e.ts.slice(11, 19);
    li.title = `${e.device} ${e.type === "enter" ? "entered" : "left"} ${e.fence} at ${e.ts}`;
    li.addEventListener("click", () => this.map.panTo([e.lat, e.lon]));
    this.list.prepend(li);
    while (this.events.length > LIST_LENGTH) {
      this.events.pop();
      this.list.lastElementChild?.remove();
    }
  }

  flash(e) {
    this.live.pulse(e.device);
    const fence = this.layers.get(e.fence);
    if (!fence) return; // a fence removed since (PUT/DELETE /api/fences): listed only
    clearTimeout(fence.timer);
    fence.layer.setStyle(FLASH[e.type]);
    fence.flashType = e.type;
    fence.flashUntil = performance.now() + FLASH_MS;
    fence.timer = setTimeout(() => {
      fence.layer.setStyle(STYLE);
      fence.flashType = null;
    }, FLASH_MS);
  }

  /** For the tests: each fence drawn, its kind, and whether it is flashing now. */
  snapshot() {
    const out = {};
    for (const [name, f] of this.layers) {
      const bounds = f.layer.getBounds();
      out[name] = {
        kind: f.kind,
        flashing: f.flashType,
        radius: f.kind === "circle" ? f.layer.getRadius() : null,
        south: bounds.getSouth(),
        west: bounds.getWest(),
        north: bounds.getNorth(),
        east: bounds.getEast(),
      };
    }
    return out;
  }
}
