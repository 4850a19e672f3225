"""Renewing an enrolled certificate through a real link on loopback: over mTLS, authenticated
by the current certificate, no token.

Each attack beside its control: a node renewing with its revoked certificate beside one
renewing with its good one; renewing twice in a row; a CSR for another identity; a link that
does not enroll; a certificate of another CA; a certificate renewed already asking again
with another key (a stolen copy) or with a CSR that claims the new key without its private
half, beside the node whose answer was lost asking again with the same key (and the node's
renewer keeping that key across attempts and a restart).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.enroll.client import build_csr
from flwrmtls.enroll.config import EnrollmentConfig, EnrollMode
from flwrmtls.enroll.issuer import EnrollmentIssuer
from flwrmtls.enroll.renewal import MIN_INTERVAL, RenewalRefused, Renewals
from flwrmtls.enroll.tokens import Binding
from flwrmtls.errors import LinkUnreachable, Refused
from flwrmtls.link.server import Link
from flwrmtls.node.renewal import CertificateRenewer, renew_at
from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc
from flwrmtls.state.linkstate import LinkState
from flwrmtls.testing.link import mtls_config, running_link
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.wire.credentials import channel_credentials
from flwrmtls.wire.refusals import Refusal, refusal_in

from .test_endpoint import ShiftedClock

SITE = Binding("site-1", organization="Hospital C")
OTHER = Binding("site-2", organization="Hospital D")


@contextmanager
def renewing_link(
    tmp_path: Path, pki: TestPki, clock: ShiftedClock | None = None, *, enroll: bool = True
) -> Iterator[Link]:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path,
        crl=pki.crl_path,
    )  # fmt: skip
    issuer = EnrollmentIssuer.load(
        pki.ca.files.issuing_certificate, pki.ca.files.issuing_key,
        client_cas=config.client_ca_certificates, now=datetime.now(UTC),
    )  # fmt: skip
    settings = EnrollmentConfig(EnrollMode.SIGN, issuer, address="127.0.0.1:0", certificate_days=30)
    config = dataclasses.replace(config, enroll=settings if enroll else None)
    with running_link(config, clock) as running:
        yield running


def enrolled(pki: TestPki, binding: Binding, tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """A certificate the link's enrollment sub-CA issued for ``binding``: chain, and the
    key and chain PEM a node presents."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = EnrollmentIssuer.load(
        pki.ca.files.issuing_certificate, pki.ca.files.issuing_key,
        client_cas=[pki.ca.root_certificate], now=datetime.now(UTC),
    )  # fmt: skip
    from flwrmtls.enroll.csrcheck import check_request

    signing = check_request(build_csr(key, binding), binding, days=0, max_days=30)
    chain_pem = issuer.sign(signing, datetime.now(UTC)).chain_pem
    path = tmp_path / f"{binding.common_name}.pem"
    path.write_bytes(chain_pem)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    return path, chain_pem, key_pem


@contextmanager
def fleet(link: Link, pki: TestPki, chain_pem: bytes, key_pem: bytes) -> Iterator[Any]:
    from flwrmtls.wire.credentials import TlsIdentity

    identity = TlsIdentity(chain_pem=chain_pem, key_pem=key_pem, chain=())
    credentials = channel_credentials(pki.trust_bundle_path.read_bytes(), identity)
    with grpc.secure_channel(f"127.0.0.1:{link.fleet_port}", credentials) as channel:
        yield fleet_pb2_grpc.FleetStub(channel)


