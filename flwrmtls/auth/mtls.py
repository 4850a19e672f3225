"""The mTLS authenticator: the caller is who its verified certificate says.

The TLS handshake (BoringSSL, inside grpcio) is the first gate. This is the second, run by the
link itself because the handshake alone is lenient in ways x509-limbo shows (trust anchors'
basicConstraints, unknown critical extensions, chain depth) and knows nothing of revocation:

* once per connection (cached by the exact PEM the connection presented): the chain is
  re-verified with cryptography's client verifier against the client CA bundle, the leaf's
  extended key usage must allow clientAuth, and the identity is derived;
* on every call: the validity window of the whole verified chain against the clock, the
  CRL of every issuer in the chain, then the OCSP answers the link holds for its certificates
  (:mod:`flwrmtls.auth.ocspstore`; a revocation by either refuses). A revocation or an expiry
  takes effect on the next call, not at the next reconnect.
* the first verification of a chain is a node's admission: it is when the link starts asking
  OCSP responders about the chain's certificates (only of a verified chain, so only responder
  URLs a trusted CA wrote); a call that arrives before the first answer waits for it.

Failed verifications are cached briefly too, so a peer repeating a bad certificate costs a
dictionary lookup, not a verification.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    AuthMethod,
    CallCredentials,
    Principal,
    RefusalReason,
)
from flwrmtls.auth.authority import key_id
from flwrmtls.auth.identity import (
    AmbiguousIdentityError,
    IdentitySource,
    PrincipalKind,
    RoleSource,
    identity_from_certificate,
)
from flwrmtls.auth.ocspcheck import OcspSubject
from flwrmtls.auth.ocspstore import OcspStore
from flwrmtls.auth.revocation import IssuedBy, RevocationStore

__all__ = ["MtlsAuthenticator", "certificate_fingerprint"]

_FAILURE_TTL = timedelta(seconds=30)
_CLIENT_USAGES = {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, hex: how logs and tables name a certificate."""
    return certificate.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    links: tuple[IssuedBy, ...]
    """Each certificate of the verified chain with its issuer, for the per-call CRL check."""
    not_before: datetime
    not_after: datetime
    ocsp: tuple[OcspSubject, ...] = ()
    """The chain's certificates the link asks OCSP responders about."""


@dataclass(frozen=True, slots=True)
class _Failed:
    error: AuthenticationFailed
    until: datetime


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _ee_policy() -> ExtensionPolicy:
    # WebPKI's default requires a SAN; node certificates are often CN-only.
    return ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )


