"""RelayConfig checks itself, naming the option of `geotrack serve` at fault."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from geotrack.errors import InvalidParameter
from geotrack.relay import RelayConfig
from tests.factories import token_file


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_batch": 0}, "--max-batch: must be within 1..1000, got 0"),
        ({"max_batch": 1001}, "--max-batch: must be within 1..1000, got 1001"),
        ({"subscriber_queue": 1999}, "--subscriber-queue: must be within 2000..1000000000"),
        ({"max_batch": 10, "subscriber_queue": 20}, None),
        ({"max_rate": 0.0}, "--max-rate: must be within 0.001..inf, got 0.0"),
        ({"max_rate": float("nan")}, "--max-rate: must be within"),
        ({"max_connections": 0}, "--max-connections: must be within 1..1000000000, got 0"),
        ({"handshake_timeout": 0}, "--handshake-timeout: must be within"),
        ({"port": 70000}, "--port: must be within 0..65535, got 70000"),
        ({"http_port": -1}, "--http-port: must be within 0..65535, got -1"),
        ({"stats_interval": -1.0}, "--stats-interval: must be within"),
        ({"max_frame": 0}, "--max-frame: must be within"),
    ],
)
def test_bad_settings_name_their_option(settings: dict[str, Any], message: str | None) -> None:
    if message is None:
        RelayConfig(**settings)
        return
    with pytest.raises(InvalidParameter) as info:
        RelayConfig(**settings)
    assert str(info.value).startswith(message)


def test_a_key_without_a_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match=r"^--keyfile: give --certfile too"):
        RelayConfig(keyfile=tmp_path / "key.pem")


def test_files_are_loaded_or_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match=r"^--certfile: cannot load .*missing.pem"):
        RelayConfig(certfile=tmp_path / "missing.pem")
    with pytest.raises(InvalidParameter, match=r"^--auth: cannot read"):
        RelayConfig(auth=tmp_path / "tokens.toml")
    tokens = token_file(
        tmp_path / "tokens.toml", [{"name": "a", "token": "0123456789abcdef0", "role": "both"}]
    )
    config = RelayConfig(auth=tokens)
    assert config.tokens is not None and len(config.tokens) == 1


def test_a_certificate_is_loaded_into_a_server_context() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    with cert.private_key_and_cert_chain_pem.tempfile() as pem:
        config = RelayConfig(certfile=Path(pem))
    assert isinstance(config.ssl, ssl.SSLContext)


def test_open_addresses_are_the_non_loopback_ones_without_auth() -> None:
    assert RelayConfig().open_addresses() == []
    assert RelayConfig(host="0.0.0.0").open_addresses() == ["0.0.0.0"]
    assert RelayConfig(host="::1", http_port=0, http_host="0.0.0.0").open_addresses() == ["0.0.0.0"]
    assert RelayConfig(host="localhost", http_host="10.1.2.3").open_addresses() == []
    config = RelayConfig(host="0.0.0.0", http_port=0)
    assert config.open_addresses() == ["0.0.0.0"] and config.http_address == "0.0.0.0"
