// The relay's documented protocol (docs/protocol.md), as the page speaks it: /subscribe
// with since= after a dropped connection, /publish with one ack per frame.

/** ws[s]://<this page's host>:<ws_port> for the relay serving this page. */
export function wsBase(config) {
  return `${config.ws_tls ? "wss" : "ws"}://${location.hostname}:${config.ws_port}`;
}

function withToken(url, token) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
}

/**
 * A subscription that stays up: after a dropped connection it reconnects with
 * `since=` a little before the last moment it was surely connected (the relay's clock,
 * from the HTTP Date header's offset), so nothing stored meanwhile is missed; what comes
 * twice is dropped by the caller (same device, same or older ts).
 */
export class Subscription {
  constructor({ base, token, clockOffsetMs, onPositions, onState, onRefused, path = "/subscribe" }) {
    this.base = base;
    this.path = path; // or /events: the same since= and frames of JSON arrays
    this.token = token;
    this.clockOffsetMs = clockOffsetMs;
    this.onPositions = onPositions;
    this.onState = onState;
    this.onRefused = onRefused;
    this.connected = false;
    this.lastAliveMs = null;
    this.retryMs = 1000;
    this.stopped = false;
  }

  /** Start: replay what was stored since `sinceMs` (relay clock) first, when given. */
  start(sinceMs = null) {
    this.lastAliveMs = sinceMs;
    this.open();
  }

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close(1000);
  }

  open() {
    let url = `${this.base}${this.path}`;
    if (this.lastAliveMs != null) {
      // A margin for positions committed while the last frame was on its way.
      url += `?since=${encodeURIComponent(new Date(this.lastAliveMs - 5000).toISOString())}`;
    }
    const ws = new WebSocket(withToken(url, this.token));
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.connected = true;
      this.retryMs = 1000;
      this.lastAliveMs = this.now();
      this.onState("live");
    };
    ws.onmessage = (event) => {
      this.lastAliveMs = this.now();
      let positions;
      try {
        positions = JSON.parse(event.data);
      } catch {
        return;
      }
      if (Array.isArray(positions)) this.onPositions(positions);
    };
    ws.onclose = async () => {
      this.connected = false;
      if (this.stopped) return;
      // A browser cannot read why a handshake was refused: ask the REST API, which says.
      if (!opened && this.onRefused && (await this.onRefused())) return;
      this.onState("reconnecting");
      setTimeout(() => this.open(), this.retryMs);
      this.retryMs = Math.min(15000, this.retryMs * 2);
    };
  }

  now() {
    return Date.now() + this.clockOffsetMs;
  }
}

/**
 * A /publish connection that keeps every frame until it is acked and sends the unacked
 * ones again after a reconnect (the relay drops duplicates): at-least-once, as geotrack's
 * own publisher. `onChange({sent, acked, error})` reports progress.
 */
export class Publisher {
  constructor({ base, token, onChange, onRefused }) {
    this.url = withToken(`${base}/publish`, token);
    this.onChange = onChange;
    this.onRefused = onRefused;
    this.pending = [];
    this.inFlight = 0;
    this.sent = 0;
    this.acked = 0;
    this.error = "";
    this.closed = false;
    this.open();
  }

  open() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.inFlight = 0;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      for (const frame of this.pending) this.write(frame);
    };
    ws.onmessage = (event) => {
      const answer = JSON.parse(event.data);
      this.pending.shift();
      this.inFlight = Math.max(0, this.inFlight - 1);
      if (answer.type === "ack") {
        this.acked += answer.stored + answer.duplicates;
        this.error = answer.rejected.length ? answer.rejected[0].error : "";
      } else {
        this.error = answer.error;
      }
      this.report();
    };
    ws.onclose = async (event) => {
      if (this.closed) return;
      const refused = !opened && this.onRefused ? await this.onRefused() : null;
      if (refused) {
        this.closed = true;
        this.error = refused;
        this.report();
        return;
      }
      this.error = event.reason || "connection lost, reconnecting";
      this.report();
      setTimeout(() => this.open(), 2000);
    };
  }

  send(position) {
    const frame = JSON.stringify(position);
    this.pending.push(frame);
    this.sent += 1;
    if (this.ws.readyState === WebSocket.OPEN) this.write(frame);
    this.report();
  }

  write(frame) {
    this.inFlight += 1;
    this.ws.send(frame);
  }

  close() {
    this.closed = true;
    this.ws.close(1000);
  }

  report() {
    this.onChange({ sent: this.sent, acked: this.acked, error: this.error });
  }
}
