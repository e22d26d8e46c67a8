"""`geotrack share` as a real process: the link it prints works against a real relay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from geotrack.auth import Tokens
from geotrack.cli.share import link_for
from geotrack.errors import InvalidParameter
from tests.cli_helpers import geotrack
from tests.conftest import free_port
from tests.factories import PUB, token_entries, token_file
from tests.relay_helpers import relay_process, wait_listening

SECRET = "a-share-secret-of-at-least-32-characters"


def pub_token_file(path: Path, secret: str | None = SECRET) -> Path:
    """A token file with the standard publish grant only, and ``secret`` to sign share links."""
    return token_file(path, [token_entries()[0]], share_secret=secret)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_share_prints_a_link_that_works_against_a_relay(tmp_path: Path) -> None:
    auth = pub_token_file(tmp_path / "tokens.toml")
    port, http_port = free_port(), free_port()
    result = geotrack(
        "share",
        "--auth",
        str(auth),
        "--device",
        "bus-12",
        "-d",
        "bus-14",
        "--expires",
        "2h",
        "--url",
        f"http://127.0.0.1:{http_port}/",
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    assert "\n" not in link
    assert link.startswith(f"http://127.0.0.1:{http_port}/?token=gts1.")
    assert result.stderr.startswith("read-only link to bus-12, bus-14, valid until 20")
    token = parse_qs(urlsplit(link).query)["token"][0]
    grant = Tokens.load(auth).check(token)
    assert grant is not None and grant.views == frozenset({"bus-12", "bus-14"})

    store = f"sqlite:///{tmp_path / 'db'}"
    with relay_process(store, port, "--auth", str(auth), "--http-port", str(http_port)):
        wait_listening(http_port)
        body = json.dumps(
            [{"device": d, "lat": 52.5, "lon": 13.4, "ts": 1795608000} for d in ("bus-12", "car-1")]
        )
        post = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/api/positions",
            data=body.encode(),
            headers={"Authorization": f"Bearer {PUB}"},
        )
        with urllib.request.urlopen(post, timeout=10) as response:
            assert response.status == 200
        base = f"http://127.0.0.1:{http_port}/api/devices"
        with urllib.request.urlopen(f"{base}?token={token}", timeout=10) as response:
            assert b'"bus-12"' in response.read()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{base}?device=car-1&token={token}", timeout=10)
        info.value.close()
        assert info.value.code == 403


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "Error: --auth: give the token file"),
        (["--auth", "missing.toml", "-d", "bus-12"], "Error: --auth: cannot read missing.toml"),
        (["--auth", "tokens.toml"], "Error: --device: give at least one device"),
        (["--auth", "tokens.toml", "-d", "bus-*"], "Error: --device: 'bus-*' is not a device id"),
        (["--auth", "tokens.toml", "-d", "a b"], "Error: --device: 'a b' is not a device id"),
        (["--auth", "tokens.toml", "-d", "b", "--expires", "soon"], "Error: --expires: expected"),
        (["--auth", "tokens.toml", "-d", "b", "--expires", "0"], "Error: --expires: a link must"),
        (["--auth", "tokens.toml", "-d", "b", "--expires", "400d"], "at most 366 days"),
        (["--auth", "tokens.toml", "-d", "b", "--url", "ftp://x/"], "Error: --url: expected"),
        (["--auth", "tokens.toml", "-d", "b", "--url", "localhost"], "Error: --url: expected"),
    ],
)
def test_bad_inputs_are_one_error_line(tmp_path: Path, args: list[str], error: str) -> None:
    pub_token_file(tmp_path / "tokens.toml")
    line = one_error_line(geotrack("share", *args, cwd=tmp_path, timeout=60))
    assert error in line


def test_a_file_without_a_secret_gets_a_line_to_paste(tmp_path: Path) -> None:
    auth = pub_token_file(tmp_path / "tokens.toml", secret=None)
    line = one_error_line(
        geotrack("share", "--auth", "tokens.toml", "-d", "b", cwd=tmp_path, timeout=60)
    )
    # The brackets are shown as they are (they once vanished as rich markup).
    assert line.startswith("Error: --auth: tokens.toml has no [share] secret to sign links with")
    secret = line.split('secret = "')[1].split('"', maxsplit=1)[0]
    auth.write_text(auth.read_text() + f'\n[share]\nsecret = "{secret}"\n', encoding="utf-8")
    result = geotrack("share", "--auth", "tokens.toml", "-d", "b", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("http://127.0.0.1:5055/?token=gts1.")


def test_link_for_keeps_the_base_and_replaces_a_token() -> None:
    assert link_for("https://map.example.com", "T") == "https://map.example.com/?token=T"
    assert link_for("http://h:5055/map/?a=1&token=old", "T") == "http://h:5055/map/?a=1&token=T"
    with pytest.raises(InvalidParameter, match="fragment"):
        link_for("http://h/#x", "T")


def test_help_has_an_example() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "geotrack", "share", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0
    assert "geotrack share --auth tokens.toml --device bus-12 --expires 24h" in result.stdout
