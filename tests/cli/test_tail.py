"""``geotrack tail`` end to end: a real process following a real SQLite file."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geotrack.store import open_store
from tests.cli_helpers import PREEXEC, env, geotrack
from tests.factories import pos
from tests.relay_helpers import Lines


@contextlib.contextmanager
def tail(*args: str, cwd: Path) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """``geotrack tail ARGS`` in the background, stderr to ``cwd/stderr.txt``."""
    with open(cwd / "stderr.txt", "w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "geotrack", "tail", *args],
            cwd=cwd,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=PREEXEC,  # noqa: PLW1509 - only when SIGINT is ignored
        )
    assert proc.stdout is not None
    try:
        yield proc, Lines(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()


def stop(proc: subprocess.Popen[str], sig: int, cwd: Path) -> str:
    proc.send_signal(sig)
    proc.wait(15)
    return (cwd / "stderr.txt").read_text(encoding="utf-8")


def wait_until_following(store_url: str, lines: Lines, device: str) -> int:
    """Write probes of ``device`` until the tail shows one (it starts at the store's end)."""
    with open_store(store_url) as store:
        deadline = time.monotonic() + 20
        i = 0
        while not lines.lines:
            assert time.monotonic() < deadline, "tail printed nothing"
            store.write([pos(device, 10_000 + i)])
            i += 1
            time.sleep(0.1)
    return i


@pytest.mark.parametrize("command", ["tail", "export"])
def test_a_store_that_does_not_exist_is_refused_and_not_created(
    tmp_path: Path, command: str
) -> None:
    typo = tmp_path / "typo.db"
    result = geotrack(command, "--store", f"sqlite:///{typo}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: no store at {typo} (sqlite:///{typo}): nothing has been stored there yet; "
        "check --store\n"
    )
    assert list(tmp_path.iterdir()) == []  # no typo.db, no -wal, no -shm


def test_an_empty_file_is_no_store_either(tmp_path: Path) -> None:
    # What the old tail and export left behind for a mistyped --store.
    (tmp_path / "typo.db").touch()
    result = geotrack("tail", "--store", "sqlite:///typo.db", cwd=tmp_path)
    assert result.returncode == 1
    assert "Error: no store at" in result.stderr and "nothing has been stored" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.db"]
    assert (tmp_path / "typo.db").stat().st_size == 0


def test_a_bad_since_is_reported_before_the_store_is_looked_at(tmp_path: Path) -> None:
    for since, says in [
        ("soon", "--since: expected an RFC 3339"),
        ("sqlite:abc", "--since: 'sqlite:abc' is not a SQLite cursor"),
        ("mongo:AAAA", "is a cursor of a MongoDB store, and the store is SQLite"),
    ]:
        result = geotrack("tail", "--since", since, cwd=tmp_path)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert says in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_resume_hint_keeps_the_filters_and_resumes_exactly(tmp_path: Path, sig: int) -> None:
    # An existing but empty store, named by a path with a space: the hint must quote it.
    db = tmp_path / "my store.db"
    url = f"sqlite:///{db}"
    open_store(url).close()
    args = ("--store", url, "--device", "bus-12", "--device", "tram-3", "--json")
    with tail(*args, cwd=tmp_path) as (proc, out):
        probes = wait_until_following(url, out, "bus-12")
        with open_store(url) as store:
            store.write([pos("car", 0), pos("tram-3", 0), pos("bus-12", 0)])
        last = {"bus-12": pos("bus-12", 0).ts}
        lines = out.wait(
            lambda ls: bool(ls) and {(d := json.loads(ls[-1]))["device"]: d["ts"]} == last
        )
        assert [json.loads(x)["device"] for x in lines[-2:]] == ["tram-3", "bus-12"]
        err = stop(proc, sig, tmp_path)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    (hint,) = [line for line in err.splitlines() if line.startswith("resume with: ")]
    command = shlex.split(hint.removeprefix("resume with: "))
    cursor = f"sqlite:{probes + 3}"
    assert command == [
        "geotrack", "tail", "--store", url,
        "--device", "bus-12", "--device", "tram-3", "--json", "--since", cursor,
    ]  # fmt: skip

    with open_store(url) as store:
        store.write([pos("bus-12", 1), pos("car", 1), pos("tram-3", 1)])
    # The printed command, as a user pastes it: only what came after, only those devices.
    with tail(*command[2:], cwd=tmp_path) as (again, out2):
        lines = out2.wait(lambda ls: len(ls) >= 2)
        time.sleep(0.3)  # anything else would show up by now
        assert [(json.loads(x)["device"], json.loads(x)["ts"]) for x in out2.lines] == [
            ("bus-12", pos("bus-12", 1).ts),
            ("tram-3", pos("tram-3", 1).ts),
        ]
        err = stop(again, signal.SIGINT, tmp_path)
    assert again.returncode == 0, err
    assert err.splitlines()[-1].endswith(f"--json --since sqlite:{probes + 6}")


def test_the_default_store_is_not_named_in_the_hint(tmp_path: Path) -> None:
    open_store(f"sqlite:///{tmp_path / 'geotrack.db'}").close()
    with tail("--device", "walk", cwd=tmp_path) as (proc, out):
        wait_until_following(f"sqlite:///{tmp_path / 'geotrack.db'}", out, "walk")
        err = stop(proc, signal.SIGINT, tmp_path)
    assert proc.returncode == 0, err
    assert err.splitlines()[0] == "following sqlite:///geotrack.db (Ctrl-C to stop)"
    assert err.splitlines()[-1].startswith(
        "resume with: geotrack tail --device walk --since sqlite:"
    )
