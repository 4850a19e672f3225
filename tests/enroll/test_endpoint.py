"""The Enrollment API of a real link on loopback, as anyone on the network may call it.

Each attack beside its control, through the same link and listener: a garbage CSR, a CSR
whose signature is not its key's, oversize fields, a replayed token, a token for another
identity, a CSR asking for more than the token allows (a CA, another usage, another SAN, a
weak key, a longer life), an expired or revoked token, a flood from one address; beside each,
the request that passes. What passes is a node certificate the link then admits over mTLS.
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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flwrmtls.enroll.config import EnrollmentConfig, EnrollMode
from flwrmtls.enroll.issuer import EnrollmentIssuer
from flwrmtls.enroll.tokens import Binding, new_token
from flwrmtls.link.server import Link
from flwrmtls.proto import control_pb2, control_pb2_grpc, enrollment_pb2, enrollment_pb2_grpc
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.refusals import Refusal, refusal_in

SITE = Binding("site-1", organization="Hospital C")
MAX_DAYS = 30


class ShiftedClock:
    """The real clock, moved ahead when a test says so (to let a token expire)."""

    def __init__(self) -> None:
        self.shift = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.shift

    def monotonic(self) -> float:
        return time.monotonic() + self.shift.total_seconds()


@contextmanager
def enrolling_link(
    tmp_path: Path, pki: TestPki, *, per_minute: int = 1000, address: str = "127.0.0.1:0",
    clock: ShiftedClock | None = None, mode: EnrollMode = EnrollMode.SIGN,
) -> Iterator[Link]:  # fmt: skip
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    issuer = EnrollmentIssuer.load(
        pki.ca.files.issuing_certificate, pki.ca.files.issuing_key,
        client_cas=config.client_ca_certificates, now=datetime.now(UTC),
    )  # fmt: skip
    enroll = EnrollmentConfig(
        mode, issuer, address=address, certificate_days=MAX_DAYS, per_minute=per_minute
    )
    with running_link(dataclasses.replace(config, enroll=enroll), clock) as link:
        yield link


def token_for(link: Link, binding: Binding = SITE, ttl: timedelta = timedelta(hours=1)) -> str:
    """A token as `enroll token create` makes one (the Control path is tested through the CLI)."""
    issued = new_token(binding, link.clock.now(), ttl, "operator")
    assert link.state.enroll.add(issued.record)
    return issued.text


@contextmanager
def enrollment(link: Link, pki: TestPki, host: str = "127.0.0.1") -> Iterator[Any]:
    credentials = grpc.ssl_channel_credentials(pki.trust_bundle_path.read_bytes())
    options = [("grpc.ssl_target_name_override", "localhost")]
    target = f"{host}:{link.enrollment_port}"
    with grpc.secure_channel(target, credentials, options=options) as channel:
        yield enrollment_pb2_grpc.EnrollmentStub(channel)


def csr(
    key: Any = None,
    subject: x509.Name | None = None,
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> tuple[bytes, Any]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or SITE.subject())
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    request = builder.sign(key, algorithm)
    return request.public_bytes(serialization.Encoding.DER), key


def ask(
    stub: Any, token: str, der: bytes, days: int = 0
) -> enrollment_pb2.RequestCertificateResponse:
    request = enrollment_pb2.RequestCertificateRequest(token=token, csr_der=der, days=days)
    answer: enrollment_pb2.RequestCertificateResponse = stub.RequestCertificate(request, timeout=20)
    return answer


def refused(stub: Any, token: str, der: bytes, days: int = 0) -> tuple[Refusal | None, str]:
    with pytest.raises(grpc.RpcError) as error:
        ask(stub, token, der, days)
    return refusal_in(error.value), str(error.value.details())


def admitted(link: Link, pki: TestPki, chain_pem: bytes, key: Any, tmp_path: Path) -> str:
    """The issued certificate joins as a node over mTLS: its identity."""
    chain, key_file = tmp_path / "enrolled.pem", tmp_path / "enrolled.key"
    chain.write_bytes(chain_pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=chain, key=key_file
    )
    try:
        return client.activate().identity
    finally:
        channel.close()


def test_a_valid_token_and_csr_get_a_node_certificate_the_link_admits(
    tmp_path: Path, pki: TestPki
) -> None:
    with enrolling_link(tmp_path, pki) as link, enrollment(link, pki) as stub:
        token = token_for(link)
        described = stub.DescribeToken(enrollment_pb2.DescribeTokenRequest(token=token))
        assert described.subject == "CN=site-1,O=Hospital C"
        assert described.max_days == MAX_DAYS
        der, key = csr()
        answer = ask(stub, token, der)
        chain = x509.load_pem_x509_certificates(answer.certificate_chain_pem)
        leaf = chain[0]
        assert leaf.subject == SITE.subject()
        assert leaf.issuer == pki.ca.issuing_certificate.subject
        assert chain[1] == pki.ca.issuing_certificate
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert not constraints.ca
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(
            days=MAX_DAYS, minutes=5
        )
        assert admitted(link, pki, answer.certificate_chain_pem, key, tmp_path) == (
            "CN=site-1,O=Hospital C"
        )
        # The trail has the attempt: who, what was issued to which key.
        (entry,) = [
            e for e in link.state.audit.entries(50, "")
            if e.record.method.endswith("/RequestCertificate")
        ]  # fmt: skip
        assert entry.record.outcome == "ok"
        assert entry.record.identity == f"join token {token.split('.')[0]}"
        assert answer.key_fingerprint in entry.record.detail


def test_a_token_is_used_once_and_another_identity_is_never_signed(
    tmp_path: Path, pki: TestPki
) -> None:
    with enrolling_link(tmp_path, pki) as link, enrollment(link, pki) as stub:
        token = token_for(link)
        # As a token holder asking for another site's Subject: refused, the token kept.
        other = Binding("site-2", organization="Hospital C").subject()
        code, why = refused(stub, token, csr(subject=other)[0])
        assert code is Refusal.CSR_REFUSED
        assert "this token allows 'CN=site-1,O=Hospital C' only" in why
        ask(stub, token, csr()[0])  # the control: its own Subject, once
        # Replayed: the same token again, even with a fresh key.
        code, why = refused(stub, token, csr()[0])
        assert code is Refusal.TOKEN_REFUSED
        assert "used already" in why
        outcomes = [
            e.record.outcome for e in link.state.audit.entries(50, "")
            if e.record.method.endswith("/RequestCertificate")
        ]  # fmt: skip
        assert outcomes == ["token-refused", "ok", "csr-refused"]  # newest first


def _rsa(bits: int) -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _with(*extensions: x509.ExtensionType, critical: bool = False) -> tuple[bytes, Any]:
    return csr(extensions=tuple((extension, critical) for extension in extensions))


_CERT_SIGN = x509.KeyUsage(True, False, False, False, False, True, False, False, False)
_CLIENT, _SERVER = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH
_SECOND_CN = x509.NameAttribute(NameOID.COMMON_NAME, "admin")
_MORE_THAN_ALLOWED: list[tuple[str, Any, str]] = [
    ("a CA", lambda: _with(x509.BasicConstraints(ca=True, path_length=None), critical=True),
     "CA:TRUE"),
    ("server auth", lambda: _with(x509.ExtendedKeyUsage([_SERVER])), "serverAuth"),
    ("code signing too",
     lambda: _with(x509.ExtendedKeyUsage([_CLIENT, ExtendedKeyUsageOID.CODE_SIGNING])),
     "codeSigning"),
    ("a DNS name", lambda: _with(x509.SubjectAlternativeName([x509.DNSName("a.example")])),
     "subject alternative names"),
    ("a SPIFFE ID the token lacks",
     lambda: _with(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://td/x")])),
     "allows none"),
    ("certificate signing", lambda: _with(_CERT_SIGN, critical=True), "key_cert_sign"),
    ("another extension", lambda: _with(x509.OCSPNoCheck()), "extension"),
    ("RSA 1024", lambda: csr(key=_rsa(1024)), "RSA 1024"),
    ("P-521", lambda: csr(key=ec.generate_private_key(ec.SECP521R1())), "P-521"),
    ("secp256k1", lambda: csr(key=ec.generate_private_key(ec.SECP256K1())), "secp256k1"),
    ("Ed25519", lambda: csr(key=ed25519.Ed25519PrivateKey.generate()), "Ed25519"),
    ("a second CN", lambda: csr(subject=x509.Name([*SITE.subject(), _SECOND_CN])),
     "this token allows"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "build", "why"), _MORE_THAN_ALLOWED)
def test_a_csr_asking_for_more_than_the_token_allows_is_refused_and_the_token_kept(
    tmp_path: Path, pki: TestPki, what: str, build: Any, why: str
) -> None:
    with enrolling_link(tmp_path, pki) as link, enrollment(link, pki) as stub:
        token = token_for(link)
        code, details = refused(stub, token, build()[0])
        assert code is Refusal.CSR_REFUSED, details
        assert why in details
        # The control, with the same token: what a node certificate carries, RSA 2048 and
        # P-384 included, and a lifetime up to the link's.
        der, _ = csr(
            key=_rsa(2048) if "RSA" in what else ec.generate_private_key(ec.SECP384R1()),
            extensions=(
                (x509.BasicConstraints(ca=False, path_length=None), True),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            ),
        )
        assert ask(stub, token, der, days=MAX_DAYS).certificate_chain_pem


def test_a_spiffe_id_asked_for_as_another_kind_of_name_is_refused(
    tmp_path: Path, pki: TestPki
) -> None:
    """As a token holder asking for the token's SPIFFE ID as a DNS name (or another kind of
    name with the same text): refused, not quietly signed as the URI; the URI passes."""
    spiffe = "spiffe://hospital-c.example/site-1"
    binding = Binding("site-1", organization="Hospital C", spiffe_id=spiffe)
    with enrolling_link(tmp_path, pki) as link, enrollment(link, pki) as stub:
        token = token_for(link, binding)
        for name in (x509.DNSName(spiffe), x509.RFC822Name(spiffe)):
            der, _ = csr(extensions=((x509.SubjectAlternativeName([name]), False),))
            code, why = refused(stub, token, der)
            assert code is Refusal.CSR_REFUSED, why
            assert "subject alternative names" in why
        uri = x509.UniformResourceIdentifier(spiffe)
        der, _ = csr(extensions=((x509.SubjectAlternativeName([uri]), False),))
        leaf = x509.load_pem_x509_certificate(ask(stub, token, der).certificate_chain_pem)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert list(names) == [uri]


def test_a_longer_life_than_the_link_allows_is_refused(tmp_path: Path, pki: TestPki) -> None:
    with enrolling_link(tmp_path, pki) as link, enrollment(link, pki) as stub:
        token = token_for(link)
        code, why = refused(stub, token, csr()[0], days=MAX_DAYS + 1)
        assert code is Refusal.CSR_REFUSED
        assert f"at most {MAX_DAYS} days" in why
        leaf = x509.load_pem_x509_certificate(
            ask(stub, token, csr()[0], days=7).certificate_chain_pem
        )
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(days=7, minutes=5)


def test_garbage_a_forged_signature_and_oversize_fields_are_refused(
    tmp_path: Path, pki: TestPki
) -> None:
    with enrolling_link(tmp_path, pki) as link, enrollment(link, pki) as stub:
        token = token_for(link)
        code, why = refused(stub, token, b"\x30\x82garbage")
        assert code is Refusal.CSR_REFUSED
        assert "cannot be read" in why
        # A CSR whose signature is not its key's: its last byte changed.
        der, _ = csr()
        code, why = refused(stub, token, der[:-1] + bytes([der[-1] ^ 1]))
        assert code is Refusal.CSR_REFUSED
        assert "does not verify with the key it carries" in why
        # Oversize: a CSR field over what the link reads, a token field over its bound, and a
        # message over the listener's limit (grpc refuses it before the servicer runs).
        code, why = refused(stub, token, b"\x30" * 9000)
        assert code is Refusal.CSR_REFUSED
        assert "over the 8192 the link reads" in why
        code, _ = refused(stub, "a" * 5000, csr()[0])
        assert code is Refusal.TOKEN_REFUSED
        with pytest.raises(grpc.RpcError) as too_big:
            ask(stub, token, b"\x30" * (32 << 10))
        assert too_big.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # The control: the same token still works (none of the above used it).
        assert ask(stub, token, csr()[0]).certificate_chain_pem


def test_unknown_expired_and_revoked_tokens_are_refused_with_a_reason(
    tmp_path: Path, pki: TestPki
) -> None:
    clock = ShiftedClock()
    with enrolling_link(tmp_path, pki, clock=clock) as link, enrollment(link, pki) as stub:
        good, expiring, revoking = token_for(link), token_for(link), token_for(link)
        token_id, secret = good.split(".")
        wrong_secret = f"{token_id}.{'A' * 43}"
        unknown = f"0badc0de.{secret}"
        for text in (wrong_secret, unknown):  # the same answer: nothing learned about ids
            code, why = refused(stub, text, csr()[0])
            assert code is Refusal.TOKEN_REFUSED
            assert why.startswith("unknown join token (or a wrong secret)")
        assert link.state.enroll.revoke(revoking.split(".")[0], link.clock.now())
        code, why = refused(stub, revoking, csr()[0])
        assert code is Refusal.TOKEN_REFUSED
        assert "revoked by an operator" in why
        assert ask(stub, good, csr()[0]).certificate_chain_pem  # the control
        clock.shift = timedelta(hours=2)
        code, why = refused(stub, expiring, csr()[0])
        assert code is Refusal.TOKEN_REFUSED
        assert "has expired" in why


def test_callers_without_a_tokens_secret_cannot_push_real_enrollments_out_of_the_trail(
    tmp_path: Path, pki: TestPki
) -> None:
    """As anyone on the network (from as many addresses as it likes) calling with no token,
    an unknown id or a wrong secret: each call is audited with the other refusals (class
    ``refusal``), never in the ``enrollment`` class, which only callers holding a token's
    secret write to, so no volume of them can push a real enrollment's record out."""
    from flwrmtls.auth.audit import Retention

    with enrolling_link(tmp_path, pki) as link, enrollment(link, pki) as stub:
        token = token_for(link)
        token_id, secret = token.split(".")
        attacks = ("not a token", f"{token_id}.{'A' * 43}", f"0badc0de.{secret}")
        for text in attacks:
            with pytest.raises(grpc.RpcError):
                stub.DescribeToken(enrollment_pb2.DescribeTokenRequest(token=text))
            assert refused(stub, text, csr()[0])[0] is Refusal.TOKEN_REFUSED
            with pytest.raises(grpc.RpcError):
                collect(stub, text, 1)
        # The controls, with the token's secret: a refused CSR, then the certificate.
        assert refused(stub, token, b"garbage")[0] is Refusal.CSR_REFUSED
        answer = ask(stub, token, csr()[0])
        assert collect(stub, token, answer.request_id).state == "issued"
        entries = [
            e.record for e in link.state.audit.entries(100, "")
            if e.record.method.startswith("/flwrmtls.proto.Enrollment/")
        ]  # fmt: skip
        anonymous = [r for r in entries if r.identity != f"join token {token_id}"]
        assert len(anonymous) == 3 * len(attacks)
        assert {r.retention for r in anonymous} == {Retention.REFUSAL}
        assert {r.outcome for r in anonymous} == {"token-refused"}
        holder = [r for r in entries if r.identity == f"join token {token_id}"]
        assert [r.outcome for r in holder] == ["ok", "csr-refused"]  # newest first
        assert {r.retention for r in holder} == {Retention.ENROLLMENT}


