"""The link's flags mean the same with TLS and without: what both configurations share (the
database, listeners, their limits, the heartbeat, apps) is read and checked once. Before,
``--insecure`` skipped the heartbeat's range (a NaN or half-second heartbeat was sent to
nodes, which refuse it) and ignored ``--max-connections`` and ``--max-calls-per-address``."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwrmtls.errors import InputError
from flwrmtls.link import main as link_main
from flwrmtls.link.config import LinkConfig
from flwrmtls.link.configure import config_from_args
from flwrmtls.testing.pki import TestPki

_SHARED = [
    "--heartbeat-interval", "7", "--max-connections", "40", "--max-calls-per-address", "9",
    "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
    "--max-run-storage", "3GB",
]  # fmt: skip


def config(args: list[str]) -> LinkConfig:
    return config_from_args(link_main.parser().parse_args(args))


def tls_args(pki: TestPki, tmp_path: Path) -> list[str]:
    chain, key = pki.paths("server")
    return [
        "--ssl-ca-certfile", str(pki.trust_bundle_path), "--ssl-certfile", str(chain),
        "--ssl-keyfile", str(key), "--ssl-require-client-auth",
        "--database", str(tmp_path / "link.db"),
    ]  # fmt: skip


def test_the_shared_flags_mean_the_same_with_tls_and_without(pki: TestPki, tmp_path: Path) -> None:
    insecure = config(["--insecure", "--database", str(tmp_path / "link.db"), *_SHARED])
    secure = config([*tls_args(pki, tmp_path), *_SHARED])
    for made in (insecure, secure):
        assert made.heartbeat_interval == 7
        assert made.server_limits.max_connections == 40
        assert made.calls_per_address == 9
        assert made.storage.max_run_bytes == 3 << 30
        assert made.objects_directory == tmp_path / "link.db.objects"
    assert insecure.insecure
    assert insecure.tls is None
    assert not secure.insecure
    assert secure.tls is not None
    assert secure.require_client_auth
    assert secure.cli_ca_certificates  # the client CA verifies the CLI too, as before


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--heartbeat-interval", "nan"], "--heartbeat-interval must be"),
        (["--heartbeat-interval", "inf"], "--heartbeat-interval must be"),
        (["--heartbeat-interval", "0.5"], "--heartbeat-interval must be"),
        (["--heartbeat-interval", "1e300"], "--heartbeat-interval must be"),
        (["--max-connections", "0"], "--max-connections and --max-calls-per-address"),
        (["--max-calls-per-address", "-1"], "--max-connections and --max-calls-per-address"),
    ],
)
@pytest.mark.parametrize("mode", ["insecure", "tls"])
def test_bad_shared_flags_are_refused_with_tls_and_without(
    pki: TestPki, tmp_path: Path, flags: list[str], expected: str, mode: str
) -> None:
    base = (
        ["--insecure", "--database", str(tmp_path / "link.db")]
        if mode == "insecure"
        else tls_args(pki, tmp_path)
    )
    base += ["--control-api-address", "127.0.0.1:0"]
    config(base)  # control: the same flags without the bad one are taken
    with pytest.raises(InputError, match=expected):
        config([*base, *flags])
