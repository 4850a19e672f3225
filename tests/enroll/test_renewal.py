"""Renewing an enrolled certificate through a real link on loopback: over mTLS, authenticated
by the current certificate, no token.

Each attack beside its control: a node renewing with its revoked certificate beside one
renewing with its good one; renewing twice in a row; a CSR for another identity; a link that
does not enroll; a certificate of another CA.
"""

from __future__ import annotations

import dataclasses
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
from flwrmtls.link.server import Link
from flwrmtls.node.renewal import renew_at
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
