"""MQTT ingestion: a relay's subscription to a broker, acked only after the store commit.

One :class:`MqttBridge` per ``--mqtt`` URL. It holds a persistent session (a stable client
id, no clean session) subscribed at QoS 1, so the broker keeps what is published while
the relay is away and sends it when it is back. Every message goes through
:meth:`Relay.submit <geotrack.relay.server.Relay.submit>` like a WebSocket frame (dedupe,
group commit, fan-out), and its PUBACK leaves only once that commit is done: a message
whose positions are not stored is never acked, and the broker sends it again after the
next connect (the store's dedupe on device and time drops what was stored already). With
``--mqtt-publish`` it also publishes every position this relay stores.

The client is paho-mqtt 2.x, its ``loop_forever`` run in a thread of ours; its
callbacks hand everything to the event loop with ``call_soon_threadsafe``. paho is the one
Python client whose public API acknowledges a message when the application says so
(``manual_ack=True`` and ``Client.ack``); aiomqtt (built on paho) acks as soon as a
message is read, and gmqtt defers the ack only over MQTT 5 and answers a failure with an
error PUBACK, which makes the broker drop the message. docs/mqtt.md says more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from geotrack.client import Backoff
from geotrack.relay.metrics import Family
from geotrack.relay.mqtt_messages import Broker, Outcome, default_client_id, read_message
from geotrack.schema import Ack, Position, encode_position

if TYPE_CHECKING:
    from geotrack.relay.server import Relay

__all__ = ["MqttBridge", "mqtt_families"]

log = logging.getLogger("geotrack.relay")

#: Seconds between keepalive pings: how soon a silent broker is noticed (1.5 times this).
KEEPALIVE: Final = 30
#: Forwarded positions paho keeps while the broker is away; past that they are dropped.
FORWARD_QUEUE: Final = 100_000
#: Seconds stop() waits for what was taken to be committed and acked.
DRAIN_TIMEOUT: Final = 15.0
#: Rejected messages logged per minute and broker; the rest are counted in /metrics.
REJECTIONS_LOGGED: Final = 10

_T = TypeVar("_T")


@dataclass(slots=True)
class _Taken:
    """A message taken for the store: acked, in arrival order, once its commit is done."""

    connection: int
    mid: int
    qos: int
    stored: asyncio.Future[Ack] | None


class MqttBridge:
    """A relay's subscription to one broker, with an optional forwarding of what it stores.

    ``start()`` returns at once; the bridge connects, and reconnects after a loss with the
    same capped, jittered backoff as the clients. ``stop()`` stops taking messages, acks
    those already stored and disconnects (the session stays on the broker).
    """

    def __init__(
        self,
        relay: Relay,
        broker: Broker,
        *,
        client_id: str | None = None,
        json_filter: str | None = None,
        retained: bool = False,
        publish: str | None = None,
        tls: ssl.SSLContext | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.relay = relay
        self.broker = broker
        self.client_id = client_id or default_client_id(
            socket.gethostname(), relay.store.display_url, relay.config.port
        )
        self.json_filter = json_filter
        self.retained = retained
        self.publish_template = publish
        self.backoff = backoff or Backoff(give_up_after=None)
        #: Whether the broker accepted the connection and it has not been lost since.
        self.connected = False
        #: Why the last connection attempt failed or the connection was lost, if it was.
        self.last_error: str | None = None
        #: Messages received, by what became of them.
        self.messages: Counter[Outcome] = Counter()
        self.forwarded = 0
        self.forward_dropped = 0
        if tls is not None:
            # paho leaves the socket of a failed TLS handshake open (a ResourceWarning per
            # retry); sockets of this class close themselves then.
            tls.sslsocket_class = _ClosingOnFailure
        self._tls = tls
        self._client = self._make_client()
        self._connection = 0  # counts connections: acks of an older one are never sent
        self._taken: deque[_Taken] = deque()
        self._stopping = False
        self._wake = asyncio.Event()
        self._in_loop = False
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._logged: deque[float] = deque()
        self._unsent: list[Position] = []
        self._session_present = False  # set by paho's thread before it calls _on_subscribe
        self._commit_failed = False

    def _make_client(self) -> Client:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # the broker keeps our subscription and queue meanwhile
            protocol=MQTTv311,
            reconnect_on_failure=False,  # reconnecting is ours, with our backoff
            manual_ack=True,
        )
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.max_queued_messages_set(FORWARD_QUEUE)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        # paho's network thread is one of ours running loop_forever. With this hook set,
        # paho hands what the event loop sends (acks, publishes) to that thread instead
        # of writing to the socket from the event loop's thread, racing it.
        client.on_socket_register_write = _no_op
        return client

    async def start(self) -> None:
        """Start connecting (in the background) and forwarding with ``--mqtt-publish``."""
        self.relay.counters.transport("mqtt")
        if self.publish_template is not None:
            self.relay.stored_hooks.append(self._forward)
        self._task = asyncio.create_task(self._run(), name=f"geotrack-mqtt {self.broker.url}")

    async def stop(self) -> None:
        """Ack what is stored, leave the rest to the broker's redelivery, disconnect."""
        self._stopping = True
        self._wake.set()
        if self._forward in self.relay.stored_hooks:
            self.relay.stored_hooks.remove(self._forward)
        pending = [t.stored for t in self._taken if t.stored is not None]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
        self._flush()
        if self._in_loop:
            self._client.disconnect()  # after the PUBACKs: paho sends its packets in order
        if self._task is not None:
            await self._task

    # -- the connection ---------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await _in_thread(
                    self._client.connect, self.broker.host, self.broker.port, KEEPALIVE
                )
            except Exception as exc:  # refused, unreachable, TLS, bad address...
                self.last_error = _describe(exc)
                log.warning("MQTT broker %s: cannot connect (%s)", self.broker.url, self.last_error)
            else:
                self._in_loop = True
                if self._stopping:
                    self._client.disconnect()
                if self._unsent:
                    unsent, self._unsent = self._unsent, []
                    self._forward(unsent)
                # Until the connection ends: lost, refused or disconnect() from stop().
                try:
                    await _in_thread(self._client.loop_forever)
                except Exception as exc:  # paho raising from its loop must not end ours
                    self.last_error = _describe(exc)
                self._in_loop = False
                self._connection += 1  # what was taken and not yet acked is sent again
                self._taken.clear()
                # A connection that worked restarts the backoff, unless it was dropped for
                # a failed commit: then the store is what needs time.
                if self.connected:
                    if not self._commit_failed:
                        attempt = 0
                    self.connected = False
                    if not self._stopping:
                        log.warning(
                            "MQTT broker %s: connection lost (%s); reconnecting",
                            self.broker.url,
                            self.last_error,
                        )
            self._commit_failed = False
            if self._stopping:
                break
            await self._sleep(self.backoff.delay(attempt))
            attempt += 1
        log.info("MQTT broker %s: disconnected", self.broker.url)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)

    # paho's callbacks run in its network thread: they only hand over to the event loop.

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._loop.call_soon_threadsafe(self._refused, str(reason))
            return
        filters = [self.broker.topic_filter]
        if self.json_filter is not None and self.json_filter not in filters:
            filters.append(self.json_filter)
        # Every time, not only without a session: the filters may have changed since.
        client.subscribe([(f, 1) for f in filters])
        self._session_present = flags.session_present

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            reason = ", ".join(map(str, reasons))
            what = "the subscription (check its ACL for this user)"
            self._loop.call_soon_threadsafe(self._refused, reason, what)
        else:
            self._loop.call_soon_threadsafe(self._accepted, self._session_present)

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self._lost, str(reason))

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(
            self._received, message.topic, message.payload, message.retain, message.qos,
            message.mid,
        )  # fmt: skip

    def _accepted(self, session_present: bool) -> None:
        self.connected = True
        self.last_error = None
        log.info(
            "MQTT broker %s: connected as %s (%s)",
            self.broker.url,
            self.client_id,
            "session resumed" if session_present else "new session",
        )

    def _refused(self, reason: str, what: str = "the connection") -> None:
        self.last_error = f"refused: {reason}"
        log.error("MQTT broker %s refused %s: %s", self.broker.url, what, reason)

    def _lost(self, reason: str) -> None:
        if self.last_error is None:
            self.last_error = reason

    # -- messages ---------------------------------------------------------------------

    def _received(
        self, topic: str, payload: bytes | bytearray, retain: bool, qos: int, mid: int
    ) -> None:
        if self._stopping:
            return  # not taken, not acked: the broker sends it again next time
        reading = read_message(
            topic,
            bytes(payload),
            retain=retain,
            json_filter=self.json_filter,
            retained=self.retained,
            max_batch=self.relay.config.max_batch,
        )
        self.messages[reading.outcome] += 1
        if reading.outcome is Outcome.REJECTED:
            self._log_rejected(topic, reading.rejected[0].error)
        stored = None
        if reading.positions or reading.rejected:
            stored = self.relay.submit(reading.positions, reading.rejected, "mqtt")
        if qos > 0:
            self._taken.append(_Taken(self._connection, mid, qos, stored))
        if stored is not None and not stored.done():
            stored.add_done_callback(self._committed)
        else:
            self._flush()

    def _committed(self, stored: asyncio.Future[Ack]) -> None:
        if not stored.cancelled():
            stored.exception()  # retrieved here; _flush decides what it means
        self._flush()

    def _flush(self) -> None:
        """Ack, in arrival order as MQTT wants, every message at the head that is stored."""
        taken = self._taken
        while taken and (taken[0].stored is None or taken[0].stored.done()):
            head = taken.popleft()
            if head.connection != self._connection:
                continue
            if head.stored is not None and (
                head.stored.cancelled() or head.stored.exception() is not None
            ):
                # Not stored, so not acked; nor is anything after it, which the broker
                # sends again after a reconnect (the store drops what it already has).
                log.error(
                    "MQTT broker %s: store write failed, reconnecting to have the broker "
                    "send the unacked messages again",
                    self.broker.url,
                )
                taken.clear()
                self.last_error = "store write failed"
                self._commit_failed = True
                self._client.disconnect()
                return
            self._client.ack(head.mid, head.qos)

    def _log_rejected(self, topic: str, reason: str) -> None:
        now = time.monotonic()
        while self._logged and now - self._logged[0] > 60:
            self._logged.popleft()
        if len(self._logged) < REJECTIONS_LOGGED:
            self._logged.append(now)
            log.warning("MQTT message on %s rejected: %s", topic[:200], reason[:300])

    # -- forwarding -------------------------------------------------------------------

    def _forward(self, positions: list[Position]) -> None:
        # Between connections paho has no network thread and would write from this one,
        # racing the connect: positions wait here until the next connection instead.
        if not self._in_loop:
            room = FORWARD_QUEUE - len(self._unsent)
            self._unsent.extend(positions[:room])
            self.forward_dropped += max(0, len(positions) - room)
            return
        template = self.publish_template or "{device}"
        for position in positions:
            info = self._client.publish(
                template.format(device=position.device), encode_position(position), qos=1
            )
            # Queued by paho while the broker is away (and sent after the reconnect), up
            # to FORWARD_QUEUE; past that it is dropped and counted.
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self.forward_dropped += 1
            else:
                self.forwarded += 1

    # -- reporting --------------------------------------------------------------------

    def health(self) -> str:
        """One line for /healthz: the broker and whether it is connected."""
        state = "connected" if self.connected else f"disconnected ({self.last_error or '...'})"
        return f"mqtt {self.broker.url}: {state}"


