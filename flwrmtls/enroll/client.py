"""A new site's side of the Enrollment API: find the CA, ask what the token allows, ask for
the certificate, check what comes back.

Rules kept here:

* The token is sent only over a channel that verified the link against the CA the site
  trusts: ``--root-certificates``, or the CA whose public key has the SHA-256 the operator
  gave (``--ca-cert-hash sha256:<hex>``, of its SubjectPublicKeyInfo, as kubeadm's
  ``--discovery-token-ca-cert-hash``). To find that CA, :func:`discover_ca` reads the
  certificate the link presents (unverified), asks the link for its CA certificates over a
  channel pinned to that certificate, and keeps only a CA with that hash: a party in the
  middle can answer anything, but not a CA with that key. Every later call (the token's
  among them) goes over a channel verified against that CA alone, so the link's own chain
  must lead to it too.
* The CSR is built with cryptography and signed with the site's own key; the key never
  leaves :mod:`flwrmtls.node.enrollment`, which writes it 0600.
* The chain answered is used only if its leaf carries the site's public key, the Subject
  the token described (and its SPIFFE ID), and extended key usage clientAuth, and is no CA
  (neither basicConstraints CA:TRUE nor keyUsage keyCertSign or cRLSign)
  (:func:`check_chain`).
* A refusal the link states (the token, the request) is final: :class:`EnrollmentRefused`,
  one line. A link that is down or busy (``enroll-rate-limited``) is
  :class:`~flwrmtls.errors.LinkUnreachable`: retried by the caller.
"""

from __future__ import annotations

import functools
import hashlib
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.enroll.tokens import Binding
from flwrmtls.errors import FlwrmtlsError, InputError, LinkUnreachable, Refused
from flwrmtls.pki.certsigning import public_key_bytes
from flwrmtls.pki.privatekeys import PrivateKey
from flwrmtls.proto import enrollment_pb2, enrollment_pb2_grpc
from flwrmtls.wire.errors import ConnectionContext, call
from flwrmtls.wire.refusals import REFUSALS, Refusal, refusal_in

__all__ = [
    "Answer",
    "Described",
    "EnrollmentClient",
    "EnrollmentRefused",
    "build_csr",
    "check_chain",
    "discover_ca",
    "parse_ca_hash",
    "spki_sha256",
]

_CALL_TIMEOUT = 20.0
_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_T = TypeVar("_T")


class EnrollmentRefused(Refused):
    """The link refused this site's token or request: final, one line."""


@dataclass(frozen=True, slots=True)
class Described:
    """What the token allows, as the link described it."""

    binding: Binding
    expires_at: float
    max_days: int


@dataclass(frozen=True, slots=True)
class Answer:
    """The link's answer to a certificate request."""

    request_id: int
    chain_pem: bytes | None
    """The certificate chain, once issued; None while pending."""
    key_fingerprint: str


def _answer(answer: enrollment_pb2.RequestCertificateResponse) -> Answer:
    if answer.state == "issued":
        return Answer(
            answer.request_id, bytes(answer.certificate_chain_pem), answer.key_fingerprint
        )
    if answer.state == "pending":
        return Answer(answer.request_id, None, answer.key_fingerprint)
    raise EnrollmentRefused(
        f"the link answered a request state this node does not know: {answer.state!r}"
    )


def spki_sha256(certificate: x509.Certificate) -> str:
    """``sha256:<hex>`` of a certificate's SubjectPublicKeyInfo (what ``--ca-cert-hash`` pins)."""
    return "sha256:" + hashlib.sha256(public_key_bytes(certificate.public_key())).hexdigest()


def parse_ca_hash(text: str) -> str:
    """``sha256:<64 hex digits>``, lower-cased; InputError otherwise."""
    value = text.strip().lower()
    if not _HASH.fullmatch(value):
        raise InputError(
            f"--ca-cert-hash {text!r}: give sha256: and the 64 hex digits of the CA's public "
            "key hash, as `flwrmtls enroll token create` prints it (or `flwrmtls ca show` of "
            "the CA's ca.crt, as public key sha256)"
        )
    return value


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"enrollment address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def discover_ca(address: str, expected: str, timeout: float = _CALL_TIMEOUT) -> bytes:
    """The PEM of the link's CA whose public key hash is ``expected`` (see the module)."""
    host, port = _host_port(address)
    try:
        presented = ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as error:
        raise LinkUnreachable(
            f"cannot reach the link's enrollment API at {address}: {error}"
        ) from None
    credentials = grpc.ssl_channel_credentials(root_certificates=presented.encode("ascii"))
    with grpc.secure_channel(address, credentials) as pinned:
        stub = enrollment_pb2_grpc.EnrollmentStub(pinned)
        answer = call(
            lambda: stub.GetCaCertificates(
                enrollment_pb2.GetCaCertificatesRequest(), timeout=timeout
            ),
            _context(address),
            functools.partial(_stated, address=address),
        )
    try:
        offered = x509.load_pem_x509_certificates(answer.ca_certificates_pem)
    except ValueError:
        offered = []
    for certificate in offered:
        if spki_sha256(certificate) == expected:
            return certificate.public_bytes(serialization.Encoding.PEM)
    raise EnrollmentRefused(
        f"the link at {address} offers no CA with the public key hash {expected} (it offers "
        f"{', '.join(spki_sha256(c) for c in offered) or 'none'}): check --ca-cert-hash with "
        "the operator; nothing was sent to it"
    )


