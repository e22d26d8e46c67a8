"""Running a relay as a service: start, wait for SIGINT/SIGTERM, stop cleanly, report.

:func:`serve` is what ``geotrack serve`` calls once it has a store and a
:class:`~geotrack.relay.config.RelayConfig`; a program embedding the relay calls the same
(uvicorn's ``Server.serve`` plays this part there). It logs the start-up lines, the
warning for addresses reachable without ``--auth``, and the shutdown summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from geotrack.relay.config import RelayConfig
from geotrack.relay.retention import Retention
from geotrack.relay.server import Counters, Relay
from geotrack.store import Store

if TYPE_CHECKING:
    from geotrack.relay.fencing import Fencing
    from geotrack.relay.http import HttpListener
    from geotrack.relay.mqtt import MqttBridge
    from geotrack.relay.webhooks import Webhooks

__all__ = ["STOP_SIGNALS", "serve"]

log = logging.getLogger("geotrack.relay")

#: The signals that stop a relay run by :func:`serve`.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve(
    store: Store,
    config: RelayConfig,
    stop: asyncio.Event | None = None,
    started: Callable[[Relay, HttpListener | None], None] | None = None,
) -> Counters:
    """Run a relay (and its HTTP listener, with ``config.http_port``) until told to stop.

    It stops on SIGINT or SIGTERM, or when ``stop`` is set: what is in flight is stored
    and acked, clients are closed with 1001. Returns the relay's counters. Raises
    RelayError when an address cannot be bound (nothing is left running then).
    ``started`` is called once everything listens (``serve --workers`` wires a worker
    to its siblings there).
    """
    stop = stop or asyncio.Event()
    relay = Relay(store, config)
    for address in config.open_addresses():
        log.warning(
            "listening on %s without --auth: anyone who can reach it may publish and "
            "subscribe (see docs/operations.md)",
            address,
        )
    # Before the relay stores anything: a first start delivers every event from then on.
    webhooks = await _start_webhooks(store, config)
    try:
        await relay.start()
        fencing = await _start_fencing(relay, config)
    except BaseException:
        if webhooks is not None:
            await webhooks.stop()
        raise
    listener = None
    if config.http_port is not None:
        from geotrack.relay.http import HttpListener

        listener = HttpListener(relay, config.http_address, config.http_port, config.tokens)
        listener.fences = fencing
        listener.webhooks = webhooks
        try:
            await listener.start()
        except BaseException:
            await relay.stop()
            if fencing is not None:
                await fencing.stop()
            if webhooks is not None:
                await webhooks.stop()
            raise
    bridges = await _start_mqtt(relay, config)
    if listener is not None:
        listener.mqtt = bridges
    with _signals_set(stop), _reload_on_sighup(fencing):
        log.info("geotrack relay listening on %s (store %s)", relay.url, store.display_url)
        log.info("publish to %s/publish, subscribe at %s/subscribe", relay.url, relay.url)
        if listener is not None:
            log.info("HTTP on %s: devices at / and /owntracks, REST at /api", listener.url)
        retention = _start_retention(store, config)
        if started is not None:
            started(relay, listener)
        await stop.wait()
        log.info("stopping: storing and acking what is in flight")
        if retention is not None:
            await retention.stop()  # after the batch in progress
        # First: a message taken is stored and acked to its broker, one not taken stays
        # with the broker, which sends it again after the restart.
        for bridge in bridges:
            await bridge.stop()
        if listener is not None:
            await listener.stop()  # before the relay: what it accepted still gets stored
        await relay.stop()
        if fencing is not None:
            await fencing.stop()  # after the relay: every committed position is evaluated
        if webhooks is not None:
            await webhooks.stop()  # last; what is undelivered goes at the next start
    c = relay.counters
    log.info("stopped: %d stored, %d duplicates, %d rejected", c.stored, c.duplicates, c.rejected)
    return c


async def _start_mqtt(relay: Relay, config: RelayConfig) -> list[MqttBridge]:
    """A started bridge per ``--mqtt`` broker (docs/mqtt.md); they connect in the background."""
    if not config.mqtt_brokers:
        return []
    import socket

    from geotrack.relay.mqtt import MqttBridge
    from geotrack.relay.mqtt_messages import client_ids

    # Stable across restarts: the broker keeps the session (and its queue) under the id.
    stable = (socket.gethostname(), relay.store.display_url, config.port)
    ids = client_ids(config.mqtt_brokers, config.mqtt_client_id, stable)
    bridges = [
        MqttBridge(
            relay,
            broker,
            client_id=client_id,
            json_filter=config.mqtt_json_filter,
            retained=config.mqtt_retained,
            publish=config.mqtt_publish,
            tls=config.mqtt_tls,
        )
        for broker, client_id in zip(config.mqtt_brokers, ids, strict=True)
    ]
    for bridge in bridges:
        await bridge.start()
        log.info("MQTT: subscribing to %s as %s", bridge.broker.url, bridge.client_id)
    return bridges


async def _start_webhooks(store: Store, config: RelayConfig) -> Webhooks | None:
    """With ``--webhook``, started :class:`Webhooks` (each resumes from its saved cursor)."""
    if not config.webhooks:
        return None
    from geotrack.relay.webhooks import Webhooks

    webhooks = Webhooks(store, config.webhooks, config.webhook_state)
    await webhooks.start()
    for hook in webhooks.hooks:
        log.info("webhook: POSTing every stored event to %s", hook.display)
    return webhooks


async def _start_fencing(relay: Relay, config: RelayConfig) -> Fencing | None:
    """With ``--fences``, a started :class:`Fencing` fed by every stored position."""
    if config.fences is None:
        return None
    from geotrack.relay.fencing import Fencing

    try:
        return await Fencing.attach(relay)
    except BaseException:
        await relay.stop()
        raise


@contextlib.contextmanager
def _reload_on_sighup(fencing: Fencing | None) -> Iterator[None]:
    """SIGHUP rereads the fences file while inside (when there is one)."""
    loop = asyncio.get_running_loop()
    if fencing is None or not hasattr(signal, "SIGHUP"):
        yield
        return
    tasks: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        log.info("SIGHUP: reloading the fences from %s", fencing.path)
        task = loop.create_task(fencing.reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def _start_retention(store: Store, config: RelayConfig) -> Retention | None:
    """With ``--retain``, a started :class:`Retention` (it checks now, then periodically)."""
    if config.retain is None:
        return None
    retention = Retention(store, config.retain, config.retain_every)
    log.info(
        "retention: deleting fixes older than %s now and every %s",
        _age(config.retain),
        _age(config.retain_every),
    )
    retention.start()
    return retention


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` while inside (where the loop can take signals)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no support
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
