"""The live picture behind ``geotrack watch``: a table of devices, kept current and drawn.

:class:`Board` is the model, with no terminal and no I/O: fed the positions that arrive
and the time they arrived, it knows each device's last fix, its fixes per minute and
whether it has gone stale. :func:`render` draws a board with rich; :func:`watch` runs the
command: it follows a relay's ``/subscribe`` (through :func:`geotrack.client.subscribe`,
which reconnects with ``since=``) or a store's change feed, and redraws a few times a
second, however fast positions come.

Times on the board are wall-clock seconds (``time.time()``): a fix's age compares its
own time with the clock, and staleness compares when its last fix *arrived*, so a replay
of old tracks is live while it plays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from geotrack._text import plural
from geotrack.errors import InvalidParameter, NotATerminal, RelayError
from geotrack.schema import Position

__all__ = [
    "Board",
    "DeviceState",
    "WatchConfig",
    "format_age",
    "format_heading",
    "render",
    "watch",
]

#: Fixes per minute count what arrived in the last minute.
RATE_WINDOW: Final = 60
#: The header's overall rate is over the last ten seconds (or since the start, if sooner).
OVERALL_WINDOW: Final = 10
#: Rows the table itself takes besides the devices: its header and the line under it.
_TABLE_LINES: Final = 2
#: Lines above the table: the title and the status line.
_HEADER_LINES: Final = 2

_COMPASS: Final = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")


class _Counts:
    """Events per whole second over a sliding window of ``window`` seconds."""

    __slots__ = ("_buckets", "_window")

    def __init__(self, window: int) -> None:
        self._window = window
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
        self._trim(second)

    def count(self, now: float) -> int:
        """Events in the window that ends at ``now`` (its current second included)."""
        self._trim(int(now))
        return sum(n for _, n in self._buckets)

    def _trim(self, second: int) -> None:
        buckets = self._buckets
        while buckets and buckets[0][0] <= second - self._window:
            buckets.popleft()


@dataclass(slots=True)
class DeviceState:
    """What the board knows of one device."""

    device: str
    #: Its latest fix (by fix time: a late, older fix does not replace it).
    last: Position
    #: Wall-clock seconds when a fix of it last arrived; for a device known from the store
    #: before watching started, its last fix's time.
    heard: float
    #: Fixes of it that arrived while watching.
    total: int = 0
    _recent: _Counts = field(default_factory=lambda: _Counts(RATE_WINDOW))

    def per_minute(self, now: float) -> int:
        """Fixes of it that arrived in the last minute."""
        return self._recent.count(now)

    def age(self, now: float) -> float:
        """Seconds since its last fix was taken (negative for a fix ahead of this clock)."""
        return now - self.last.ts_ms / 1000

    def stale(self, now: float, after: float) -> bool:
        return now - self.heard > after


class Board:
    """The devices table: fed positions as they arrive, read as rows, most recent first.

    ``stale`` is the seconds without a fix after which a device is stale.
    """

    def __init__(self, stale: float = 120.0, *, started: float | None = None) -> None:
        self.stale = stale
        self.started = time.time() if started is None else started
        #: Fixes that arrived while watching, all devices together.
        self.total = 0
        self._devices: dict[str, DeviceState] = {}
        self._recent = _Counts(OVERALL_WINDOW)

    def __len__(self) -> int:
        return len(self._devices)

    def seed(self, positions: Iterable[Position], now: float) -> None:
        """Add devices known before watching (their last fixes): counted nowhere, heard then."""
        for p in positions:
            heard = min(p.ts_ms / 1000, now)
            state = self._devices.get(p.device)
            if state is None:
                self._devices[p.device] = DeviceState(p.device, p, heard)
            elif p.ts_ms > state.last.ts_ms:
                state.last, state.heard = p, max(state.heard, heard)

    def add(self, positions: Iterable[Position], now: float) -> None:
        """Positions that arrived at ``now``."""
        n = 0
        for p in positions:
            n += 1
            state = self._devices.get(p.device)
            if state is None:
                state = self._devices[p.device] = DeviceState(p.device, p, now)
            elif p.ts_ms >= state.last.ts_ms:
                state.last = p
            state.heard = now
            state.total += 1
            state._recent.add(now)
        if n:
            self.total += n
            self._recent.add(now, n)

    def rows(self) -> list[DeviceState]:
        """Every device, the most recent fix first (then by id)."""
        return sorted(self._devices.values(), key=lambda s: (-s.last.ts_ms, s.device))

    def stale_count(self, now: float) -> int:
        return sum(1 for s in self._devices.values() if s.stale(now, self.stale))

    def rate(self, now: float) -> float:
        """Fixes per second, all devices together, over the last ten seconds."""
        elapsed = now - self.started
        if elapsed < OVERALL_WINDOW:
            return self.total / max(1.0, elapsed)
        return self._recent.count(now) / OVERALL_WINDOW


def format_age(seconds: float) -> str:
    """``12s``, ``4m05s``, ``3h12m``, ``261d``; ``in 3s`` for a fix ahead of the clock."""
    if seconds < 0:
        return "in " + format_age(-seconds)
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


def _duration(seconds: float) -> str:
    """``2m``, ``90s``, ``1h``: a setting, in the words it is given in."""
    s = round(seconds, 3)
    for unit, size in (("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size:.0f}{unit}"
    return f"{s:g}s"


def format_heading(heading: float | None) -> str:
    """``275° W``: degrees and the nearest of eight compass points."""
    if heading is None:
        return ""
    # 359.6 rounds to 360: a compass says 0.
    return f"{round(heading) % 360:3d}° {_COMPASS[round(heading / 45) % 8]}"


def _format_time(ms: int, now: float) -> str:
    """The fix time in UTC: ``21:58:23`` today, ``2026-03-14 09:05`` another day."""
    when = datetime.fromtimestamp(ms / 1000, UTC)
    if when.date() == datetime.fromtimestamp(now, UTC).date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")


def render(
    board: Board,
    now: float,
    *,
    height: int | None = None,
    width: int | None = None,
    source: str = "",
    status: str = "",
    live: bool = True,
) -> RenderableType:
    """The board as a title, a status line and a table fitting in ``height`` lines.

    ``width`` is the terminal's: the columns are closer together in a narrow one.

    When the devices do not fit, the last line says how many more there are. ``live``
    False leaves out what only watching measures (rates, totals): a snapshot.
    """
    rows = board.rows()
    stale = board.stale_count(now)
    title = Text(plural(len(rows), "device"), style="bold")
    if rows:
        title.append(f" ({len(rows) - stale} live, {stale} stale)", style="not bold")
    if live:
        title.append(f" · {plural(board.total, 'fix', 'fixes')}")
        title.append(f" · {board.rate(now):.1f}/s")
    title.append(f" · {datetime.fromtimestamp(now, UTC):%H:%M:%S} UTC", style="dim")
    info = Text(source, style="dim")
    if status:
        info.append(f"  {status}", style="yellow")
    elif live:
        info.append(f"  stale after {_duration(board.stale)} · q or Ctrl-C to quit", style="dim")

    # Numbers keep their width in a narrow terminal; the device id gives way (…).
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        # Two spaces between columns, one where that is what makes them fit (80 columns).
        padding=(0, 1) if width is None or width >= 100 else (0, 0),
        expand=False,
    )
    # Wrapping allowed makes it the column rich narrows first; an id has no spaces, so it
    # is cut with an ellipsis rather than wrapped.
    table.add_column("device", min_width=6, max_width=32, overflow="ellipsis")
    table.add_column("last fix", no_wrap=True, min_width=8)
    table.add_column("age", justify="right", no_wrap=True, min_width=5)
    table.add_column("lat", justify="right", no_wrap=True, min_width=9)
    table.add_column("lon", justify="right", no_wrap=True, min_width=10)
    table.add_column("km/h", justify="right", no_wrap=True, min_width=4)
    table.add_column("heading", no_wrap=True, min_width=7)
    if live:
        table.add_column("/min", justify="right", no_wrap=True, min_width=4)
        table.add_column("total", justify="right", no_wrap=True, min_width=5)

    room = len(rows) if height is None else max(1, height - _HEADER_LINES - _TABLE_LINES)
    shown = rows if len(rows) <= room else rows[: room - 1]
    for s in shown:
        p = s.last
        cells = [
            s.device,
            _format_time(p.ts_ms, now),
            format_age(s.age(now)),
            f"{p.lat:.5f}",
            f"{p.lon:.5f}",
            "" if p.speed is None else f"{p.speed * 3.6:.0f}",
            format_heading(p.heading),
        ]
        if live:
            cells += [str(s.per_minute(now)), str(s.total)]
        table.add_row(*cells, style="dim" if s.stale(now, board.stale) else None)
    parts: list[RenderableType] = [title, info, table]
    if len(shown) < len(rows):
        more = len(rows) - len(shown)
        parts.append(Text(f"… {more} more {'device' if more == 1 else 'devices'}", style="dim"))
    elif not rows:
        parts.append(Text("waiting for positions…", style="dim"))
    return Group(*parts)


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """What to follow and how; checks itself when made.

    Exactly one of ``url`` (a relay, ``ws://`` or ``wss://``, its base URL or its
    ``/subscribe``) and ``store`` (a store URL, which must exist). ``stale`` is seconds.
    """

    url: str | None = None
    store: str | None = None
    devices: tuple[str, ...] = ()
    token: str | None = None
    cafile: Path | None = None
    stale: float = 120.0
    refresh: float = 4.0
    once: bool = False

    def __post_init__(self) -> None:
        if self.url is None and self.store is None:
            raise InvalidParameter("--store", "follow a relay (--url) or a store (--store)")
        if self.url is not None and self.store is not None:
            raise InvalidParameter("--url", "follow a relay (--url) or a store (--store), not both")
        if self.url is not None:
            scheme = urlsplit(self.url).scheme
            if scheme not in ("ws", "wss"):
                raise InvalidParameter(
                    "--url", f"must start with ws:// or wss://, got {self.url!r}"
                )
            if self.once:
                raise InvalidParameter(
                    "--once", "prints what the store holds: use it with --store, not --url"
                )
        if not self.stale > 0:
            raise InvalidParameter("--stale", "must be more than 0")
        if not 0.1 <= self.refresh <= 60:
            raise InvalidParameter("refresh", "must be within 0.1..60 (redraws a second)")

    @property
    def source(self) -> str:
        """What is followed, for the screen: the relay's URL without its query (a token)."""
        if self.url is not None:
            parts = urlsplit(self.url)
            return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return self.store or ""