def test_a_flood_from_one_address_is_refused_and_other_addresses_and_nodes_are_served(
    tmp_path: Path, pki: TestPki
) -> None:
    """As anyone on the network hammering the only unauthenticated listener: after its
    budget its calls are refused before any parsing; another address, and the Fleet API,
    are served all along."""
    with (
        enrolling_link(tmp_path, pki, per_minute=5, address="[::]:0") as link,
        enrollment(link, pki, "127.0.0.1") as flooder,
        enrollment(link, pki, "[::1]") as neighbour,
    ):
        token = token_for(link)
        codes = []
        for _ in range(20):
            try:
                ask(flooder, token, b"garbage")
            except grpc.RpcError as error:
                codes.append(refusal_in(error))
        assert codes[:5] == [Refusal.CSR_REFUSED] * 5
        assert codes[5:] == [Refusal.ENROLL_RATE_LIMITED] * 15
        with pytest.raises(grpc.RpcError) as limited:
            ask(flooder, token, csr()[0])
        assert limited.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "retry in" in str(limited.value.details())
        assert ask(neighbour, token, csr()[0]).certificate_chain_pem
        chain, key = pki.paths("node-1")
        client, channel = node_client(
            link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
        )
        try:
            assert client.activate().identity == "CN=node-1,O=Hospital A"
        finally:
            channel.close()
        # Calls refused for the rate are not written to the trail: a flood costs a counter.
        attempts = [e for e in link.state.audit.entries(100, "")
                    if e.record.method.startswith("/flwrmtls.proto.Enrollment/")]  # fmt: skip
        assert len(attempts) == 6


