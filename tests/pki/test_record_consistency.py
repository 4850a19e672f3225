"""The CA tool on day eight: the revocation record and the CRL stay one, whatever happens.

As an operator whose commands overlap or fail half-way: two revocations at once must both
land; a CRL that could not be written must not leave the record claiming a revocation the
link never sees; a CRL's validity is bounded. Each failure sits beside its control.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from flwrmtls.errors import InputError
from flwrmtls.pki import CertificateAuthority
from flwrmtls.pki.crl import RevocationRecord
from flwrmtls.testing.clock import FakeClock

from .openssl_tools import run_flwrmtls

CRL_MAX_DAYS = 365  # flwrmtls.pki.crl.CRL_MAX_DAYS, as the refusal states it


def _crl_serials(authority: CertificateAuthority) -> set[int]:
    crl = x509.load_pem_x509_crl(authority.crl_path.read_bytes())
    return {entry.serial_number for entry in crl}


def _recorded(authority: CertificateAuthority) -> set[int]:
    record = RevocationRecord.load(authority.files.revocation_record)
    return {entry.serial for entry in record.revoked}


class GateClock(FakeClock):
    """A clock whose first ``now()`` waits at a gate: it holds a command between reading the
    revocation record and writing it, exactly where a concurrent command used to slip in."""

    def __init__(self) -> None:
        super().__init__(datetime.now(UTC))
        self.reached = threading.Event()
        self.release = threading.Event()
        self._gated = False

    def now(self) -> datetime:
        if not self._gated:
            self._gated = True
            self.reached.set()
            assert self.release.wait(60), "the gate was never opened"
        return super().now()


@pytest.mark.parametrize("first", ["revoke", "crl"])
def test_concurrent_commands_never_lose_a_revocation(tmp_path: Path, first: str) -> None:
    """``first`` (this process) has read the record and waits; a real ``flwrmtls ca revoke``
    process runs meanwhile. Without a lock the second revocation was saved and then
    overwritten by the first command's stale copy; with it the second command waits (and
    says so) and both land, in the record and in the CRL."""
    authority = CertificateAuthority.create(tmp_path / "certs")
    clock = GateClock()
    gated = CertificateAuthority.load(authority.directory, clock=clock)
    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            if first == "revoke":
                gated.revoke(serial=0x1111)
            else:
                gated.write_crl()
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    thread = threading.Thread(target=run_first)
    thread.start()
    assert clock.reached.wait(60)
    second = subprocess.Popen(
        [sys.executable, "-m", "flwrmtls.cli.main", "ca", "revoke", "--serial", "0x2222",
         "--dir", str(authority.directory)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert second.stderr is not None
    # Either it finished (no lock: it ran through) or it says it waits for the lock.
    first_line = second.stderr.readline()
    clock.release.set()
    thread.join(60)
    _, rest = second.communicate(timeout=60)
    assert not errors, errors
    assert second.returncode == 0, first_line + rest
    expected = {0x2222} | ({0x1111} if first == "revoke" else set())
    assert _recorded(authority) == expected
    assert _crl_serials(authority) == expected
    assert first_line.startswith("flwrmtls: warning: waiting for ")
    assert "another `flwrmtls ca` command is changing this CA" in first_line
    numbers = RevocationRecord.load(authority.files.revocation_record).crl_number
    assert numbers == 3  # init, then one CRL per command: none reused


def test_a_failed_crl_write_revokes_nothing_and_can_be_retried(tmp_path: Path) -> None:
    """crl.pem cannot be replaced (here a directory stands in its place; tests run as root,
    so permissions would not stop the write). The record used to keep the serial, so the
    retry said "already revoked; nothing changed" while no CRL listed it."""
    authority = CertificateAuthority.create(tmp_path / "certs")
    node = authority.issue_node("node-1")
    crl_before = authority.crl_path.read_bytes()
    authority.crl_path.unlink()
    authority.crl_path.mkdir()
    (authority.crl_path / "blocker").write_text("x")
    with pytest.raises(InputError, match=r"cannot write .*crl\.pem.*nothing was revoked"):
        authority.revoke(certificate_file=node.chain_path)
    assert _recorded(authority) == set()
    assert not list(authority.directory.glob(".crl.pem.*.tmp"))  # no staged file left behind
    shutil.rmtree(authority.crl_path)
    authority.crl_path.write_bytes(crl_before)
    assert authority.revoke(certificate_file=node.chain_path) == node.serial  # the retry lands
    assert _recorded(authority) == _crl_serials(authority) == {node.serial}


def test_a_recorded_serial_missing_from_the_crl_is_published_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CA directory left inconsistent by an earlier version (the record lists a serial,
    crl.pem does not): revoking the serial again rewrites the CRL instead of answering
    "already revoked"; once the CRL lists it, revoking again changes nothing (the control)."""
    authority = CertificateAuthority.create(tmp_path / "certs")
    crl_without = authority.crl_path.read_bytes()
    authority.revoke(serial=0x77)
    authority.crl_path.write_bytes(crl_without)  # the state the old failure left
    assert _crl_serials(authority) == set()
    with caplog.at_level(logging.WARNING, logger="flwrmtls.pki"):
        assert authority.revoke(serial=0x77) == 0x77
    assert _crl_serials(authority) == {0x77}
    assert "was already recorded as revoked" in caplog.text
    assert f"but {authority.crl_path} did not list it" in caplog.text
    with pytest.raises(InputError, match=r"already revoked .*nothing changed"):
        authority.revoke(serial=0x77)
    # a crl.pem of another CA that lists the serial does not count either
    other = CertificateAuthority.create(tmp_path / "other")
    other.revoke(serial=0x77)
    shutil.copy(other.crl_path, authority.crl_path)
    assert authority.revoke(serial=0x77) == 0x77
    crl = x509.load_pem_x509_crl(authority.crl_path.read_bytes())
    assert crl.is_signature_valid(authority.issuing_certificate.public_key())  # type: ignore[arg-type]


@pytest.mark.parametrize("days", [0, -1, CRL_MAX_DAYS + 1, 10**12])
def test_crl_validity_is_bounded(tmp_path: Path, days: int) -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    authority = CertificateAuthority.create(tmp_path / "certs", clock=clock)
    before = authority.crl_path.read_bytes()
    with pytest.raises(InputError, match=rf"--days {days}: a CRL must be valid for 1 to 365 days"):
        authority.write_crl(days=days)
    assert authority.crl_path.read_bytes() == before
    for good in (1, CRL_MAX_DAYS):  # the controls: both ends of the range
        authority.write_crl(days=good)
        crl = x509.load_pem_x509_crl(authority.crl_path.read_bytes())
        assert crl.next_update_utc == clock.now() + timedelta(days=good)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["ca", "crl", "--days", "99999999"], "--days 99999999: a CRL must be valid for 1 to 365"),
        (["ca", "issue", "node", "n", "--days", "99999999"], "would outlive the issuing CA"),
        (["ca", "init", "--dir", "fresh", "--days", "99999999"], "a CA is valid for 1 to 36500"),
    ],
)
def test_huge_days_are_one_line_not_a_traceback(
    tmp_path: Path, command: list[str], expected: str
) -> None:
    CertificateAuthority.create(tmp_path / "certs")
    refused = run_flwrmtls(*command, cwd=tmp_path)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("flwrmtls: error: ")
    assert expected in line
    fixed = [part if part != "99999999" else "30" for part in command]  # the control
    accepted = run_flwrmtls(*fixed, cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
