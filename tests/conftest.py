"""Fixtures shared by the whole suite: a test PKI made with the project's own CA tool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flwrmtls.link.server import Link
from flwrmtls.testing.link import mtls_config, running_link
from flwrmtls.testing.pki import TestPki, make_test_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A shared CA with server, node-1, node-2 and cli-operator certificates. Do not revoke
    in it: tests that revoke make their own with ``fresh_pki``."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def fresh_pki(tmp_path: Path) -> TestPki:
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
def link(pki: TestPki, tmp_path: Path) -> Iterator[Link]:
    """A real link in this process (its own event loop thread), mTLS, ports chosen by the OS."""
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    with running_link(config) as running:
        yield running