class MtlsAuthenticator:
    """Authenticate callers by the client certificate their TLS connection presented."""

    name = "mtls"

    def __init__(
        self,
        trust_anchors: list[x509.Certificate],
        *,
        revocations: RevocationStore | None = None,
        ocsp: OcspStore | None = None,
        identity_source: IdentitySource = IdentitySource.SUBJECT,
        role_source: RoleSource = RoleSource.ROLE,
        max_chain_depth: int | None = None,
        cache_size: int = 50_000,
    ) -> None:
        """``role_source``: where a CLI certificate's role comes from (``--cli-role-source``)."""
        if not trust_anchors:
            raise ValueError("the mTLS authenticator needs at least one trusted CA certificate")
        self._store = Store(trust_anchors)
        self._revocations = revocations
        self._ocsp = ocsp
        self._identity_source = identity_source
        self._role_source = role_source
        self._max_chain_depth = max_chain_depth
        self._cache: OrderedDict[tuple[bytes, bytes], _Verified | _Failed] = OrderedDict()
        self._cache_size = cache_size

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        if not call.leaf_pem:
            raise AuthenticationFailed(
                RefusalReason.NO_CERTIFICATE, "the link requires a client certificate"
            )
        key = (call.leaf_pem, call.chain_pem or b"")
        entry = self._cache.get(key)
        if entry is None or (isinstance(entry, _Failed) and now >= entry.until):
            entry = self._verify(call.leaf_pem, call.chain_pem, now)
            self._cache[key] = entry
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if isinstance(entry, _Failed):
            raise entry.error
        fingerprint = entry.principal.fingerprint
        node_id = entry.principal.node_id
        if now < entry.not_before:
            raise AuthenticationFailed(
                RefusalReason.NOT_YET_VALID,
                f"certificate not valid before {_utc(entry.not_before)}",
                fingerprint,
                node_id,
            )
        if now > entry.not_after:
            raise AuthenticationFailed(
                RefusalReason.EXPIRED,
                f"certificate expired on {_utc(entry.not_after)}",
                fingerprint,
                node_id,
            )
        try:
            if self._revocations is not None:
                for link in entry.links:
                    self._revocations.check(link, now)
            if self._ocsp is not None and entry.ocsp:
                self._ocsp.check(entry.ocsp, now)
        except AuthenticationFailed as error:
            error.fingerprint = fingerprint
            error.node_id = node_id
            raise
        return entry.principal

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        """The per-call checks again (the chain's verification is cached): for open calls
        when a CRL, the CA bundle or the clock may have ended the certificate."""
        self.authenticate(call, now)

    def _verify(
        self, leaf_pem: bytes, chain_pem: bytes | None, now: datetime
    ) -> _Verified | _Failed:
        try:
            return self._verify_or_raise(leaf_pem, chain_pem, now)
        except AuthenticationFailed as error:
            return _Failed(error, now + _FAILURE_TTL)

    def _verifier(self, at: datetime) -> ClientVerifier:
        builder = (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy()
            )
        )
        if self._max_chain_depth is not None:
            builder = builder.max_chain_depth(self._max_chain_depth)
        return builder.build_client_verifier()

    def _node_of_expired(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate]
    ) -> int | None:
        """The node an expired certificate names, if its chain verified when it was last
        valid: only then may the link show that node as expired (anyone can present an expired
        certificate carrying someone else's Subject)."""
        try:
            self._verifier(leaf.not_valid_after_utc).verify(leaf, intermediates)
            identity = identity_from_certificate(leaf, self._identity_source, self._role_source)
        except (VerificationError, AmbiguousIdentityError):
            return None
        return identity.node_id if identity.kind is PrincipalKind.NODE else None

    def _verify_or_raise(
        self, leaf_pem: bytes, chain_pem: bytes | None, now: datetime
    ) -> _Verified:
        try:
            leaf = x509.load_pem_x509_certificate(leaf_pem)
            intermediates = x509.load_pem_x509_certificates(chain_pem) if chain_pem else []
        except ValueError as error:
            raise AuthenticationFailed(
                RefusalReason.UNTRUSTED, f"certificate cannot be parsed: {error}"
            ) from None
        fingerprint = certificate_fingerprint(leaf)
        # Report the plainest reason first: dates and usage, then the chain.
        if now < leaf.not_valid_before_utc:
            raise AuthenticationFailed(
                RefusalReason.NOT_YET_VALID,
                f"certificate not valid before {_utc(leaf.not_valid_before_utc)}",
                fingerprint,
            )
        if now > leaf.not_valid_after_utc:
            raise AuthenticationFailed(
                RefusalReason.EXPIRED,
                f"certificate expired on {_utc(leaf.not_valid_after_utc)}",
                fingerprint,
                self._node_of_expired(leaf, intermediates),
            )
        try:
            usages = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            usages = None
        if usages is not None and not usages & _CLIENT_USAGES:
            raise AuthenticationFailed(
                RefusalReason.WRONG_USAGE,
                "certificate's extended key usage does not include clientAuth",
                fingerprint,
            )
        try:
            verified = self._verifier(now).verify(leaf, intermediates)
        except VerificationError as error:
            raise AuthenticationFailed(
                RefusalReason.UNTRUSTED,
                f"certificate not signed by a trusted CA ({error})",
                fingerprint,
            ) from None
        try:
            identity = identity_from_certificate(leaf, self._identity_source, self._role_source)
        except AmbiguousIdentityError as error:
            raise AuthenticationFailed(
                RefusalReason.AMBIGUOUS_IDENTITY,
                f"certificate identity refused: {error}",
                fingerprint,
            ) from None
        chain = tuple(verified.chain)
        ocsp: tuple[OcspSubject, ...] = ()
        if self._ocsp is not None:
            ocsp = self._ocsp.subjects(chain)
            self._ocsp.admit(ocsp, now)
        return _Verified(
            principal=Principal(
                kind=identity.kind,
                auth_method=AuthMethod.CERTIFICATE,
                identity=identity.value,
                organisation=identity.organisation,
                node_id=identity.node_id,
                not_after=min(c.not_valid_after_utc for c in chain),
                fingerprint=fingerprint,
                anchor_key=key_id(chain[-1]),
            ),
            links=tuple(IssuedBy.of(c, i) for c, i in itertools.pairwise(chain)),
            not_before=max(c.not_valid_before_utc for c in chain),
            not_after=min(c.not_valid_after_utc for c in chain),
            ocsp=ocsp,
        )
