"""Fixtures shared by the whole suite: a test PKI made with the project's own CA tool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flwrmtls.link.server import Link
from flwrmtls.testing.link import mtls_config, running_link
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.testing.postgres import PostgresServer, PostgresUnavailable


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (see :mod:`flwrmtls.testing.postgres`): a
    test that needs it fails with one line when it cannot start, never skips."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as error:
        pytest.fail(f"PostgreSQL: {error}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own on the session's server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The state contract's engines: a SQLite file, and a PostgreSQL database of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "link.db")
    url: str = request.getfixturevalue("postgres_url")
    return url
