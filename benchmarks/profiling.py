"""Where a relay's time goes: py-spy attached to the running relay, summarized.

py-spy samples the process from outside (``--nonblocking``: the relay is never paused) and
writes collapsed stacks; this module turns them into the share of samples per thread, the
functions that are on the CPU themselves (self) and those below which the time is spent
(inclusive). Install it with ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_THREAD = re.compile(r"^thread \((\d+)\)(?:: ?(.*))?$")
_RATE = 200


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy recording ``pid`` for ``seconds`` into ``out`` (collapsed stacks)."""

    def __init__(self, pid: int, seconds: float, out: Path) -> None:
        exe = py_spy()
        self.out = out
        self.seconds = seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = "" if exe else "py-spy is not installed (.venv/bin/pip install py-spy)"
        if exe:
            out.parent.mkdir(parents=True, exist_ok=True)
            duration = str(max(1, round(seconds)))
            cmd = [exe, "record", "--pid", str(pid), "--duration", duration, "--rate", str(_RATE)]
            cmd += ["--format", "raw", "--output", str(out), "--nonblocking", "--threads"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self) -> dict[str, Any]:
        """Wait for py-spy and summarize what it recorded."""
        if self.proc is None:
            return {"error": self.error}
        _, err = self.proc.communicate(timeout=self.seconds + 30)
        if self.proc.returncode != 0 or not self.out.exists():
            return {"error": f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"}
        summary = summarize(self.out.read_text(), self.seconds * _RATE)
        summary["file"] = str(self.out)
        return summary


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (file.py)``: lines vary, functions don't."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({Path(file).name})" if file else name


#: Frames under which the interesting work happens: the event loop, a worker thread, an
#: export.
_ANCHORS = ("Runner.run (runners.py)", "_WorkItem.run (thread.py)", "export (__init__.py)")


def summarize(collapsed: str, expected: float, top: int = 12) -> dict[str, Any]:
    """Per busy thread: its share of wall time, its top self and inclusive functions.

    Inclusive counts start below the event loop (or a worker thread's work item), and
    leave out the trunk every sample shares (``main``, the CLI), which says nothing.
    """
    threads: Counter[str] = Counter()
    own: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    lines = [line.rpartition(" ") for line in collapsed.splitlines()]
    # A thread's name shows only once Python knows it: name every sample of that id so.
    names: dict[str, str] = {}
    for stack, _, _ in lines:
        m = _THREAD.match(stack.split(";", 1)[0])
        if m and m.group(2):
            names[m.group(1)] = m.group(2)
    for stack, _, count_text in lines:
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        m = _THREAD.match(frames[0])
        thread = names.get(m.group(1), f"thread {m.group(1)}") if m else "?"
        frames = [_function(f) for f in frames[1:]] if m else [_function(f) for f in frames]
        threads[thread] += count
        if not frames:
            continue
        own.setdefault(thread, Counter())[frames[-1]] += count
        for anchor in _ANCHORS:
            if anchor in frames:
                frames = frames[frames.index(anchor) + 1 :]
        for name in set(frames):
            inclusive.setdefault(thread, Counter())[name] += count
    out: list[dict[str, Any]] = []
    for thread, total in threads.most_common():
        busy = 100 * total / max(expected, 1)
        if busy < 5 and out:
            continue

        def shares(counter: Counter[str], trunk: bool, total: int = total) -> list[list[Any]]:
            items = [(n, c) for n, c in counter.most_common() if trunk or c < 0.95 * total]
            return [[name, round(100 * n / total, 1)] for name, n in items[:top]]

        out.append(
            {
                "thread": thread,
                "busy_pct": round(busy, 1),
                "self_pct": shares(own.get(thread, Counter()), trunk=True),
                "inclusive_pct": shares(inclusive.get(thread, Counter()), trunk=False),
            }
        )
    return {"threads": out}