def watch(
    config: WatchConfig, console: Console | None = None, stop: threading.Event | None = None
) -> None:
    """Run ``geotrack watch``: draw the board on ``console`` until Ctrl-C, SIGTERM or ``stop``.

    Raises NotATerminal when the console is not a terminal (unless ``config.once``:
    then it prints one table of each device's last fix and returns), StoreNotFound for a
    store that does not exist, RelayError when the relay cannot be reached at first or
    refuses the subscription. A relay lost later is resubscribed to, without end.
    """
    console = console if console is not None else Console()
    if config.once:
        _snapshot(config, console)
        return
    if not console.is_terminal:
        raise NotATerminal
    stop = stop if stop is not None else threading.Event()
    screen = _Screen(config, console)
    with _stopping_on_signals(stop), _quitting_on_q(stop), screen.live():
        if config.url is not None:
            asyncio.run(_follow_relay(config, screen, stop))
        else:
            _follow_store(config, screen, stop)


def _snapshot(config: WatchConfig, console: Console) -> None:
    from geotrack.store import open_store

    assert config.store is not None
    with open_store(config.store, create=False) as store:
        now = time.time()
        board = Board(config.stale)
        board.seed(store.latest(config.devices), now)
        display = store.display_url
    console.print(render(board, now, source=display, live=False))