def build_csr(key: PrivateKey, binding: Binding) -> bytes:
    """A CSR (DER) for ``binding``'s Subject and SPIFFE ID, signed with ``key``."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(binding.subject())
    names = binding.subject_alternative_names()
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def check_chain(chain_pem: bytes, key: PrivateKey, binding: Binding) -> x509.Certificate:
    """The leaf of ``chain_pem`` if it is the certificate asked for (see the module)."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise EnrollmentRefused("the link answered no readable certificate chain") from None
    leaf = chain[0]
    if public_key_bytes(leaf.public_key()) != public_key_bytes(key.public_key()):
        raise EnrollmentRefused("the link answered a certificate for another key: not used")
    if _may_sign_certificates(leaf):
        raise EnrollmentRefused(
            "the link answered a CA certificate (basicConstraints CA:TRUE, or keyUsage that "
            "may sign certificates), not a node certificate: not used"
        )
    if leaf.subject != binding.subject():
        raise EnrollmentRefused(
            f"the link answered a certificate for {leaf.subject.rfc4514_string()}, not "
            f"{binding.subject().rfc4514_string()}: not used"
        )
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        spiffe = [str(name.value) for name in names]
    except x509.ExtensionNotFound:
        spiffe = []
    if spiffe != [str(name.value) for name in binding.subject_alternative_names()]:
        raise EnrollmentRefused("the link answered a certificate with other SANs: not used")
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise EnrollmentRefused("the link answered a certificate without clientAuth: not used")
    return leaf


def _may_sign_certificates(certificate: x509.Certificate) -> bool:
    try:
        if certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return bool(usage.key_cert_sign or usage.crl_sign)


def _stated(error: grpc.RpcError, *, address: str) -> FlwrmtlsError | None:
    """What the link stated (a code of the catalogue), as this client acts on it; None for
    anything else (:func:`~flwrmtls.wire.errors.call` translates that)."""
    refusal = refusal_in(error)
    if refusal is None:
        return None
    details = error.details() or REFUSALS[refusal].meaning
    if refusal is Refusal.ENROLL_RATE_LIMITED:
        return LinkUnreachable(f"the link at {address} is busy: {details}")
    return EnrollmentRefused(f"the link at {address} refused enrollment: {details}")


def _context(address: str) -> ConnectionContext:
    return ConnectionContext(address, tls=True, has_client_certificate=False, root_certificates="")


class EnrollmentClient:
    """The Enrollment API over a channel verified against ``roots``."""

    def __init__(self, address: str, roots: bytes) -> None:
        self.address = address
        self._channel = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=roots)
        )
        self._stub = enrollment_pb2_grpc.EnrollmentStub(self._channel)

    def _call(self, invoke: Callable[[], _T]) -> _T:
        return call(
            invoke, _context(self.address), functools.partial(_stated, address=self.address)
        )

    def describe(self, token: str) -> Described:
        answer = self._call(
            lambda: self._stub.DescribeToken(
                enrollment_pb2.DescribeTokenRequest(token=token), timeout=_CALL_TIMEOUT
            )
        )
        try:
            binding = Binding(
                common_name=answer.common_name,
                organization=answer.organization,
                organizational_unit=answer.organizational_unit,
                spiffe_id=answer.spiffe_id,
            )
        except InputError as error:
            raise EnrollmentRefused(f"the link described an unusable identity: {error}") from None
        return Described(binding, answer.expires_at, answer.max_days)

    def request(self, token: str, csr_der: bytes) -> Answer:
        """What the link did with ``csr_der``: issued it, or keeps it pending."""
        answer = self._call(
            lambda: self._stub.RequestCertificate(
                enrollment_pb2.RequestCertificateRequest(token=token, csr_der=csr_der),
                timeout=_CALL_TIMEOUT,
            )
        )
        return _answer(answer)

    def collect(self, token: str, request_id: int) -> Answer:
        """What became of a pending request (a denial is :class:`EnrollmentRefused`)."""
        answer = self._call(
            lambda: self._stub.CollectCertificate(
                enrollment_pb2.CollectCertificateRequest(token=token, request_id=request_id),
                timeout=_CALL_TIMEOUT,
            )
        )
        return _answer(answer)

    def close(self) -> None:
        self._channel.close()
