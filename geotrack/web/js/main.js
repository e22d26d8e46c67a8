// The page: settings from the relay, the map, then live positions, history and tracking.

import { askToken, authHeaders, initialToken, publishRefusal, refusal } from "./auth.js";
import { Fences } from "./fences.js";
import { History } from "./history.js";
import { Live } from "./live.js";
import { Subscription, wsBase } from "./protocol.js";
import { Tracker } from "./track.js";

const $ = (id) => document.getElementById(id);
const TRAIL_REPLAY_MS = 60 * 1000;
const NOT_BUILT = "the map library was not built: install Node.js and npm, then reinstall geotrack";

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = kind || text;
}

function showError(message) {
  const banner = $("banner");
  banner.textContent = message;
  banner.hidden = !message;
}

async function loadConfig() {
  const response = await fetch("/map/config.json", { cache: "no-store" });
  const config = await response.json();
  // The relay's clock, so that since= and ages do not depend on this machine's.
  const serverDate = Date.parse(response.headers.get("Date"));
  config.clockOffsetMs = Number.isNaN(serverDate) ? 0 : serverDate + 500 - Date.now();
  return config;
}

function createMap(config) {
  const map = L.map("map", { zoomControl: true, worldCopyJump: true }).setView([20, 0], 2);
  if (config.tiles) {
    L.tileLayer(config.tiles, { maxZoom: 19, attribution: config.attribution || "" }).addTo(map);
  } else {
    map.getContainer().classList.add("gt-no-tiles");
  }
  L.control.scale({ imperial: false }).addTo(map);
  return map;
}

/** A token the relay takes (or none without --auth); asks again after a refusal. */
async function obtainToken(config) {
  if (!config.auth) return null;
  let token = initialToken();
  for (;;) {
    if (!token) {
      setStatus("token needed", "auth");
      token = await askToken();
    }
    const reason = await refusal(token);
    if (!reason) return token;
    fail(reason);
    if (new URLSearchParams(location.search).has("token")) return null; // a link: say why, stop
    token = null;
  }
}

function fail(reason) {
  setStatus(reason, "error");
  showError(reason);
}

async function seed(live, token) {
  // The last fix of every device, so the map is not empty until they move.
  try {
    const response = await fetch("/api/devices", { headers: authHeaders(token), cache: "no-store" });
    if (response.ok) live.push((await response.json()).map((entry) => entry.last));
  } catch {
    // the subscription reports the relay being away
  }
}

async function main() {
  if (typeof window.L === "undefined") {
    showError(NOT_BUILT);
    setStatus("map not built", "error");
    return;
  }
  let config;
  try {
    config = await loadConfig();
  } catch (error) {
    fail(`cannot read the relay's settings: ${error.message}`);
    return;
  }
  const map = createMap(config);
  const live = new Live(map, { staleAfterS: config.stale_after_s, clockOffsetMs: config.clockOffsetMs });
  let subscription = null;
  let history = null;
  let fences = null;
  window.geotrack = {
    map,
    devices: () => live.snapshot(),
    trail: (id) => live.trail(id),
    connected: () => Boolean(subscription?.connected),
    playback: () => (history ? history.snapshot() : null),
    fences: () => (fences?.available ? fences.snapshot() : null),
    events: () => (fences ? fences.events : []),
    pulsing: (id) => live.pulsing(id),
  };

  const token = await obtainToken(config);
  if (config.auth && !token) {
    // A link with a token that may publish but not view (a phone's, docs/operations.md):
    // the refusal stays shown and the map empty, but "Track this device" works.
    const tracker = initialToken();
    if (tracker && !(await publishRefusal(tracker))) {
      new Tracker({ base: wsBase(config), token: tracker });
    }
    return;
  }
  showError("");
  const base = wsBase(config);
  const startMs = Date.now() + config.clockOffsetMs;
  await seed(live, token);
  subscription = new Subscription({
    base,
    token,
    clockOffsetMs: config.clockOffsetMs,
    onPositions: (positions) => live.push(positions),
    onState: (state) => {
      setStatus(state === "live" ? "live" : "reconnecting…", state);
      if (state === "live") showError("");
    },
    onRefused: async () => {
      const reason = await refusal(token);
      if (reason) fail(reason);
      return Boolean(reason);
    },
  });
  // What was stored in the last minute comes as a replay: it draws the trails, and
  // nothing stored between the seed and the socket opening is missed.
  subscription.start(startMs - TRAIL_REPLAY_MS);
  history = new History(map, { token, clockOffsetMs: config.clockOffsetMs, onError: showError });
  fences = new Fences(map, { token, live, clockOffsetMs: config.clockOffsetMs, base });
  await fences.start();
  new Tracker({ base, token });
}

main();
