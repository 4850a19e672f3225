"""The app-process APIs listen on loopback only: what counts as loopback, and the refusal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flwrmtls.errors import InputError
from flwrmtls.testing.link import mtls_config, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.listen import is_loopback, require_loopback


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:9091", "127.1.2.3:0", "[::1]:9091", "::1:9091", "localhost:0", "LocalHost:1"],
)
def test_loopback_addresses(address: str) -> None:
    assert is_loopback(address)
    require_loopback(address, "--serverappio-api-address", "ServerAppIo")


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0:9091",  # every interface
        "[::]:9091",
        ":9091",  # an empty host: every interface too
        "192.0.2.2:9091",
        "[fd00::2]:9091",
        "[::ffff:127.0.0.1]:9091",  # v4-mapped: refused rather than guessed
        "node.invalid:9091",  # a name that resolves to nothing
        "9091",
        "",
    ],
)
def test_other_addresses_are_refused_naming_the_flag(address: str) -> None:
    assert not is_loopback(address)
    with pytest.raises(InputError, match=r"^--clientappio-api-address .* is not a loopback"):
        require_loopback(address, "--clientappio-api-address", "ClientAppIo")


def test_a_link_refuses_serverappio_off_loopback_before_listening(
    pki: TestPki, tmp_path: Path
) -> None:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    open_to_all = dataclasses.replace(config, serverappio_address="0.0.0.0:0")
    with (
        pytest.raises(InputError, match=r"--serverappio-api-address 0\.0\.0\.0:0 is not a"),
        running_link(open_to_all),
    ):
        pass
    for host in ("localhost", "[::1]"):  # controls
        with running_link(dataclasses.replace(config, serverappio_address=f"{host}:0")) as link:
            assert link.serverappio_port > 0
            assert link.runs.processes.address == f"{host}:{link.serverappio_port}"
