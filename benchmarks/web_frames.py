"""``python -m benchmarks.web_frames``: the web map's frame times with 1,000 moving devices.

A relay (``geotrack serve --http-port --tiles none``, fresh SQLite file, free ports), a
publisher simulating the devices (``geotrack publish --simulate 1000 --rate 1``), and the
page open in headless chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
selenium). After a warm-up the page's frames are timed in the browser itself: the deltas
between ``requestAnimationFrame`` callbacks over ``--seconds``, their p50/p95/p99 and the
frames longer than 50 ms, with the renderer's own busy time (CDP ``Performance.getMetrics``)
and the page's JS heap. Headless chromium draws in software: no GPU here.

Examples::

    .venv/bin/python -m benchmarks.web_frames                  # 1,000 devices, 20 s
    .venv/bin/python -m benchmarks.web_frames --devices 100 --seconds 10 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import procstat

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LONG_FRAME_MS = 50.0

# Installed in the page before the measured window: every animation frame's time.
_RECORDER = """
window.__frames = [];
window.__recording = true;
const tick = (t) => {
    window.__frames.push(t);
    if (window.__recording) requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
"""

_METRICS = (
    "TaskDuration",
    "ScriptDuration",
    "LayoutDuration",
    "RecalcStyleDuration",
    "JSHeapUsedSize",
    "JSHeapTotalSize",
    "Nodes",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the relay exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


@contextlib.contextmanager
def _process(args: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "geotrack", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _chromium(profile: Path, width: int, height: int) -> Any:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise SystemExit(
            f"{' and '.join(missing)} missing: apt-get install -y chromium chromium-driver"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-precise-memory-info",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _metrics(driver: Any) -> dict[str, float]:
    found = driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return {m["name"]: float(m["value"]) for m in found if m["name"] in _METRICS}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _wait(driver: Any, script: str, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = driver.execute_script(script)
            if value:
                return value
        time.sleep(0.2)
    raise SystemExit(f"gave up waiting {timeout} s for {what}")


def measure(devices: int, seconds: float, warmup: float, width: int, height: int) -> dict[str, Any]:
    """Run relay, publisher and page; time the page's frames; return the figures."""
    with tempfile.TemporaryDirectory(prefix="geotrack-web-frames-") as tmp:
        work = Path(tmp)
        port, http_port = _free_port(), _free_port()
        serve = [
            "serve", "--port", str(port), "--http-port", str(http_port), "--tiles", "none",
            "--store", f"sqlite:///{work / 'bench.db'}", "--stats-interval", "0", "--quiet",
        ]  # fmt: skip
        with _process(serve, work, work / "relay.log") as relay:
            _wait_listening(port, relay)
            _wait_listening(http_port, relay)
            publish = [
                "publish", "--simulate", str(devices), "--rate", "1", "--seed", "1",
                "--url", f"ws://127.0.0.1:{port}", "--center", "52.52,13.40",
                "--radius", "3000", "--device", "bus",
            ]  # fmt: skip
            with _process(publish, work, work / "publish.log") as publisher:
                driver = _chromium(work / "profile", width, height)
                try:
                    driver.set_script_timeout(seconds + 30)
                    driver.get(f"http://127.0.0.1:{http_port}/")
                    _wait(
                        driver,
                        "return window.geotrack && window.geotrack.connected()",
                        "the page to be live",
                        30,
                    )
                    # Every simulated device on screen: the worst case for drawing.
                    _wait(
                        driver,
                        f"return Object.keys(window.geotrack.devices()).length >= {devices}",
                        f"{devices} devices on the page",
                        30 + devices / 50,
                    )
                    driver.execute_script(
                        "window.geotrack.map.setView([52.52, 13.40], 13, {animate: false})"
                    )
                    time.sleep(warmup)
                    driver.execute_cdp_cmd("Performance.enable", {})
                    before = _metrics(driver)
                    cpu_before = procstat.machine_busy()
                    relay_before = procstat.cpu(relay.pid)
                    driver.execute_script(_RECORDER)
                    time.sleep(seconds)
                    frames = driver.execute_script(
                        "window.__recording = false; return window.__frames;"
                    )
                    after = _metrics(driver)
                    cpu_after = procstat.machine_busy()
                    relay_after = procstat.cpu(relay.pid)
                    heap = driver.execute_script(
                        "return performance.memory ? performance.memory.usedJSHeapSize : null"
                    )
                    page = driver.execute_script(
                        """
                        const devices = window.geotrack.devices();
                        const now = Date.now();
                        const ids = Object.keys(devices);
                        const age = (id) => now - Date.parse(devices[id].ts);
                        return {
                            devices: ids.length,
                            fresh: ids.filter((id) => age(id) < 5000).length,
                            markers: document.querySelectorAll('#map .gt-marker').length,
                            // Trails on a canvas have no element: the page says what it drew.
                            trails: window.geotrack.trail
                                ? ids.filter((id) => window.geotrack.trail(id)?.length).length
                                : document.querySelectorAll('#map .gt-trail').length,
                            rows: document.querySelectorAll('#devices li[data-device]').length,
                        };
                        """
                    )
                finally:
                    driver.quit()
                if publisher.poll() is not None:
                    raise SystemExit(f"the publisher exited with {publisher.returncode}")
    deltas = [b - a for a, b in itertools.pairwise(frames)]
    busy = (cpu_after[0] - cpu_before[0]) / max(1.0, cpu_after[1] - cpu_before[1])
    window = max(1e-9, (frames[-1] - frames[0]) / 1000) if len(frames) > 1 else seconds

    def busy_ms(name: str) -> float:
        return (after.get(name, 0.0) - before.get(name, 0.0)) * 1000 / window

    return {
        "devices": devices,
        "rate_per_device": 1.0,
        "seconds": seconds,
        "frames": len(deltas),
        "fps": len(deltas) / window,
        "p50_ms": _percentile(deltas, 50),
        "p95_ms": _percentile(deltas, 95),
        "p99_ms": _percentile(deltas, 99),
        "max_ms": max(deltas, default=float("nan")),
        "long_frames": sum(1 for d in deltas if d > LONG_FRAME_MS),
        # Milliseconds of renderer main-thread work per second of wall time.
        "renderer_task_ms_per_s": busy_ms("TaskDuration"),
        "script_ms_per_s": busy_ms("ScriptDuration"),
        "layout_and_style_ms_per_s": busy_ms("LayoutDuration") + busy_ms("RecalcStyleDuration"),
        "js_heap_mb": (heap or after.get("JSHeapUsedSize", 0.0)) / 1e6,
        "dom_nodes": after.get("Nodes"),
        "page": page,
        "relay_cpu_percent": 100
        * (relay_after.total - relay_before.total)
        / max(1e-9, relay_after.at - relay_before.at),
        "machine_busy_percent": 100 * busy,
        "machine": {
            "cpu": procstat.cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "chromium": subprocess.run(
                [str(CHROMIUM), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "viewport": f"{width}x{height}",
        },
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.web_frames", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices (1 fix/s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--size", default="1280x800", help="browser window, WIDTHxHEIGHT")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    result = measure(args.devices, args.seconds, args.warmup, width, height)
    page = result["page"]
    print(
        f"web map, {result['devices']} devices at 1 fix/s, {result['seconds']:.0f} s, "
        f"headless chromium {result['machine']['viewport']} (software rendering, no GPU)"
    )
    print(
        f"  frames {result['frames']} ({result['fps']:.1f}/s): p50 {result['p50_ms']:.1f} ms, "
        f"p95 {result['p95_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms; {result['long_frames']} longer than "
        f"{LONG_FRAME_MS:.0f} ms"
    )
    print(
        f"  renderer main thread busy {result['renderer_task_ms_per_s']:.0f} ms/s "
        f"(script {result['script_ms_per_s']:.0f}, layout+style "
        f"{result['layout_and_style_ms_per_s']:.0f}); JS heap {result['js_heap_mb']:.1f} MB; "
        f"{result['dom_nodes']:.0f} DOM nodes"
    )
    print(
        f"  page: {page['devices']} devices ({page['fresh']} updated in the last 5 s), "
        f"{page['markers']} markers, {page['trails']} trails, {page['rows']} list rows"
    )
    print(
        f"  relay CPU {result['relay_cpu_percent']:.0f}% of a core; machine "
        f"{result['machine_busy_percent']:.0f}% busy ({result['machine']['cores']} cores)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
