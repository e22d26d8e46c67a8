// History: tracks from the REST API (GET /api/positions?format=ndjson) and their playback.

import { ARROW_HTML, advance, formatSpeed, interpolate, parseDeviceList, parseUtcInput, tracksFromNdjson, utcInputValue } from "./geo.js";
import { authHeaders } from "./auth.js";

const $ = (id) => document.getElementById(id);

export class History {
  constructor(map, { token, clockOffsetMs, onError }) {
    this.map = map;
    this.token = token;
    this.onError = onError;
    this.layer = L.layerGroup().addTo(map);
    this.tracks = new Map();
    this.markers = new Map();
    this.state = { t_ms: 0, start_ms: 0, end_ms: 0, playing: false, speed: Number($("speed").value) };
    this.lastFrame = null;

    const now = Date.now() + clockOffsetMs;
    // Left as it is, "to" means "until now", whenever the tracks are loaded.
    this.defaultTo = utcInputValue(now);
    $("history-to").value = this.defaultTo;
    $("history-from").value = utcInputValue(now - 3600 * 1000);
    $("history-toggle").addEventListener("click", () => this.toggle());
    $("history-load").addEventListener("click", () => this.load());
    $("play").addEventListener("click", () => (this.state.playing ? this.pause() : this.play()));
    $("speed").addEventListener("change", (e) => (this.state.speed = Number(e.target.value)));
    $("slider").addEventListener("input", (e) => {
      this.state.t_ms = Number(e.target.value);
      this.render();
    });
  }

  /** Open or close the panel; closing it takes the tracks off the map. */
  toggle() {
    const panel = $("history");
    panel.hidden = !panel.hidden;
    $("history-toggle").setAttribute("aria-expanded", String(!panel.hidden));
    $("history-toggle").classList.toggle("active", !panel.hidden);
    if (panel.hidden && this.tracks.size) this.show(new Map());
  }

  async load() {
    const params = new URLSearchParams({ format: "ndjson" });
    for (const id of parseDeviceList($("history-devices").value)) params.append("device", id);
    const from = parseUtcInput($("history-from").value);
    const to = parseUtcInput($("history-to").value);
    if (!Number.isNaN(from)) params.set("since", new Date(from).toISOString());
    const untilNow = $("history-to").value === this.defaultTo;
    if (!Number.isNaN(to) && !untilNow) params.set("until", new Date(to).toISOString());
    const info = $("history-info");
    info.textContent = "loading…";
    let text;
    try {
      const response = await fetch(`/api/positions?${params}`, { headers: authHeaders(this.token) });
      text = await response.text();
      if (!response.ok) throw new Error(text.trim() || `HTTP ${response.status}`);
    } catch (error) {
      info.textContent = "";
      this.onError(`history: ${error.message}`);
      return;
    }
    this.show(tracksFromNdjson(text));
  }

  /** Draw `tracks` ({id: [{t, lat, lon, …}]}) and put the playback at their start. */
  show(tracks) {
    this.pause();
    this.layer.clearLayers();
    this.markers.clear();
    this.tracks = tracks;
    // The live markers step back while tracks are shown.
    this.map.getContainer().classList.toggle("gt-history-on", tracks.size > 0);
    let start = Infinity;
    let end = -Infinity;
    let points = 0;
    const bounds = [];
    for (const [id, track] of tracks) {
      const line = track.map((p) => [p.lat, p.lon]);
      L.polyline(line, { className: "gt-history-track", interactive: false }).addTo(this.layer);
      bounds.push(...line);
      start = Math.min(start, track[0].t);
      end = Math.max(end, track[track.length - 1].t);
      points += track.length;
      const icon = L.divIcon({
        className: "gt-playback-marker",
        html: ARROW_HTML,
        iconSize: [22, 22],
        iconAnchor: [11, 11],
      });
      const marker = L.marker(line[0], { icon, keyboard: false, interactive: false });
      marker.on("add", () => {
        marker.getElement().setAttribute("data-device", id);
        marker.getElement().querySelector(".gt-label").textContent = id;
      });
      this.markers.set(id, marker);
    }
    const info = $("history-info");
    if (!points) {
      info.textContent = tracks.size || $("history").hidden ? "" : "no positions in that range";
      Object.assign(this.state, { t_ms: 0, start_ms: 0, end_ms: 0 });
      $("playback-time").textContent = $("playback-speed").textContent = "–";
      $("play").disabled = $("slider").disabled = true;
      return;
    }
    info.textContent = `${tracks.size} track${tracks.size === 1 ? "" : "s"}, ${points} positions`;
    Object.assign(this.state, { t_ms: start, start_ms: start, end_ms: end });
    const slider = $("slider");
    slider.min = String(start);
    slider.max = String(end);
    slider.value = String(start);
    $("play").disabled = slider.disabled = false;
    this.map.fitBounds(bounds, { padding: [40, 40], maxZoom: 16 });
    this.render();
  }

  play() {
    if (!this.tracks.size) return;
    if (this.state.t_ms >= this.state.end_ms) this.state.t_ms = this.state.start_ms;
    this.state.playing = true;
    $("play").textContent = "Pause";
    this.lastFrame = null;
    requestAnimationFrame((now) => this.frame(now));
  }

  pause() {
    this.state.playing = false;
    $("play").textContent = "Play";
  }

  frame(now) {
    if (!this.state.playing) return;
    if (this.lastFrame != null) {
      this.state.t_ms = advance(this.state.t_ms, now - this.lastFrame, this.state.speed, this.state.end_ms);
    }
    this.lastFrame = now;
    this.render();
    if (this.state.t_ms >= this.state.end_ms) this.pause();
    else requestAnimationFrame((next) => this.frame(next));
  }

  /** Markers where each device was at the cursor; the readout shows the first one's speed. */
  render() {
    const t = this.state.t_ms;
    $("slider").value = String(t);
    $("playback-time").textContent = new Date(t).toISOString();
    let shownSpeed = null;
    for (const [id, track] of this.tracks) {
      const at = interpolate(track, t);
      const marker = this.markers.get(id);
      if (!at) {
        marker.remove();
        continue;
      }
      marker.setLatLng([at.lat, at.lon]);
      if (!this.layer.hasLayer(marker)) marker.addTo(this.layer);
      const arrow = marker.getElement()?.firstChild;
      if (arrow) {
        arrow.classList.toggle("gt-no-heading", at.heading == null);
        arrow.style.transform = at.heading == null ? "" : `rotate(${at.heading}deg)`;
      }
      if (shownSpeed == null) shownSpeed = at.speed;
    }
    $("playback-speed").textContent = shownSpeed == null ? "–" : formatSpeed(shownSpeed);
  }

  snapshot() {
    const { t_ms, start_ms, end_ms, playing, speed } = this.state;
    return { t_ms, start_ms, end_ms, playing, speed };
  }
}