class _From:
    """A call's context as the servicer reads it: only its peer. grpc on loopback can make no
    other IPv6 address than ::1, so calls from one /64's many addresses are made here."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def test_an_ipv6_host_calling_from_many_addresses_of_its_64_has_one_budget(
    tmp_path: Path, pki: TestPki
) -> None:
    """As anyone on the network with an IPv6 /64 (what one host is given): each call from a
    new address of it pays the same budget, so once it is spent every address of the /64 is
    refused; an address of another /64, and an IPv4 caller, are served."""
    import asyncio

    from flwrmtls.enroll.servicer import EnrollmentServicer
    from flwrmtls.testing.clock import FakeClock
    from flwrmtls.wire.refusals import CallRefused

    with enrolling_link(tmp_path, pki, per_minute=5) as link:
        servicer = EnrollmentServicer(
            link.state.enroll, link.config.enroll.issuer, FakeClock(),  # type: ignore[union-attr]
            ca_certificates_pem=b"", certificate_days=MAX_DAYS, per_minute=5,
        )  # fmt: skip

        def call(peer: str) -> Refusal | None:
            request = enrollment_pb2.GetCaCertificatesRequest()
            try:
                asyncio.run(servicer.GetCaCertificates(request, _From(peer)))  # type: ignore[arg-type]
            except CallRefused as refused:
                return refused.refusal
            return None

        attacker = [f"ipv6:[2001:db8:1:2::{i:x}]:4{i:04d}" for i in range(1, 30)]
        outcomes = [call(peer) for peer in attacker]
        assert outcomes[:5] == [None] * 5
        assert outcomes[5:] == [Refusal.ENROLL_RATE_LIMITED] * (len(attacker) - 5)
        assert call("ipv6:[::ffff:192.0.2.7]:40000") is None  # the control: other callers
        assert call("ipv6:[2001:db8:1:3::1]:40000") is None
        assert call("ipv4:192.0.2.8:40000") is None


def test_only_the_enrollment_methods_are_served_there(tmp_path: Path, pki: TestPki) -> None:
    """The enrollment listener serves no Fleet or Control method: a node's call there is told
    which door it knocked on; and the Fleet listener serves no enrollment."""
    from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc

    with enrolling_link(tmp_path, pki) as link:
        credentials = grpc.ssl_channel_credentials(pki.trust_bundle_path.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{link.enrollment_port}", credentials) as channel:
            with pytest.raises(grpc.RpcError) as wrong:
                fleet_pb2_grpc.FleetStub(channel).ActivateNode(fleet_pb2.ActivateNodeRequest())
            assert wrong.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert "Enrollment API" in str(wrong.value.details())


def collect(stub: Any, token: str, request_id: int) -> enrollment_pb2.RequestCertificateResponse:
    request = enrollment_pb2.CollectCertificateRequest(token=token, request_id=request_id)
    answer: enrollment_pb2.RequestCertificateResponse = stub.CollectCertificate(request)
    return answer


def test_a_pending_request_is_collected_with_its_own_token_only_once_approved(
    tmp_path: Path, pki: TestPki
) -> None:
    """--enroll-mode approve: a request waits; another token holder cannot collect it, nor
    can a wrong secret; once an operator approves it (the Control API, as `flwrmtls enroll
    approve` calls it) its own token collects the certificate for its own key."""
    with (
        enrolling_link(tmp_path, pki, mode=EnrollMode.APPROVE) as link,
        enrollment(link, pki) as stub,
    ):
        mine, other = token_for(link), token_for(link, Binding("site-2"))
        der, key = csr()
        pending = ask(stub, mine, der)
        assert pending.state == "pending"
        assert not pending.certificate_chain_pem
        theirs = ask(stub, other, csr(subject=Binding("site-2").subject())[0])
        assert theirs.request_id != pending.request_id
        for token in (other, f"{mine.split('.')[0]}.{'A' * 43}"):
            with pytest.raises(grpc.RpcError) as refused_collect:
                collect(stub, token, pending.request_id)
            assert refusal_in(refused_collect.value) is Refusal.TOKEN_REFUSED
        assert collect(stub, mine, pending.request_id).state == "pending"
        code, why = refused(stub, mine, csr()[0])  # the token made its one request
        assert code is Refusal.TOKEN_REFUSED
        assert "used already" in why
        operator = pki.paths("cli-operator")
        identity = load_tls_identity(*operator, cert_flag="c", key_flag="k")
        credentials = channel_credentials(pki.trust_bundle_path.read_bytes(), identity)
        with grpc.secure_channel(f"127.0.0.1:{link.control_port}", credentials) as channel:
            control = control_pb2_grpc.ControlStub(channel)
            decided = control.DecideEnrollRequest(
                control_pb2.DecideEnrollRequestRequest(request_id=pending.request_id, approve=True)
            ).request
            assert decided.state == "issued"
            assert decided.key_fingerprint == pending.key_fingerprint
            control.DecideEnrollRequest(
                control_pb2.DecideEnrollRequestRequest(request_id=theirs.request_id, reason="no")
            )
        issued = collect(stub, mine, pending.request_id)
        assert issued.state == "issued"
        assert (
            admitted(link, pki, issued.certificate_chain_pem, key, tmp_path)
            == "CN=site-1,O=Hospital C"
        )
        with pytest.raises(grpc.RpcError) as denial:
            collect(stub, other, theirs.request_id)
        assert refusal_in(denial.value) is Refusal.REQUEST_DENIED
        assert "was denied by role=operator,CN=cli-operator: no" in str(denial.value.details())
