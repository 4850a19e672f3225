"""Fixtures shared by the whole suite: a test PKI made with the project's own CA tool."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwrmtls.testing.pki import TestPki, make_test_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A shared CA with server, node-1, node-2 and cli-operator certificates. Do not revoke
    in it: tests that revoke make their own with ``fresh_pki``."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def fresh_pki(tmp_path: Path) -> TestPki:
    return make_test_pki(tmp_path / "pki")
