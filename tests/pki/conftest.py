"""Fixtures of the pki tests: CAs in temporary directories, on the real clock (openssl
verifies against the real time) or on a fake one (to check validity windows exactly)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from flwrmtls.pki import CertificateAuthority
from flwrmtls.testing.clock import FakeClock


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    """An EC CA in ``tmp_path/certs`` on the system clock."""
    return CertificateAuthority.create(tmp_path / "certs", name="test")


@pytest.fixture
def other_authority(tmp_path: Path) -> CertificateAuthority:
    """A second, unrelated CA (same names), for negative controls."""
    return CertificateAuthority.create(tmp_path / "other", name="test")


@pytest.fixture
def fake_clock() -> FakeClock:
    """Stands at 2030-01-01 12:00 UTC until a test moves it."""
    return FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def fake_clock_authority(tmp_path: Path, fake_clock: FakeClock) -> CertificateAuthority:
    """An EC CA on ``fake_clock``."""
    return CertificateAuthority.create(tmp_path / "fake-clock", name="test", clock=fake_clock)
