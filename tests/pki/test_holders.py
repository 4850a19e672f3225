"""``ca issue`` names the certificates whose identity a new one takes over.

As an operator who issues "node-7" for a new site with the CN and O of an existing node: the
link cannot tell them apart (same Subject, same node id, same runs). Rotation is exactly
that, so it is a warning, not a refusal; each case sits beside one that draws no warning.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.testing.clock import FakeClock

from .openssl_tools import run_flwrmtls


def test_same_subject_under_another_name_is_reported(
    fake_clock_authority: CertificateAuthority,
) -> None:
    ca = fake_clock_authority
    first = ca.issue_node("site-a", common_name="node-1", organization="Hospital A")
    other_org = ca.issue_node("site-b", common_name="node-1", organization="Hospital B")
    assert other_org.takes_over == ()  # the control: another O is another node
    second = ca.issue_node("site-a-2027", common_name="node-1", organization="Hospital A")
    (holder,) = second.takes_over
    assert holder.path == first.chain_path.absolute()
    assert holder.serial == first.serial
    assert holder.shared == "Subject CN=node-1,O=Hospital A"
    assert holder.not_after == first.certificate.not_valid_after_utc


def test_revoked_expired_and_foreign_certificates_are_not_reported(
    fake_clock_authority: CertificateAuthority, fake_clock: FakeClock, tmp_path: Path
) -> None:
    ca = fake_clock_authority
    revoked = ca.issue_node("old", common_name="node-1")
    ca.revoke(certificate_file=revoked.chain_path)
    expiring = ca.issue_node("short", common_name="node-2", options=LeafOptions(days=1))
    foreign = CertificateAuthority.create(tmp_path / "foreign", clock=fake_clock)
    foreign.issue_node(
        "node-3", options=LeafOptions(out_dir=ca.directory)
    )  # another CA's file in this directory
    (ca.directory / "notes.pem").write_text("not a certificate")
    assert ca.issue_node("new-1", common_name="node-1").takes_over == ()
    fake_clock.advance(timedelta(days=2).total_seconds())
    assert ca.issue_node("new-2", common_name="node-2").takes_over == ()
    assert ca.issue_node("new-3", common_name="node-3").takes_over == ()
    assert expiring.certificate.not_valid_after_utc < fake_clock.now()
    # the control: an unrevoked, unexpired one of this CA is reported
    assert len(ca.issue_node("new-4", common_name="node-1").takes_over) == 1


def test_same_spiffe_id_is_reported(fake_clock_authority: CertificateAuthority) -> None:
    ca = fake_clock_authority
    ca.issue_node("a", common_name="a", spiffe_id="spiffe://example.org/node/1")
    other = ca.issue_node("b", common_name="b", spiffe_id="spiffe://example.org/node/2")
    assert other.takes_over == ()  # the control
    same = ca.issue_node("c", common_name="c", spiffe_id="spiffe://example.org/node/1")
    assert [h.shared for h in same.takes_over] == ["SPIFFE ID spiffe://example.org/node/1"]


def test_the_command_line_warns_and_still_issues(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "certs").issue_node("node-1", organization="A")
    taken = run_flwrmtls("ca", "issue", "node", "node-7", "--cn", "node-1", "--org", "A",
                         cwd=tmp_path)  # fmt: skip
    assert taken.returncode == 0, taken.stderr
    (warning,) = taken.stderr.splitlines()
    assert warning.startswith(
        "flwrmtls: warning: Subject CN=node-1,O=A is also that of the certificate in "
        f"{tmp_path / 'certs' / 'node-1.pem'} (serial 0x"
    )
    assert "Meant as a new node? Revoke this one and issue it with another --cn/--org" in warning
    assert (tmp_path / "certs" / "node-7.pem").is_file()
    fresh = run_flwrmtls("ca", "issue", "node", "node-8", "--org", "A", cwd=tmp_path)
    assert fresh.returncode == 0
    assert fresh.stderr == ""  # the control: a Subject of its own


def test_server_certificates_are_not_identities(
    fake_clock_authority: CertificateAuthority,
) -> None:
    ca = fake_clock_authority
    ca.issue_server("link")
    assert ca.issue_server("link-2027", dns_names=("localhost",)).takes_over == ()
    ca.issue_cli("alice", role="user")  # the control: a CLI user's Subject is an identity
    assert len(ca.issue_cli("alice-laptop", common_name="alice", role="user").takes_over) == 1