class _Screen:
    """The live display: redraws the board at most ``refresh`` times a second."""

    def __init__(self, config: WatchConfig, console: Console) -> None:
        self.board = Board(config.stale)
        self.source = config.source
        self.status = ""
        self.interval = 1 / config.refresh
        self._console = console
        self._live: Live | None = None
        self._next = 0.0

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        # The whole screen, as top does: the table is redrawn in place and the terminal
        # is given back as it was on the way out.
        with Live(
            console=self._console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            self._live = live
            handler = _StatusHandler(self)
            client_log = logging.getLogger("geotrack.client")
            client_log.addHandler(handler)
            try:
                self.draw()
                yield
            finally:
                client_log.removeHandler(handler)
                self._live = None

    def due(self) -> float:
        """Seconds until the next redraw (0 when it is due)."""
        return max(0.0, self._next - time.monotonic())

    def draw(self) -> None:
        assert self._live is not None
        self._next = time.monotonic() + self.interval
        renderable = render(
            self.board,
            time.time(),
            height=self._console.size.height,
            width=self._console.size.width,
            source=self.source,
            status=self.status,
        )
        self._live.update(renderable, refresh=True)

    def add(self, positions: Iterable[Position]) -> None:
        self.board.add(positions, time.time())
        self.status = ""


class _StatusHandler(logging.Handler):
    """The client's warnings (a lost subscription) shown on the status line, not over it."""

    def __init__(self, screen: _Screen) -> None:
        super().__init__(logging.WARNING)
        self._screen = screen

    def emit(self, record: logging.LogRecord) -> None:
        when = datetime.fromtimestamp(record.created, UTC)
        self._screen.status = f"{when:%H:%M:%S}: {record.getMessage()}"


@contextlib.contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM set ``stop``; the handlers before are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    before = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _quitting_on_q(stop: threading.Event) -> Iterator[None]:
    """While watching, q quits as Ctrl-C does, and keys typed are not echoed over the table.

    Only when standard input is a terminal (and one termios knows); Ctrl-C keeps working
    (the terminal still turns it into SIGINT). The terminal's settings are put back after.
    """
    try:
        import select
        import termios
    except ImportError:  # Windows
        yield
        return
    fd = 0
    try:
        before = termios.tcgetattr(fd) if os.isatty(fd) else None
    except termios.error:
        before = None
    if before is None:
        yield
        return
    quiet = list(before)
    quiet[3] &= ~(termios.ECHO | termios.ICANON)  # lflags: no echo, a key at a time
    quiet[6] = list(before[6])
    quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    done = threading.Event()

    def read_keys() -> None:
        while not done.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    key = os.read(fd, 32)
                except OSError:
                    return
                if not key or b"q" in key.lower():  # keys typed fast come together
                    stop.set()
                    return

    reader = threading.Thread(target=read_keys, name="geotrack-watch-keys", daemon=True)
    reader.start()
    try:
        yield
    finally:
        done.set()
        reader.join(1)
        termios.tcsetattr(fd, termios.TCSANOW, before)


def _follow_store(config: WatchConfig, screen: _Screen, stop: threading.Event) -> None:
    from geotrack.store import open_store

    assert config.store is not None
    with open_store(config.store, create=False) as store:
        screen.source = store.display_url
        # The feed first, then the last fixes: a fix stored in between is in one or both.
        with store.follow(devices=config.devices) as feed:
            screen.board.seed(store.latest(config.devices), time.time())
            while not stop.is_set():
                screen.draw()
                while not stop.is_set() and (wait := screen.due()) > 0:
                    changes = feed.poll(wait)
                    if changes:
                        screen.add(c.position for c in changes)


async def _follow_relay(config: WatchConfig, screen: _Screen, stop: threading.Event) -> None:
    from geotrack.client import Backoff, subscribe
    from geotrack.publishing import client_tls

    assert config.url is not None
    # What is stored from the start on, even before the subscription is open.
    since = f"{screen.board.started:.3f}"
    positions = subscribe(
        config.url,
        config.devices,
        since=since,
        token=config.token,
        ssl_context=client_tls(config.url, config.cafile),
        # A dashboard outlives relay restarts: it resubscribes for as long as it runs.
        backoff=Backoff(cap=10.0, give_up_after=None),
    )
    failure: list[BaseException] = []

    async def receive() -> None:
        try:
            async for batch in positions:
                screen.add(batch)
                # Frames already buffered come without a pause: let the redraw in between.
                await asyncio.sleep(0)
        except RelayError as exc:
            failure.append(_without_since(exc, since))
        else:
            failure.append(RelayError(f"the relay at {config.source} ended the subscription"))

    receiving = asyncio.create_task(receive())
    try:
        while not stop.is_set() and not receiving.done():
            screen.draw()
            await asyncio.sleep(screen.due())
    finally:
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
    if failure and not stop.is_set():
        raise failure[0]


def _without_since(error: RelayError, since: str) -> RelayError:
    """The error without the ``since=`` watch added to the URL: it means nothing to a person."""
    from geotrack.client import RelayUnreachable

    def clean(text: str) -> str:
        return (
            text.replace(f"?since={since}&", "?")
            .replace(f"?since={since}", "")
            .replace(f"&since={since}", "")
        )

    if f"since={since}" not in str(error):
        return error
    if isinstance(error, RelayUnreachable):
        return RelayUnreachable(clean(error.url), error.reason)
    return type(error)(clean(str(error)))
