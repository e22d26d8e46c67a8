"""One ``--webhook`` target: its URL as shown, its delivery cursor file, its counters and
failure log lines; and the pure parts of webhook delivery (the idempotency key, the URL
without credentials, the backoff). :mod:`geotrack.relay.webhooks` does the delivering.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

from geotrack.errors import GeotrackError, InvalidParameter
from geotrack.schema import Event
from geotrack.store import Store

__all__ = [
    "Webhook",
    "backoff",
    "check_webhook_url",
    "default_state_dir",
    "idempotency_key",
    "webhook_display",
]

log = logging.getLogger("geotrack.relay")


def idempotency_key(event: Event) -> str:
    """``device/fence/ts/type``, each part percent-encoded: the transition's identity.

    The store keeps one event per (device, fence, ts, type), so this names it whichever
    relay decided it and however often it is sent.
    """
    return "/".join(quote(part, safe=":") for part in event.key)


def webhook_display(url: str) -> str:
    """``url`` without credentials, query or fragment: what logs and /metrics show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_webhook_url(url: str) -> None:
    """InvalidParameter (``--webhook``) unless ``url`` is an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:
        raise InvalidParameter("--webhook", f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise InvalidParameter(
            "--webhook",
            f"expected an http(s)://HOST[:PORT]/PATH URL, got {webhook_display(url)!r}",
        )


def default_state_dir() -> Path:
    """Where webhook cursors live unless ``--webhook-state`` says: ``$XDG_STATE_HOME``'s
    ``geotrack/webhooks`` (``~/.local/state/geotrack/webhooks``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "geotrack" / "webhooks"


def backoff(attempt: int, low: float, high: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): doubling from ``low``, capped
    at ``high``, with up to a quarter less at random so relays do not retry in step."""
    delay: float = min(high, low * 2.0 ** min(attempt, 62))
    return delay * (0.75 + 0.25 * random.random())


class Webhook:
    """One ``--webhook`` URL: its cursor file, its counters and its delivery task."""

    def __init__(self, url: str, store: Store, state_dir: Path) -> None:
        self.url = url
        self.display = webhook_display(url)
        identity = f"{store.display_url}\n{url}".encode()
        self.state_file = state_dir / f"{hashlib.sha256(identity).hexdigest()[:24]}.json"
        self._store_url = store.display_url
        #: Events delivered (answered 2xx), and attempts that failed.
        self.delivered = 0
        self.failed = 0
        #: Failed attempts in a row now (0 while delivering).
        self.failing = 0
        #: Where delivery has got to (a feed cursor, or Unix ms of store time), and what
        #: the cursor file holds.
        self.cursor: str | int | None = None
        self.saved: str | int | None = None
        self._last_log = -float("inf")
        self._unlogged = 0
        self._saving = threading.Lock()

    def load_cursor(self) -> str | int | None:
        """The saved cursor (or store time, Unix ms), None when there is none."""
        try:
            document = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise GeotrackError(
                f"cannot read the cursor of webhook {self.display} from {self.state_file}: "
                f"{exc.strerror or exc}"
            ) from None
        except ValueError as exc:
            raise GeotrackError(
                f"cannot read the cursor of webhook {self.display} from {self.state_file}: "
                f"{exc}; delete the file to start with new events"
            ) from None
        cursor = document.get("cursor") if isinstance(document, dict) else None
        if not isinstance(cursor, (str, int)) or isinstance(cursor, bool):
            raise GeotrackError(
                f"{self.state_file} holds no cursor of webhook {self.display}; delete the "
                "file to start with new events"
            )
        self.cursor = self.saved = cursor
        return cursor

    def save_cursor(self) -> None:
        """Write the cursor (atomically: a new file renamed over the old) if it moved.

        Called from worker threads; one save at a time.
        """
        with self._saving:
            cursor = self.cursor
            if cursor is None or cursor == self.saved:
                return
            document = {"webhook": self.display, "store": self._store_url, "cursor": cursor}
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            # Its own temporary name: two relays on one machine may share the directory.
            temporary = self.state_file.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(document) + "\n", encoding="utf-8")
            os.replace(temporary, self.state_file)
            self.saved = cursor

    def failure(self, reason: str, interval: float) -> None:
        """Count a failed attempt; log it unless one was logged less than ``interval`` ago."""
        self.failed += 1
        self.failing += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= interval:
            more = f" ({self._unlogged} failed attempts since the last report)"
            log.warning(
                "webhook %s: %s; retrying%s",
                self.display,
                reason,
                more if self._unlogged > 1 else "",
            )
            self._last_log = now
            self._unlogged = 0

    def success(self) -> None:
        """Count a delivery; say so when it ends a run of failures."""
        if self.failing:
            log.info(
                "webhook %s: delivering again after %d failed attempts",
                self.display,
                self.failing,
            )
        self.delivered += 1
        self.failing = 0
        self._unlogged = 0
        self._last_log = -float("inf")
