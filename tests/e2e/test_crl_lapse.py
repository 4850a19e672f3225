"""Day eight: a CRL that nobody renews is announced well before the link fails closed.

As the machine (a cron job that stopped): set up as the Quickstart says, a federation's CRL
lapses seven days after its last ``ca crl``, and from then on the link refuses every node.
The link says so before: in its log, on the CRL's row in ``supernode list``, on stderr of
``supernode list`` and ``supernode revocation`` (for scripts), and in the JSON. The control:
the same federation with a freshly renewed CRL says nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flwrmtls.pki import CertificateAuthority
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import LinkProcess

from .deployment import Deployment
from .test_startup_errors import assert_one_line, link_tls, run


def test_a_crl_about_to_lapse_is_flagged_until_renewed(deployment: Deployment) -> None:
    pki = deployment.pki
    six_days_ago = FakeClock(datetime.now(UTC) - timedelta(days=6))
    CertificateAuthority.load(pki.directory, clock=six_days_ago).write_crl(days=7)  # renewed last
    link = deployment.start_link()
    issuing = pki.ca.issuing_certificate.subject.rfc4514_string()
    logged = link.wait_for(
        rf"WARNING flwrmtls\.auth\.revocation: CRL for issuer {issuing} \(all certificates\) "
        r"expires in (\d+) h \(next update [^)]*\): renew it before \(`flwrmtls ca crl`"
    )
    assert 23 <= int(logged.group(1)) <= 24
    node = deployment.node("node-1", link.fleet_port)
    node.wait_active()  # still in force: the warning comes before any refusal
    deployment.profile(link.control_port)

    listed = deployment.cli("supernode", "list")
    assert listed.returncode == 0, listed.stderr
    (warning,) = listed.stderr.splitlines()
    assert warning.startswith(
        f"flwrmtls: warning: the link's CRL for issuer {issuing} (all certificates) expires in "
    )
    assert "or the link refuses every certificate of this issuer from then on" in warning
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(issuing)]
    assert "(expires soon!)" in row
    assert "current" in row
    coverage = json.loads(deployment.cli("supernode", "revocation", "--format", "json").stdout)
    by_issuer = {entry["issuer"]: entry for entry in coverage}
    assert by_issuer[issuing]["expires_soon"] is True
    assert by_issuer[issuing]["expiry_warning"].startswith("expires in ")

    renewed = deployment.cli("ca", "crl", "--dir", str(pki.directory))  # what cron runs
    assert renewed.returncode == 0, renewed.stderr
    link.wait_for(r"CRL file \S+crl\.pem read: CRL #3 ")
    quiet = deployment.cli("supernode", "list")
    assert quiet.returncode == 0
    assert quiet.stderr == ""  # the control: a renewed CRL draws no warning
    (row,) = [line for line in quiet.stdout.splitlines() if line.startswith(issuing)]
    assert "expires soon" not in row
    coverage = json.loads(deployment.cli("supernode", "revocation", "--format", "json").stdout)
    assert {entry["issuer"]: entry for entry in coverage}[issuing]["expires_soon"] is False


@pytest.mark.parametrize(("hours", "accepted"), [("0", False), ("1e9", False), ("12", True)])
def test_the_warning_window_flag_is_bounded(
    pki: TestPki, tmp_path: Path, hours: str, accepted: bool
) -> None:
    args = [*link_tls(pki, tmp_path), "--crl-expiry-warning-hours", hours]
    if accepted:  # the control: the link starts with it
        link = LinkProcess(args, tmp_path / "link.log")
        link.start_and_wait()
        assert link.stop() == 0
    else:
        assert_one_line(run("flwrmtls.link.main", args, tmp_path), "--crl-expiry-warning-hours")
