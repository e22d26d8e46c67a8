"""The publishing run's words and checks, without a relay (the runs themselves are in
tests/cli/test_publish.py, end to end)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from geotrack._text import plural
from geotrack.client import Publisher, PublishStats
from geotrack.errors import InvalidParameter
from geotrack.publishing import PublishConfig, PublishOutcome, _duration, client_tls
from geotrack.schema import Position
from tests.relay_helpers import arun, running_relay


def test_plural() -> None:
    assert [plural(n, "track") for n in (0, 1, 2)] == ["0 tracks", "1 track", "2 tracks"]
    assert plural(1, "mover", "movers") == "1 mover"


def test_summary_and_details() -> None:
    stats = PublishStats(sent=130, stored=100, duplicates=1, rejected=25)
    stats.rejections = [f"d at t{i}: lat: no" for i in range(20)]
    stats.more_rejections = 5
    outcome = PublishOutcome(stats, elapsed=2.04, unacked=4)
    assert outcome.summary == "130 sent, 100 stored, 1 duplicate, 25 rejected in 2.0 s"
    assert outcome.details[-2:] == ["… and 5 more", "4 positions were not acknowledged"]
    assert outcome.failed and outcome.exit_code == 1
    one = PublishOutcome(PublishStats(sent=1), elapsed=0, interrupted=True, unacked=1)
    assert one.details == ["1 position was not acknowledged"]
    assert one.exit_code == 130


def test_errors_beyond_ten_are_counted_too() -> None:
    stats = PublishStats(sent=12, rejected=12, errors=[f"bad frame {i}" for i in range(12)])
    details = PublishOutcome(stats, elapsed=1).details
    assert details == [*(f"bad frame {i}" for i in range(10)), "… and 2 more"]


def test_config_checks_itself() -> None:
    with pytest.raises(InvalidParameter, match="--speed"):
        PublishConfig(speed=-1)
    with pytest.raises(InvalidParameter, match="--batch"):
        PublishConfig(batch=0)
    with pytest.raises(InvalidParameter, match="--window"):
        PublishConfig(window=0)


def test_tls_only_for_wss_and_from_the_system_store_by_default() -> None:
    assert client_tls("ws://h:1") is None
    context = client_tls("wss://h:1")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_durations_read_as_written() -> None:
    assert [_duration(s) for s in (300, 90, 7200, 2.5)] == ["5m", "90s", "2h", "2.5s"]


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_wss_trusts_what_the_openssl_variables_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """Without --cafile, a CA named by SSL_CERT_FILE or SSL_CERT_DIR is trusted."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    if variable == "SSL_CERT_DIR":
        if shutil.which("openssl") is None:
            pytest.skip("needs the openssl command to name the CA file by its hash")
        subject_hash = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(pem)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        certs = tmp_path / "certs"
        certs.mkdir()
        (certs / f"{subject_hash}.0").write_bytes(pem.read_bytes())
        monkeypatch.setenv("SSL_CERT_DIR", str(certs))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    else:
        monkeypatch.setenv("SSL_CERT_FILE", str(pem))
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))

    async def main() -> int:
        async with running_relay(tmp_path / "db", ssl=server_ctx) as relay:
            pub = Publisher(relay.url, ssl_context=client_tls(relay.url))
            await pub.connect()
            await (await pub.send([Position("tls", 1.0, 2.0, 1_764_072_000)]))
            await pub.close()
        return pub.stats.stored

    assert arun(main()) == 1
