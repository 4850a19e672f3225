"""flwrmtls.testing.federation: the federation of processes the benchmarks and these tests
share. Both ways of admitting nodes come up with every node online under its own identity;
the link asks every node for a certificate (a node without one never gets past the TLS
handshake, beside the ones with one that stay online); leaving the block stops every process
it started."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwrmtls.testing.federation import (
    NodeAuth,
    list_nodes,
    node_args,
    numbered_nodes,
    running_federation,
)
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import NodeProcess


@pytest.mark.parametrize("node_auth", [NodeAuth.CERTIFICATE, NodeAuth.KEY])
def test_a_federation_comes_up_online_and_stops_what_it_started(
    fresh_pki: TestPki, tmp_path: Path, node_auth: NodeAuth
) -> None:
    env = {"FLWRMTLS_HOME": str(tmp_path / "home")}
    with running_federation(fresh_pki, tmp_path / "fed", env, 2, node_auth=node_auth) as fed:
        listed = list_nodes(fed.env)
        assert sorted(node["status"] for node in listed) == ["online", "online"]
        if node_auth is NodeAuth.CERTIFICATE:
            assert sorted(str(node["identity"]) for node in listed) == [
                "CN=node-1,O=Hospital A",
                "CN=node-2,O=Hospital B",
            ]
        assert "--ssl-require-client-auth" in fed.link_args()
        assert "--ssl-crl-file" in fed.link_args()
        processes = [fed.link, *fed.nodes]
    assert all(p is not None and p.process is not None for p in processes)
    assert all(p.process.poll() is not None for p in processes if p and p.process)


def test_the_shared_link_refuses_a_node_without_a_certificate(
    fresh_pki: TestPki, tmp_path: Path
) -> None:
    env = {"FLWRMTLS_HOME": str(tmp_path / "home")}
    with running_federation(fresh_pki, tmp_path / "fed", env, numbered_nodes(1)) as fed:
        assert fed.link is not None
        bare = NodeProcess(
            node_args(fresh_pki, fed.link.fleet_port, cert=None), tmp_path / "bare.log", env
        )
        bare.start()
        try:
            bare.wait_for("closed the connection during the handshake", timeout=60)
        finally:
            bare.stop()
        assert "node active" not in bare.log
        assert [n["status"] for n in list_nodes(fed.env)] == ["online"]