def mqtt_families(bridges: list[MqttBridge]) -> list[Family]:
    """The /metrics families of the MQTT bridges."""
    connected = Family(
        "geotrack_mqtt_connected", "gauge", "1 while connected to the MQTT broker, else 0."
    )
    messages = Family(
        "geotrack_mqtt_messages_total",
        "counter",
        "MQTT messages received, by outcome (positions, ignored, retained, rejected).",
    )
    forwarded = Family(
        "geotrack_mqtt_forwarded_total",
        "counter",
        "Positions published with --mqtt-publish, by result (queued, dropped).",
    )
    for bridge in bridges:
        url = bridge.broker.url
        connected.add(int(bridge.connected), broker=url)
        for outcome in Outcome:
            messages.add(bridge.messages[outcome], broker=url, outcome=outcome.value)
        if bridge.publish_template is not None:
            forwarded.add(bridge.forwarded, broker=url, result="queued")
            forwarded.add(bridge.forward_dropped, broker=url, result="dropped")
    return [connected, messages, forwarded]


class _ClosingOnFailure(ssl.SSLSocket):
    """A TLS socket that closes itself when its handshake fails."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _no_op(*args: object) -> None:
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message}): give its CA with --cafile"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


async def _in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking paho call in a daemon thread (a hung one must not stop the exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def run() -> None:
        try:
            result = function(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name="geotrack-mqtt", daemon=True).start()
    return await done


def _settle(future: asyncio.Future[_T], result: _T | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
