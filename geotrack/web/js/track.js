// Track this device: the browser's Geolocation API, published to /publish like any client.

import { publishRefusal } from "./auth.js";
import { Publisher } from "./protocol.js";

const DEVICE_KEY = "geotrack.trackDevice";
const DEVICE_ID = /^[A-Za-z0-9._:-]{1,64}$/;
const $ = (id) => document.getElementById(id);

export class Tracker {
  constructor({ base, token }) {
    this.base = base;
    this.token = token;
    this.watch = null;
    this.publisher = null;
    $("track-device").value = localStorage.getItem(DEVICE_KEY) || "";
    $("track-me").addEventListener("click", () => (this.watch == null ? this.start() : this.stop()));
  }

  start() {
    const device = $("track-device").value.trim();
    if (!DEVICE_ID.test(device)) {
      return this.status("give this device an id: 1-64 of A-Z a-z 0-9 . _ : -", true);
    }
    if (!("geolocation" in navigator)) {
      return this.status("this browser has no geolocation (it needs https:// or localhost)", true);
    }
    localStorage.setItem(DEVICE_KEY, device);
    this.publisher = new Publisher({
      base: this.base,
      token: this.token,
      onChange: ({ sent, acked, error }) =>
        this.status(`sent ${sent}, acked ${acked}${error ? ` — ${error}` : ""}`, Boolean(error)),
      onRefused: async () => {
        const reason = await publishRefusal(this.token);
        if (reason) setTimeout(() => this.stop(reason));
        return reason;
      },
    });
    this.watch = navigator.geolocation.watchPosition(
      (fix) => this.publisher.send(position(device, fix)),
      (error) => this.status(`location: ${error.message || "not available"}`, true),
      { enableHighAccuracy: true, maximumAge: 0, timeout: 30000 },
    );
    $("track-me").textContent = "Stop tracking";
    $("track-me").classList.add("active");
    $("track-device").disabled = true;
    this.status("waiting for a location…");
  }

  stop(reason = "") {
    if (this.watch == null) return;
    navigator.geolocation.clearWatch(this.watch);
    this.watch = null;
    this.publisher?.close();
    $("track-me").textContent = "Track this device";
    $("track-me").classList.remove("active");
    $("track-device").disabled = false;
    if (reason) this.status(reason, true);
  }

  status(text, isError = false) {
    const el = $("track-status");
    el.textContent = text;
    el.classList.toggle("gt-bad", isError);
  }
}

/** A Position (docs/protocol.md) from a GeolocationPosition; absent fields left out. */
export function position(device, fix) {
  const c = fix.coords;
  const p = { device, lat: c.latitude, lon: c.longitude, ts: fix.timestamp / 1000 };
  if (Number.isFinite(c.speed) && c.speed >= 0) p.speed = c.speed;
  if (Number.isFinite(c.heading) && c.heading >= 0 && c.heading < 360) p.heading = c.heading;
  if (Number.isFinite(c.altitude)) p.alt = c.altitude;
  if (Number.isFinite(c.accuracy) && c.accuracy >= 0) p.acc = c.accuracy;
  return p;
}
