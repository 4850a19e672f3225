"""What a certificate request may get: the token's identity on the CSR's key, nothing else.

Rules kept here (pure: a request and a token's binding in, a decision out):

* The CSR is DER, at most :data:`MAX_CSR_BYTES`; it must parse with cryptography, and its
  signature must verify with the public key it carries (the requester holds that key).
* Its key is RSA of 2048 to 8192 bits, or EC on P-256 or P-384. Anything else (a shorter RSA
  key, another curve, Ed25519, DSA) is refused, naming what it is.
* Its Subject is exactly the one the token binds (the same attributes in the same order).
* It may ask only for what a node certificate carries, exactly as the link writes it: the
  token's SPIFFE ID as the only SAN, a URI (or no SAN without one), basicConstraints CA:FALSE,
  extended key usage clientAuth alone, keyUsage within digitalSignature (and
  keyEncipherment for RSA). Asking for anything else (another SAN, CA:TRUE, another usage,
  any other extension) is refused, naming it: the link never signs more than the token
  allows, and says so rather than quietly dropping what was asked.
* The certificate is then built from the token's binding and the link's node profile
  (:mod:`flwrmtls.enroll.issuer`); of the CSR only its public key is used.
* The lifetime asked for (``days``; 0: the link's) may not exceed the link's
  ``--enroll-certificate-days``.
* Each refusal is :class:`CsrRefused`, one line saying what is wrong.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.enroll.tokens import Binding
from flwrmtls.pki.privatekeys import PublicKey, describe_public_key

__all__ = [
    "MAX_CSR_BYTES",
    "CsrRefused",
    "SigningRequest",
    "check_request",
    "key_fingerprint",
    "load_csr",
]

MAX_CSR_BYTES = 8192
"""A CSR for an 8192-bit RSA key is about 2.2 KB."""
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_RSA_BITS = (2048, 8192)


class CsrRefused(Exception):
    """A certificate request the link does not sign; ``str()`` says why, in one line."""


@dataclass(frozen=True, slots=True)
class SigningRequest:
    """What the link will sign: the token's identity on the requester's key."""

    binding: Binding
    public_key: PublicKey
    days: int
    key_fingerprint: str
    """``sha256:<hex>`` of the key's SubjectPublicKeyInfo, as the node prints it."""


def key_fingerprint(key: PublicKey) -> str:
    """``sha256:<hex>`` of a public key's DER SubjectPublicKeyInfo."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_csr(der: bytes) -> x509.CertificateSigningRequest:
    """The CSR in ``der``, its signature verified; CsrRefused otherwise."""
    if not der:
        raise CsrRefused("the request carries no CSR")
    if len(der) > MAX_CSR_BYTES:
        raise CsrRefused(f"the CSR is {len(der)} bytes, over the {MAX_CSR_BYTES} the link reads")
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
    except ValueError as error:
        raise CsrRefused(f"the CSR cannot be read: {error}") from None
    if not valid:
        raise CsrRefused(
            "the CSR's signature does not verify with the key it carries: it was not made by "
            "the holder of that key"
        )
    return csr


def _checked_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    try:
        key = csr.public_key()
    except (ValueError, TypeError) as error:
        raise CsrRefused(f"the CSR's key cannot be read: {error}") from None
    if isinstance(key, rsa.RSAPublicKey):
        low, high = _RSA_BITS
        if not low <= key.key_size <= high:
            raise CsrRefused(
                f"the CSR's key is RSA {key.key_size}: the link signs RSA keys of {low} to "
                f"{high} bits, or EC keys on P-256 or P-384"
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise CsrRefused(
                f"the CSR's key is {describe_public_key(key)}: the link signs EC keys on P-256 "
                "or P-384 only (or RSA keys of 2048 bits or more)"
            )
        return key
    raise CsrRefused(
        f"the CSR's key is {describe_public_key(key)}: the link signs EC keys on P-256 or "
        "P-384, or RSA keys of 2048 bits or more"
    )


def _name(oid: x509.ObjectIdentifier) -> str:
    return getattr(oid, "_name", None) or oid.dotted_string


def _check_extensions(csr: x509.CertificateSigningRequest, binding: Binding, rsa_key: bool) -> None:
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as error:
        raise CsrRefused(f"the CSR's extensions cannot be read: {error}") from None
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.SubjectAlternativeName):
            if list(value) != binding.subject_alternative_names():  # the type counts too
                asked = [f"{type(name).__name__} {name.value}" for name in value]
                raise CsrRefused(
                    f"the CSR asks for the subject alternative names {asked}: this token "
                    + (
                        f"allows the SPIFFE ID {binding.spiffe_id} alone"
                        if binding.spiffe_id
                        else "allows none"
                    )
                )
        elif isinstance(value, x509.BasicConstraints):
            if value.ca:
                raise CsrRefused(
                    "the CSR asks for a CA certificate (basicConstraints CA:TRUE): the link "
                    "signs node certificates only"
                )
        elif isinstance(value, x509.ExtendedKeyUsage):
            usages = list(value)
            if usages != [ExtendedKeyUsageOID.CLIENT_AUTH]:
                named = ", ".join(_name(oid) for oid in usages) or "none"
                raise CsrRefused(
                    f"the CSR asks for the extended key usages {named}: a node certificate "
                    "has clientAuth alone"
                )
        elif isinstance(value, x509.KeyUsage):
            allowed_usages = {"digital_signature"} | ({"key_encipherment"} if rsa_key else set())
            asked_usages = {
                name
                for name in (
                    "digital_signature", "content_commitment", "key_encipherment",
                    "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                )
                if getattr(value, name)
            }  # fmt: skip
            if not asked_usages <= allowed_usages:
                extra = ", ".join(sorted(asked_usages - allowed_usages))
                raise CsrRefused(
                    f"the CSR asks for the key usages {extra}: a node certificate has "
                    "digitalSignature (and keyEncipherment for RSA) only"
                )
        else:
            raise CsrRefused(
                f"the CSR asks for the extension {_name(extension.oid)}, which the link does "
                "not put in node certificates"
            )


def check_request(der: bytes, binding: Binding, *, days: int, max_days: int) -> SigningRequest:
    """What the link signs for the CSR in ``der`` under a token binding ``binding``, asked
    for ``days`` (0: ``max_days``); CsrRefused when it asks for anything else."""
    csr = load_csr(der)
    key = _checked_key(csr)
    expected = binding.subject()
    if csr.subject != expected:
        raise CsrRefused(
            f"the CSR asks for the Subject {csr.subject.rfc4514_string()!r}: this token allows "
            f"{expected.rfc4514_string()!r} only"
        )
    _check_extensions(csr, binding, isinstance(key, rsa.RSAPublicKey))
    if days < 0 or days > max_days:
        raise CsrRefused(
            f"the request asks for {days} days: the link signs node certificates for at most "
            f"{max_days} days (--enroll-certificate-days)"
        )
    return SigningRequest(
        binding=binding,
        public_key=key,
        days=days or max_days,
        key_fingerprint=key_fingerprint(key),
    )
