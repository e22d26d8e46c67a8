// The token: from ?token= in the page's link, or asked for in a form. The relay's answer
// to a refused token is read from GET /api/devices: a browser cannot see why a WebSocket
// handshake got 401 or 403, a fetch can.

const STORE_KEY = "geotrack.token";

/** The token in the page's URL, or the one typed in this tab before; null if none. */
export function initialToken() {
  const fromUrl = new URLSearchParams(location.search).get("token");
  if (fromUrl) return fromUrl;
  return sessionStorage.getItem(STORE_KEY);
}

/** Ask for a token in the page's form; resolves with what was typed. */
export function askToken(message) {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  form.hidden = false;
  if (message) input.setAttribute("aria-description", message);
  input.focus();
  return new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      form.hidden = true;
      sessionStorage.setItem(STORE_KEY, token);
      resolve(token);
    };
  });
}

/** Headers for the REST API. */
export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/**
 * Whether the relay takes this token: null when it does, else the reason it gives
 * (the body of its 401/403, e.g. "this link expired at 2026-…Z").
 */
export async function refusal(token) {
  let response;
  try {
    response = await fetch("/api/devices", { headers: authHeaders(token), cache: "no-store" });
  } catch {
    return null; // the relay is away: not a refusal, the socket retries
  }
  if (response.status !== 401 && response.status !== 403) return null;
  const text = (await response.text()).trim();
  return text || (response.status === 401 ? "a valid token is required" : "this token may not view the map");
}

/**
 * Whether the relay lets this token publish: null when it does, else its reason. An empty
 * batch is refused as a bad frame (400) after the token passed, and as 401/403 before.
 */
export async function publishRefusal(token) {
  let response;
  try {
    response = await fetch("/api/positions", {
      method: "POST",
      headers: { ...authHeaders(token), "Content-Type": "application/json" },
      body: "[]",
    });
  } catch {
    return null;
  }
  if (response.status !== 401 && response.status !== 403) return null;
  return (await response.text()).trim() || "this token may not publish";
}
