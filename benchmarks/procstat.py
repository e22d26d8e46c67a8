"""What the kernel knows about a process: CPU time and memory, from /proc."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds of a process (all threads) and of its main thread, at one moment."""

    at: float
    total: float
    main: float


def _stat_cpu(path: Path) -> float:
    text = path.read_text()
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu(pid: int) -> CpuSample:
    """utime+stime of the process and of its main thread (the thread whose id is the pid).

    The total includes the process's children (``serve --workers``: the workers of a
    supervisor that serves nothing itself); ``main`` is the process's own main thread.
    """
    base = Path(f"/proc/{pid}")
    total = _stat_cpu(base / "stat") + sum(map(_child_cpu, _children(pid)))
    return CpuSample(time.monotonic(), total, _stat_cpu(base / "task" / str(pid) / "stat"))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # no such process, or a kernel without CONFIG_PROC_CHILDREN
        return []


def _child_cpu(pid: int) -> float:
    try:
        return _stat_cpu(Path(f"/proc/{pid}/stat"))
    except OSError:  # exited between the listing and now
        return 0.0


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (``VmHWM``, ``VmRSS``), in KiB; 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # leave out guest time, already counted in user
    return float(total - idle), float(total)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"
