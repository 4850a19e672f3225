"""OCSP (RFC 6960) as the link asks about a client certificate: pure functions over values.

Rules kept here:

* Only certificates of a chain the link has **verified** against its client CA bundle are
  asked about (:func:`ocsp_subjects`), so every responder URL the link uses was written by a
  CA it trusts, or by its operator (``--ocsp URL``); never by whoever opened a connection.
* Which responder: ``--ocsp URL`` asks that responder about the chain's leaf (the node or CLI
  certificate), whatever the leaf names; every other certificate of the chain (and the leaf
  with ``--ocsp aia``) is asked about at the first responder its AuthorityInformationAccess
  names with an http or https URL. A certificate that names none is not checked by OCSP. One
  that names OCSP responders only by other schemes (``file:``, ``ldap:``, ...) gets no URL and
  a ``problem``: it is refused (fail closed), and nothing is fetched.
* A URL is used only if it is http or https with a host and no user name or password
  (:func:`responder_url`).
* A request names one certificate by CertID (SHA-1, which RFC 5019 requires responders to
  support) and carries a fresh nonce of 32 bytes (RFC 8954).
* An answer counts only when (:func:`verify_response`): the response status is
  ``successful``; exactly one of its single responses has the CertID asked about (hash
  algorithm, issuer name hash, issuer key hash, serial); it is signed by the certificate's
  issuer (the key from the verified chain, never one the answer brings) or by a delegated
  responder: a certificate the answer carries that the issuer signed directly, with extended
  key usage id-kp-OCSPSigning, keyUsage digitalSignature (if it has keyUsage), valid now, and
  named by the response's responder ID; its nonce is the one sent (an answer without one is
  taken only from a responder that never echoed one: ``nonce_required``); its thisUpdate is
  not more than :data:`CLOCK_SKEW` ahead of the link's clock, its nextUpdate (if any) not
  before its thisUpdate nor past; no critical extension the link does not understand.
  Anything else raises :class:`OcspResponseRefused`, one line saying what is wrong.
* The delegated responder's own revocation is not checked (RFC 6960 4.2.2.2.1 leaves it to
  the CA: short-lived responder certificates, or id-pkix-ocsp-nocheck).
"""

from __future__ import annotations

import enum
import hashlib
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    OCSPExtensionOID,
    SignatureAlgorithmOID,
)

from flwrmtls.auth.crlfile import CLOCK_SKEW

__all__ = [
    "NONCE_BYTES",
    "CertStatus",
    "OcspAnswer",
    "OcspMode",
    "OcspResponseRefused",
    "OcspSubject",
    "build_request",
    "ocsp_subjects",
    "responder_url",
    "verify_response",
]

NONCE_BYTES = 32
"""RFC 8954: responders must accept nonces of 1 to 32 bytes; 32 is what it recommends."""

_URL_SCHEMES = frozenset({"http", "https"})
_MAX_URL_LENGTH = 2048
_UNDERSTOOD_RESPONSE_EXTENSIONS = frozenset({OCSPExtensionOID.NONCE})


class OcspMode(enum.StrEnum):
    """``--ocsp``: whom the link asks (see the module's rules)."""

    OFF = "off"
    AIA = "aia"
    URL = "url"