def renew(stub: Any, binding: Binding, days: int = 0) -> tuple[bytes, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    request = fleet_pb2.RenewCertificateRequest(csr_der=build_csr(key, binding), days=days)
    answer = stub.RenewCertificate(request, timeout=20)
    return bytes(answer.certificate_chain_pem), key


def refused(stub: Any, binding: Binding) -> tuple[grpc.StatusCode, Refusal | None, str]:
    with pytest.raises(grpc.RpcError) as error:
        renew(stub, binding)
    return error.value.code(), refusal_in(error.value), str(error.value.details())


def wait_until_refused(stub: Any, bound: float = 10.0) -> None:
    """Until the link refuses this certificate on an ordinary call (the CRL reloaded)."""
    deadline = time.monotonic() + bound
    while True:
        try:
            stub.ActivateNode(fleet_pb2.ActivateNodeRequest(), timeout=20)
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.UNAUTHENTICATED:
                return
        assert time.monotonic() < deadline, "the link never refused the revoked certificate"
        time.sleep(0.2)


def test_a_node_renews_with_its_good_certificate_but_not_with_a_revoked_one(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    pki = fresh_pki
    _, good_chain, good_key = enrolled(pki, SITE, tmp_path)
    revoked_path, revoked_chain, revoked_key = enrolled(pki, OTHER, tmp_path)
    with renewing_link(tmp_path, pki) as link:
        with fleet(link, pki, good_chain, good_key) as stub:
            chain, key = renew(stub, SITE)  # the control
        leaf = x509.load_pem_x509_certificate(chain)
        old = x509.load_pem_x509_certificate(good_chain)
        assert leaf.subject == old.subject
        assert leaf.serial_number != old.serial_number
        assert leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # As the holder of a revoked certificate: once the link has the CRL (it re-reads it
        # about once a second; a heartbeat-like call shows it), renewal is refused before
        # anything is signed.
        pki.ca.revoke(certificate_file=revoked_path)
        with fleet(link, pki, revoked_chain, revoked_key) as stub:
            wait_until_refused(stub)
            code, _, why = refused(stub, OTHER)
        assert code is grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in why
        entries = [e.record for e in link.state.audit.entries(50, "")]
        renewals = [e.outcome for e in entries if e.method.endswith("/RenewCertificate")]
        assert renewals == ["ok"]  # the refusal of the revoked one is the interceptor's:
        assert "revoked" in {e.outcome for e in entries}  # one entry per certificate and reason


def test_renewing_again_at_once_or_for_another_identity_is_refused(
    tmp_path: Path, pki: TestPki
) -> None:
    clock = ShiftedClock()
    _, chain, key = enrolled(pki, SITE, tmp_path)
    with renewing_link(tmp_path, pki, clock) as link:
        with fleet(link, pki, chain, key) as stub:
            code, refusal, why = refused(stub, OTHER)  # as a node asking for another's one
            assert code is grpc.StatusCode.PERMISSION_DENIED
            assert refusal is Refusal.RENEWAL_REFUSED
            assert "this token allows 'CN=site-1,O=Hospital C' only" in why
            new_chain, new_key = renew(stub, SITE)  # the control: its own identity
        with fleet(link, pki, new_chain, _pem(new_key)) as stub:
            code, refusal, why = refused(stub, SITE)  # again at once, with the new one
            assert refusal is Refusal.RENEWAL_REFUSED
            assert "once per 10 minutes" in why
            clock.shift = MIN_INTERVAL + timedelta(seconds=1)
            renew(stub, SITE)


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip


def test_a_certificate_renewed_already_cannot_renew_again_but_its_successor_can(
    tmp_path: Path, pki: TestPki
) -> None:
    """As whoever kept a copy of an enrolled node's earlier certificate and key (stolen, say)
    after the node renewed: that certificate, unexpired, is refused a renewal, so revoking the
    node's current certificate is not undone by the copy making itself a fresh one. The
    control: the node's newest certificate renews."""
    clock = ShiftedClock()
    _, first_chain, first_key = enrolled(pki, SITE, tmp_path)
    with renewing_link(tmp_path, pki, clock) as link:
        with fleet(link, pki, first_chain, first_key) as stub:
            second_chain, second_key = renew(stub, SITE)
        clock.shift = MIN_INTERVAL + timedelta(seconds=1)
        with fleet(link, pki, first_chain, first_key) as stub:  # the copy of the first
            code, refusal, why = refused(stub, SITE)
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert refusal is Refusal.RENEWAL_REFUSED
        second = x509.load_pem_x509_certificate(second_chain)
        assert "renewed already" in why
        assert f"into serial {second.serial_number:x}" in why
        with fleet(link, pki, second_chain, _pem(second_key)) as stub:  # the control
            assert renew(stub, SITE)[0]
        outcomes = [
            e.record.outcome for e in link.state.audit.entries(50, "")
            if e.record.method.endswith("/RenewCertificate")
        ]  # fmt: skip
        assert outcomes == ["ok", "PERMISSION_DENIED", "ok"]  # newest first


def test_a_link_that_does_not_enroll_renews_nothing(tmp_path: Path, pki: TestPki) -> None:
    _, chain, key = enrolled(pki, SITE, tmp_path)
    with renewing_link(tmp_path, pki, enroll=False) as link, fleet(link, pki, chain, key) as stub:
        code, refusal, _ = refused(stub, SITE)
        assert refusal is Refusal.NOT_ENROLLING
        assert code is grpc.StatusCode.FAILED_PRECONDITION


def test_a_certificate_of_another_ca_is_not_renewed_by_enrollment(
    tmp_path: Path, pki: TestPki
) -> None:
    other = make_test_pki(tmp_path / "other")
    issuer = EnrollmentIssuer.load(
        pki.ca.files.issuing_certificate, pki.ca.files.issuing_key,
        client_cas=[pki.ca.root_certificate], now=datetime.now(UTC),
    )  # fmt: skip
    state = LinkState(tmp_path / "link.db")
    try:
        renewals = Renewals(state.enroll, issuer, max_days=30)
        foreign = x509.load_pem_x509_certificate(other.paths("node-1")[0].read_bytes())
        csr = build_csr(ec.generate_private_key(ec.SECP256R1()), Binding("node-1", "Hospital A"))
        with pytest.raises(RenewalRefused, match="not by the link's enrollment CA"):
            renewals.renew(foreign, csr, datetime.now(UTC), days=0, peer="ipv4:127.0.0.1:1")
        own = x509.load_pem_x509_certificate(pki.paths("node-1")[0].read_bytes())
        renewed = renewals.renew(own, csr, datetime.now(UTC), days=0, peer="ipv4:127.0.0.1:1")
        assert renewed.certificate.subject == own.subject  # the control: the same CA's
    finally:
        state.close()


def test_a_node_renews_a_third_of_its_lifetime_ahead_unless_told() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime(2026, 5, 1, tzinfo=UTC)
    name = x509.Name([])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(start).not_valid_after(start + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    assert renew_at(certificate, None) == start + timedelta(days=20)
    assert renew_at(certificate, timedelta(days=2)) == start + timedelta(days=28)


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _ask(stub: Any, csr: bytes) -> bytes:
    request = fleet_pb2.RenewCertificateRequest(csr_der=csr)
    return bytes(stub.RenewCertificate(request, timeout=20).certificate_chain_pem)


def _refused_csr(stub: Any, csr: bytes) -> tuple[Refusal | None, str]:
    with pytest.raises(grpc.RpcError) as error:
        _ask(stub, csr)
    return refusal_in(error.value), str(error.value.details())


def _renewals(link: Link) -> int:
    return int(link.state.db.execute("SELECT COUNT(*) FROM enroll_renewals").scalar_one())


def test_a_renewal_whose_answer_was_lost_is_answered_again_for_its_key_only(
    tmp_path: Path, pki: TestPki
) -> None:
    """The node's first renewal is signed but its answer never arrives; it asks again with
    its previous certificate and the same new key and gets that certificate again, byte for
    byte, at once and after the interval, nothing new signed. As whoever holds a copy of the
    previous certificate and key (stolen): its own new key is refused, and so is a CSR that
    carries the new certificate's public key but is signed by another key."""
    clock = ShiftedClock()
    _, first_chain, first_key = enrolled(pki, SITE, tmp_path)
    pending = ec.generate_private_key(ec.SECP256R1())
    with renewing_link(tmp_path, pki, clock) as link:
        with fleet(link, pki, first_chain, first_key) as stub:
            lost = _ask(stub, build_csr(pending, SITE))  # signed; the answer is dropped
            assert _ask(stub, build_csr(pending, SITE)) == lost  # the retry, at once
            refusal, why = _refused_csr(
                stub, build_csr(ec.generate_private_key(ec.SECP256R1()), SITE)
            )
            assert refusal is Refusal.RENEWAL_REFUSED  # the copy's own key, at once
            assert "once per 10 minutes" in why
            clock.shift = MIN_INTERVAL + timedelta(seconds=1)
            refusal, why = _refused_csr(
                stub, build_csr(ec.generate_private_key(ec.SECP256R1()), SITE)
            )
            assert refusal is Refusal.RENEWAL_REFUSED  # the copy's own key, later
            new = x509.load_pem_x509_certificate(lost)
            assert "renewed already, at" in why
            assert f"into serial {new.serial_number:x}" in why
            # The new certificate's public key in a CSR signed by another key: refused.
            other = ec.generate_private_key(ec.SECP256R1())
            forged = build_csr(other, SITE).replace(
                _spki(other.public_key()), _spki(pending.public_key())
            )
            assert _spki(pending.public_key()) in forged
            refusal, why = _refused_csr(stub, forged)
            assert refusal is Refusal.RENEWAL_REFUSED
            assert "renewed already" in why
            assert _ask(stub, build_csr(pending, SITE)) == lost  # the control, later
        assert _renewals(link) == 1  # one certificate signed, one renewal kept
        assert _spki(new.public_key()) == _spki(pending.public_key())
        entries = [
            e.record for e in link.state.audit.entries(50, "")
            if e.record.method.endswith("/RenewCertificate")
        ]  # fmt: skip
        assert [e.outcome for e in entries] == [
            "ok",
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
            "ok",
            "ok",
        ]  # newest first
        assert [e.detail.startswith("repeat: ") for e in entries if e.outcome == "ok"] == [
            True,
            True,
            False,
        ]
        assert f"answered serial {new.serial_number:x} again, nothing signed" in entries[0].detail


def _over_link(
    link: Link, pki: TestPki, chain_pem: bytes, key_pem: bytes, lost: list[bytes] | None = None
) -> Any:
    """A node's ``renew``: RenewCertificate on a channel that presents ``chain_pem``; with
    ``lost`` the link signs but the answer never arrives (kept in ``lost`` for the test)."""

    def renew(csr: bytes) -> bytes:
        with fleet(link, pki, chain_pem, key_pem) as stub:
            try:
                chain = _ask(stub, csr)
            except grpc.RpcError as error:
                raise Refused(f"the link refused: {error.details()}") from None
        if lost is not None:
            lost.append(chain)
            raise LinkUnreachable("the connection closed before the answer arrived")
        return chain

    return renew


def test_a_node_keeps_its_pending_key_across_lost_answers_and_a_restart(
    tmp_path: Path, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """The node's renewer writes the new key (0600) beside its key before asking, sends CSRs
    for that same key after each lost answer and after a restart, and installs the answer
    with it (the pending key then gone). Beside it, a copy of the node's previous certificate
    and key on another machine (its own pending key) is refused."""
    caplog.set_level(logging.INFO, "flwrmtls.node")
    clock = ShiftedClock()
    certfile, first_chain, first_key = enrolled(pki, SITE, tmp_path)
    keyfile = tmp_path / "site-1.key"
    keyfile.write_bytes(first_key)
    keyfile.chmod(0o600)
    current = x509.load_pem_x509_certificate(first_chain)
    with renewing_link(tmp_path, pki, clock) as link:
        lost: list[bytes] = []
        node = CertificateRenewer(
            certfile, keyfile, _over_link(link, pki, first_chain, first_key, lost), clock
        )
        next_key = tmp_path / "site-1.key.next"  # beside the key
        assert not next_key.exists()
        assert node.renew_once(current) is False  # signed, the answer lost
        assert next_key.stat().st_mode & 0o777 == 0o600
        pending = next_key.read_bytes()
        assert node.renew_once(current) is False  # lost again: the same key asked again
        assert next_key.read_bytes() == pending
        assert lost[0] == lost[1]
        assert certfile.read_bytes() == first_chain
        assert keyfile.read_bytes() == first_key
        assert "renewing with the key kept in" in caplog.text
        assert "PRIVATE" not in caplog.text  # its SHA-256 only
        assert pending.decode().splitlines()[1] not in caplog.text
        # The attack: the previous certificate and key copied elsewhere, its own new key.
        clock.shift = MIN_INTERVAL + timedelta(seconds=1)
        copy = tmp_path / "copy"
        copy.mkdir()
        (copy / "site-1.pem").write_bytes(first_chain)
        (copy / "site-1.key").write_bytes(first_key)
        thief = CertificateRenewer(
            copy / "site-1.pem", copy / "site-1.key",
            _over_link(link, pki, first_chain, first_key), clock,
        )  # fmt: skip
        caplog.clear()
        assert thief.renew_once(current) is False
        assert "renewed already" in caplog.text
        assert (copy / "site-1.pem").read_bytes() == first_chain
        # The control: the node, started again (a new renewer on the same files), asks with
        # the pending key and installs the certificate it lost, byte for byte.
        restarted = CertificateRenewer(
            certfile, keyfile, _over_link(link, pki, first_chain, first_key), clock
        )
        assert restarted.renew_once(current) is True
        assert certfile.read_bytes() == lost[0]
        assert keyfile.read_bytes() == pending
        assert keyfile.stat().st_mode & 0o777 == 0o600
        assert not next_key.exists()
        assert _renewals(link) == 1


def test_a_pending_key_that_may_be_exposed_or_is_no_new_key_is_replaced_not_sent(
    tmp_path: Path, pki: TestPki
) -> None:
    """A ``<keyfile>.next`` that others may read, that is no key, or that is the current
    certificate's own key is never certified: the node makes a new key instead (so the
    certificate installed is not on that key). The control is that renewal succeeding."""
    exposed = _pem(ec.generate_private_key(ec.SECP256R1()))
    with renewing_link(tmp_path, pki) as link:
        for number, planted in enumerate((exposed, b"not a key", None)):
            site = tmp_path / f"site-{number}"
            site.mkdir()
            certfile, chain, key_pem = enrolled(pki, Binding(f"site-{number}", "Hospital C"), site)
            keyfile = site / "node.key"
            keyfile.write_bytes(key_pem)
            keyfile.chmod(0o600)
            next_key = site / "node.key.next"
            next_key.write_bytes(key_pem if planted is None else planted)
            next_key.chmod(0o644 if planted is exposed else 0o600)
            node = CertificateRenewer(
                certfile, keyfile, _over_link(link, pki, chain, key_pem), ShiftedClock()
            )
            current = x509.load_pem_x509_certificate(chain)
            assert node.renew_once(current) is True  # the control: renewed, on a new key
            assert keyfile.read_bytes() not in (key_pem, exposed)
            assert not next_key.exists()
            leaf = x509.load_pem_x509_certificate(certfile.read_bytes())
            installed = serialization.load_pem_private_key(keyfile.read_bytes(), None)
            assert _spki(leaf.public_key()) == _spki(installed.public_key())
        assert _renewals(link) == 3
