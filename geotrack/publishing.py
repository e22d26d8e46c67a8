"""Publishing a source to a relay from start to end: what ``geotrack publish`` runs.

:func:`publish` connects (waiting for a relay that is not up yet), plays the source at its
pace, waits for the last acks and closes. Ctrl-C (SIGINT) stops the sending: the
positions already sent get up to ``drain_for`` seconds to be acknowledged, so the report
says exactly what the relay holds; a second Ctrl-C stops waiting. The
:class:`PublishOutcome` it returns says what happened in words a person reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from geotrack._text import plural
from geotrack.client import Backoff, Publisher, PublishStats, RelayUnreachable
from geotrack.errors import InvalidParameter
from geotrack.player import Source, play
from geotrack.schema import MAX_BATCH

__all__ = ["PublishConfig", "PublishOutcome", "client_tls", "publish"]

#: Rejection lines an outcome shows; the rest are counted in one "… and N more" line.
SHOWN_ERRORS: Final = 10

Notify = Callable[[str], None]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """Where and how to publish; checks itself when made.

    ``retry_for`` seconds bound both the wait for a relay that is not up yet and each
    reconnection after a lost connection (0: neither). ``drain_for`` seconds bound the
    wait for acks after an interrupt.
    """

    url: str = "ws://127.0.0.1:8765"
    token: str | None = None
    cafile: Path | None = None
    speed: float = 1.0
    batch: int = MAX_BATCH
    window: int = 32
    retry_for: float = 300.0
    drain_for: float = 5.0
    open_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.speed < 0:
            raise InvalidParameter("--speed", "must be 0 (as fast as possible) or more")
        if not 1 <= self.batch <= MAX_BATCH:
            raise InvalidParameter("--batch", f"must be within 1..{MAX_BATCH}")
        if self.window < 1:
            raise InvalidParameter("--window", "must be at least 1")
        if self.retry_for < 0:
            raise InvalidParameter("--retry-for", "must be 0 (no retrying) or more")

    def publisher(self) -> Publisher:
        """A publisher for this configuration (not connected yet)."""
        return Publisher(
            self.url,
            window=self.window,
            open_timeout=self.open_timeout,
            token=self.token,
            ssl_context=client_tls(self.url, self.cafile),
            reconnect=self.retry_for > 0,
            backoff=Backoff(give_up_after=self.retry_for),
        )


def client_tls(url: str, cafile: Path | None = None) -> ssl.SSLContext | None:
    """The TLS context for a ``wss://`` URL (None for ``ws://``).

    Without ``cafile`` it trusts the system's store, as OpenSSL finds it: the
    ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` environment variables, when set, name it.
    """
    if not url.startswith("wss:"):
        return None
    try:
        return ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidParameter("--cafile", f"cannot load {cafile}: {reason}") from None


@dataclass(slots=True)
class PublishOutcome:
    """What a run of :func:`publish` did."""

    stats: PublishStats
    elapsed: float
    #: Stopped by Ctrl-C (or SIGINT) before the source was done.
    interrupted: bool = False
    #: Positions sent whose ack never came (after an interrupt, or a failure).
    unacked: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """The relay rejected something."""
        return bool(self.stats.rejected or self.stats.errors)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 130 if self.interrupted else 0

    @property
    def summary(self) -> str:
        """One line: ``120 sent, 118 stored, 1 duplicate, 1 rejected in 2.0 s``."""
        s = self.stats
        return (
            f"{s.sent} sent, {s.stored} stored, {plural(s.duplicates, 'duplicate')}, "
            f"{s.rejected} rejected in {self.elapsed:.1f} s"
        )

    @property
    def details(self) -> list[str]:
        """The lines under the summary: each rejection (the first few), what was not acked."""
        s = self.stats
        lines = [*s.errors[:SHOWN_ERRORS], *s.rejections]
        more = max(0, len(s.errors) - SHOWN_ERRORS) + s.more_rejections
        if more:
            lines.append(f"… and {more} more")
        if self.unacked:
            verb = "was" if self.unacked == 1 else "were"
            lines.append(f"{plural(self.unacked, 'position')} {verb} not acknowledged")
        return lines


def publish(
    source: Source,
    config: PublishConfig,
    *,
    on_sent: Callable[[PublishStats], None] | None = None,
    notify: Notify | None = None,
    loop_factory: LoopFactory | None = None,
) -> PublishOutcome:
    """Publish ``source`` to the relay of ``config`` and say how it went.

    Runs its own event loop (from ``loop_factory``) and owns SIGINT while it runs.
    ``on_sent`` is called after each frame is sent, ``notify`` with each line a person
    should see while it runs (waiting for the relay, the interrupt). Raises RelayError
    when the relay cannot be reached or is lost for longer than ``retry_for``.
    """
    say = notify if notify is not None else (lambda line: None)
    run = _Run(source, config, on_sent, say)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(run.main())
        except KeyboardInterrupt:  # no signal handlers here (not the main thread, Windows)
            run.interrupted = True
    stats = run.publisher.stats
    return PublishOutcome(
        stats,
        time.monotonic() - run.started,
        interrupted=run.interrupted,
        unacked=stats.sent - stats.acked,
    )


class _Run:
    """One run of :func:`publish`: the publisher, the interrupt and the drain."""

    def __init__(
        self,
        source: Source,
        config: PublishConfig,
        on_sent: Callable[[PublishStats], None] | None,
        notify: Notify,
    ) -> None:
        self.source = source
        self.config = config
        self.on_sent = on_sent
        self.notify = notify
        self.publisher = config.publisher()
        self.started = time.monotonic()
        self.interrupted = False
        self.stop = asyncio.Event()  # first Ctrl-C: send nothing more
        self.quit = asyncio.Event()  # second Ctrl-C: wait for nothing more

    def _on_sigint(self) -> None:
        if not self.stop.is_set():
            self.interrupted = True
            self.stop.set()
        else:
            self.quit.set()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        handled = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            handled = True
        try:
            await self._publish()
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGINT)

    async def _publish(self) -> None:
        config, publisher = self.config, self.publisher

        def waiting(exc: RelayUnreachable) -> None:
            self.notify(
                f"waiting for the relay at {exc.url}: {_lower(exc.reason)}; "
                f"retrying for up to {_duration(config.retry_for)}"
            )

        connecting = publisher.connect(wait=config.retry_for > 0, on_wait=waiting)
        connected = await self._until(self.stop, connecting)
        if not connected:
            return
        playing = asyncio.ensure_future(
            play(
                self.source,
                publisher,
                speed=config.speed,
                batch=config.batch,
                on_sent=self._sent,
                stop=self.stop,
            )
        )
        try:
            await self._until(self.stop, playing)
            if not self.stop.is_set():
                return  # played to the end, everything acked
            unacked = publisher.stats.sent - publisher.stats.acked
            if unacked:
                self.notify(
                    f"interrupted: waiting up to {config.drain_for:g} s for the acks of "
                    f"{plural(unacked, 'position')} (Ctrl-C again to stop waiting)"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._until(self.quit, self._drain(playing)), config.drain_for
                )
        finally:
            if not playing.done():
                playing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await playing  # after an interrupt, an error changes nothing in the report
            await publisher.close()

    async def _drain(self, playing: asyncio.Future[bool]) -> None:
        """Wait for the player to stop and for every frame it sent to be acked."""
        with contextlib.suppress(Exception):
            await asyncio.shield(playing)
        with contextlib.suppress(Exception):
            await self.publisher.flush()

    @staticmethod
    async def _until(event: asyncio.Event, work: Awaitable[Any]) -> bool:
        """Await ``work`` unless ``event`` comes first; True if ``work`` finished first.

        A coroutine left unfinished is cancelled; a future is left running (its owner
        decides). What ``work`` raised is raised.
        """
        task = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(event.wait())
        finished = False
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finished = task.done()
        finally:
            waiter.cancel()
            if not task.done() and not isinstance(work, asyncio.Future):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if finished:
            task.result()
        return finished

    def _sent(self, n: int) -> None:
        if self.on_sent is not None:
            self.on_sent(self.publisher.stats)


def _lower(reason: str) -> str:
    return reason[:1].lower() + reason[1:]


def _duration(seconds: float) -> str:
    """``5m``, ``90s``, ``2h``: a duration as people write it."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