class CertStatus(enum.StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class OcspResponseRefused(Exception):
    """An answer the link does not use; ``str()`` says why, in one line."""


@dataclass(frozen=True, slots=True, eq=False)
class OcspSubject:
    """One certificate of a verified chain that the link asks an OCSP responder about."""

    key: tuple[bytes, int]
    """(SHA-256 of the issuer's public key, serial): the certificate, as a CertID names it."""
    certificate: x509.Certificate
    issuer: x509.Certificate
    url: str | None
    """The responder asked; None when ``problem`` says why there is none."""
    problem: str | None
    issuer_display: str
    is_leaf: bool

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def describe(self) -> str:
        return f"serial {self.serial:x} of issuer {self.issuer_display}"


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """What a verified answer says about one certificate."""

    status: CertStatus
    this_update: datetime
    next_update: datetime | None
    revoked_at: datetime | None
    reason: str | None
    """The CRLReason name (``keyCompromise``...), None when the answer gives none."""
    nonce_echoed: bool
    signer: str
    """``the issuer``, or ``delegated responder CN=...``."""


def responder_url(text: str) -> str:
    """``text`` if it is a URL the link may ask: http or https, a host, no credentials.

    Raises ValueError saying what is wrong otherwise.
    """
    if len(text) > _MAX_URL_LENGTH or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("not a URL (too long, or it holds spaces or control characters)")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError as error:
        raise ValueError(f"not a URL ({error})") from None
    if parts.scheme.lower() not in _URL_SCHEMES:
        raise ValueError(
            f"the scheme {parts.scheme or '(none)'!r} is not used: the link asks OCSP "
            "responders over http or https only"
        )
    if not parts.hostname:
        raise ValueError("it names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("it carries a user name or password, which the link does not send")
    del port
    return text


def _aia_ocsp_urls(certificate: x509.Certificate) -> list[str]:
    try:
        access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return []
    return [
        str(description.access_location.value)
        for description in access.value
        if description.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(description.access_location, x509.UniformResourceIdentifier)
    ]


def _issuer_key_digest(issuer: x509.Certificate) -> bytes:
    der = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def _subject(
    certificate: x509.Certificate, issuer: x509.Certificate, is_leaf: bool, configured: str | None
) -> OcspSubject | None:
    url: str | None = None
    problem: str | None = None
    if is_leaf and configured is not None:
        url = configured
    else:
        named = _aia_ocsp_urls(certificate)
        if not named:
            return None
        refused = []
        for candidate in named:
            try:
                url = responder_url(candidate)
                break
            except ValueError as error:
                refused.append(f"{candidate!r}: {error}")
        if url is None:
            problem = (
                "the certificate names OCSP responders the link will not ask ("
                + "; ".join(refused)
                + "), so its revocation cannot be checked"
            )
    return OcspSubject(
        key=(_issuer_key_digest(issuer), certificate.serial_number),
        certificate=certificate,
        issuer=issuer,
        url=url,
        problem=problem,
        issuer_display=issuer.subject.rfc4514_string(),
        is_leaf=is_leaf,
    )


def ocsp_subjects(
    chain: Sequence[x509.Certificate], mode: OcspMode, url: str | None = None
) -> tuple[OcspSubject, ...]:
    """The certificates of a **verified** ``chain`` (leaf first, trust anchor last) that the
    link asks a responder about under ``mode`` (``url``: the configured responder)."""
    if mode is OcspMode.OFF:
        return ()
    configured = url if mode is OcspMode.URL else None
    found = (
        _subject(certificate, issuer, index == 0, configured)
        for index, (certificate, issuer) in enumerate(pairwise(chain))
    )
    return tuple(subject for subject in found if subject is not None)


def build_request(subject: OcspSubject, nonce: bytes) -> bytes:
    """The DER request asking about ``subject`` with ``nonce``."""
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(subject.certificate, subject.issuer, hashes.SHA1())  # noqa: S303 - RFC 5019
        .add_extension(x509.OCSPNonce(nonce), critical=False)
        .build()
    )
    return request.public_bytes(serialization.Encoding.DER)


def _cert_id(subject: OcspSubject, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes] | None:
    """(issuer name hash, issuer key hash) of ``subject`` under ``algorithm``; None for an
    algorithm a CertID may not use."""
    try:
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(subject.certificate, subject.issuer, algorithm)
            .build()
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return request.issuer_name_hash, request.issuer_key_hash


def _ours(response: ocsp.OCSPResponse, subject: OcspSubject) -> ocsp.OCSPSingleResponse:
    matching = []
    for single in response.responses:
        if single.serial_number != subject.serial:
            continue
        expected = _cert_id(subject, single.hash_algorithm)
        if expected == (single.issuer_name_hash, single.issuer_key_hash):
            matching.append(single)
    if not matching:
        asked_about = ", ".join(f"serial {single.serial_number:x}" for single in response.responses)
        raise OcspResponseRefused(
            f"the answer is about another certificate ({asked_about or 'none'}), not "
            f"{subject.describe()}"
        )
    if len(matching) > 1:
        raise OcspResponseRefused(f"the answer holds {len(matching)} answers for this certificate")
    return matching[0]


def _key_hash(certificate: x509.Certificate) -> bytes:
    """SHA-1 of the certificate's subjectPublicKey, as a responder ID by key names it."""
    return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def _names(response: ocsp.OCSPResponse, certificate: x509.Certificate) -> bool:
    """Whether the response's responder ID names ``certificate``."""
    if response.responder_key_hash is not None:
        return response.responder_key_hash == _key_hash(certificate)
    return response.responder_name == certificate.subject


def _responder_id(response: ocsp.OCSPResponse) -> str:
    if response.responder_key_hash is not None:
        return f"the key with SHA-1 {response.responder_key_hash.hex()}"
    assert response.responder_name is not None
    return response.responder_name.rfc4514_string()


def _delegation_problem(
    responder: x509.Certificate, issuer: x509.Certificate, now: datetime
) -> str | None:
    """Why ``responder`` may not answer for ``issuer``'s certificates, or None."""
    name = responder.subject.rfc4514_string()
    try:
        responder.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return (
            f"the answer is signed by {name}, which the certificate's issuer did not issue, so "
            "it may not answer for the issuer's certificates"
        )
    try:
        usages = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        return (
            f"the answer is signed by {name}, whose certificate lacks the extended key usage "
            "id-kp-OCSPSigning, so it may not answer for its issuer"
        )
    try:
        key_usage = responder.extensions.get_extension_for_class(x509.KeyUsage).value
        if not key_usage.digital_signature:
            return f"the answer is signed by {name}, whose keyUsage lacks digitalSignature"
    except x509.ExtensionNotFound:
        pass
    if not responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
        return (
            f"the answer is signed by {name}, whose certificate is not valid now (valid "
            f"{responder.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{responder.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
        )
    return None


def _signer(
    response: ocsp.OCSPResponse, subject: OcspSubject, now: datetime
) -> tuple[x509.Certificate, str]:
    """The certificate whose key must have signed ``response``, and how to name it."""
    if _names(response, subject.issuer):
        return subject.issuer, "the issuer"
    for candidate in response.certificates:
        if not _names(response, candidate):
            continue
        problem = _delegation_problem(candidate, subject.issuer, now)
        if problem is not None:
            raise OcspResponseRefused(problem)
        return candidate, f"delegated responder {candidate.subject.rfc4514_string()}"
    raise OcspResponseRefused(
        f"the answer is signed by {_responder_id(response)}, which is neither the certificate's "
        "issuer nor a responder certificate the answer carries"
    )


def _signature_valid(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    if response.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
        raise OcspResponseRefused(
            "the answer is signed with RSASSA-PSS, which the link does not take"
        )
    key = signer.public_key()
    data, signature = response.tbs_response_bytes, response.signature
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_extensions(extensions: x509.Extensions, where: str) -> None:
    for extension in extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_RESPONSE_EXTENSIONS:
            raise OcspResponseRefused(
                f"the answer has a critical {where} extension the link does not understand "
                f"({extension.oid.dotted_string})"
            )


def _nonce_of(response: ocsp.OCSPResponse) -> bytes | None:
    try:
        return response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def verify_response(
    subject: OcspSubject,
    der: bytes,
    *,
    nonce: bytes,
    nonce_required: bool,
    now: datetime,
) -> OcspAnswer:
    """What a responder's ``der`` answer says about ``subject``, once the module's rules
    hold; :class:`OcspResponseRefused` otherwise."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as error:
        raise OcspResponseRefused(f"the answer is not an OCSP response ({error})") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspResponseRefused(
            f"the responder answered {response.response_status.name.lower()!r} instead of an answer"
        )
    try:
        single = _ours(response, subject)
        signer, signed_by = _signer(response, subject, now)
        _check_extensions(response.extensions, "response")
        _check_extensions(response.single_extensions, "single response")
        status = single.certificate_status
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        revoked_at = single.revocation_time_utc
        reason = single.revocation_reason
        echoed = _nonce_of(response)
    except (ValueError, TypeError) as error:  # a field cryptography cannot read
        raise OcspResponseRefused(f"the answer cannot be read ({error})") from None
    if not _signature_valid(response, signer):
        raise OcspResponseRefused(
            f"the answer's signature does not verify with the key of {signed_by}"
        )
    if echoed is not None and echoed != nonce:
        raise OcspResponseRefused(
            "the answer carries another nonce than the link sent (a replayed or misdirected answer)"
        )
    if echoed is None and nonce_required:
        raise OcspResponseRefused(
            "the answer carries no nonce, though this responder echoed the link's nonces before "
            "(a replayed answer?)"
        )
    if this_update > now + CLOCK_SKEW:
        raise OcspResponseRefused(
            f"the answer was made in the future (thisUpdate {_utc(this_update)}): check the "
            "clocks of the link and the responder"
        )
    if next_update is not None and next_update < this_update:
        raise OcspResponseRefused("the answer's nextUpdate is before its thisUpdate")
    if next_update is not None and now > next_update:
        raise OcspResponseRefused(
            f"the answer is stale (its nextUpdate {_utc(next_update)} passed)"
        )
    return OcspAnswer(
        status=_STATUS[status],
        this_update=this_update,
        next_update=next_update,
        revoked_at=revoked_at,
        reason=str(reason.value) if reason is not None else None,
        nonce_echoed=echoed is not None,
        signer=signed_by,
    )


_STATUS = {
    ocsp.OCSPCertStatus.GOOD: CertStatus.GOOD,
    ocsp.OCSPCertStatus.REVOKED: CertStatus.REVOKED,
    ocsp.OCSPCertStatus.UNKNOWN: CertStatus.UNKNOWN,
}
