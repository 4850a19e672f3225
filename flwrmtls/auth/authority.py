"""Which CA an identity belongs to, so two CAs in one bundle cannot alias one name.

A node id and a run owner derive from the identity alone (a Subject or a SPIFFE ID), so a
reissued certificate keeps them. Without more, any CA the link trusts could issue another CA's
Subject and take over that node id or that user's runs. Rules kept here:

* An **authority** is a set of CA keys of the link's trust bundles that vouch for each other:
  two certificates of the bundles belong to one authority when one names the other as its
  issuer and its signature verifies with the other's key. A root and its issuing CA are one
  authority; a re-keyed root is one authority with the old root once the bundle also holds a
  cross-certificate (the new root's name and key, signed by the old root:
  ``flwrmtls ca cross-sign``). CAs that share only a name are not one authority.
* A key is named by the SHA-256 of its SubjectPublicKeyInfo (hex); a verified chain's authority
  is that of the trust anchor it ends at.
* An identity is **pinned** to the first authority that admitted it. Another authority
  presenting the same identity is refused (``ambiguous-identity``) while the pinned one is in
  the bundles.
* A pin follows its authority: a call admitted under another key of the same authority moves
  the pin to that key (a rollover in progress). A pin whose key has left every bundle (the
  operator retired that CA) moves to the next authority that presents the identity; the link
  logs it.
* The per-call check is a dictionary lookup and a comparison; the pin store is written only
  when a pin is made or moves.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    Authenticator,
    CallCredentials,
    Principal,
    RefusalReason,
)

__all__ = [
    "Authorities",
    "Pin",
    "PinDecision",
    "PinStore",
    "PinnedToAuthority",
    "decide_pin",
    "key_id",
]

log = logging.getLogger("flwrmtls.link.auth")


def key_id(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo, hex: how a CA key is named."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _issued(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Authorities:
    """The CA keys of the link's trust bundles, grouped into authorities."""

    group: Mapping[str, int]
    """key id -> the authority it belongs to (a small integer, stable for one bundle set)."""
    names: Mapping[str, str]
    """key id -> the Subject of a certificate carrying it (RFC 4514), for messages."""

    @classmethod
    def of(cls, *bundles: Iterable[x509.Certificate]) -> Authorities:
        certificates = list(
            {c.fingerprint(hashes.SHA256()): c for b in bundles for c in b}.values()
        )
        keys = [key_id(c) for c in certificates]
        parent = {key: key for key in keys}

        def root(key: str) -> str:
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        for child, child_key in zip(certificates, keys, strict=True):
            for issuer, issuer_key in zip(certificates, keys, strict=True):
                if child_key != issuer_key and _issued(child, issuer):
                    parent[root(child_key)] = root(issuer_key)
        numbers: dict[str, int] = {}
        group = {key: numbers.setdefault(root(key), len(numbers)) for key in keys}
        names = {key: c.subject.rfc4514_string() for c, key in zip(certificates, keys, strict=True)}
        return cls(group=group, names=names)

    def same(self, first: str, second: str) -> bool:
        one = self.group.get(first)
        return one is not None and one == self.group.get(second)


@dataclass(frozen=True, slots=True)
class Pin:
    """The CA key an identity was last admitted under."""

    key: str
    name: str


class PinDecision(enum.Enum):
    KEEP = "keep"
    """Admitted under the pinned key."""
    NEW = "new"
    """First admission of this identity: pin it."""
    FOLLOW = "follow"
    """Another key of the pinned authority (a rollover): move the pin to it."""
    RETIRED = "retired"
    """The pinned key left every bundle: the pin moves to this authority."""
    REFUSE = "refuse"
    """Another authority, while the pinned one is trusted: an alias."""


def decide_pin(pinned: Pin | None, key: str, authorities: Authorities) -> PinDecision:
    """What to do with an identity's pin when it is admitted under CA key ``key``."""
    if pinned is None:
        return PinDecision.NEW
    if pinned.key == key:
        return PinDecision.KEEP
    if pinned.key not in authorities.group:
        return PinDecision.RETIRED
    if authorities.same(pinned.key, key):
        return PinDecision.FOLLOW
    return PinDecision.REFUSE


class PinStore(Protocol):
    """Where pins live (the link's database, mirrored in memory)."""

    def get(self, identity: str) -> Pin | None: ...

    def put(self, identity: str, pin: Pin, now: datetime) -> None: ...


class PinnedToAuthority:
    """Refuse a certificate whose identity another authority of the bundles owns.

    Wraps the certificate authenticator of a listener; principals without a trust anchor (EC
    keys, tokens, anonymous) pass unchanged.
    """

    def __init__(self, inner: Authenticator, pins: PinStore, authorities: Authorities) -> None:
        self._inner = inner
        self._pins = pins
        self._authorities = authorities
        self.name = inner.name

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        principal = self._inner.authenticate(call, now)
        key = principal.anchor_key
        if not key:
            return principal
        pinned = self._pins.get(principal.identity)
        decision = decide_pin(pinned, key, self._authorities)
        if decision is PinDecision.KEEP:
            return principal
        if decision is PinDecision.REFUSE:
            assert pinned is not None
            raise AuthenticationFailed(
                RefusalReason.AMBIGUOUS_IDENTITY,
                f"identity {principal.identity!r} belongs to the CA {pinned.name!r}; this "
                f"certificate chains to another CA ({self._name(key)!r}) in the link's bundle, "
                "which may not issue it: reissue it from the CA that owns the name, or give "
                "the two CAs distinct Subject namespaces (docs/security-model.md#identity)",
                principal.fingerprint,
            )
        pin = Pin(key=key, name=self._name(key))
        if decision is PinDecision.RETIRED:
            assert pinned is not None
            log.warning(
                "identity %s: its CA %s is no longer trusted; it now belongs to %s",
                principal.identity, pinned.name, pin.name,
            )  # fmt: skip
        self._pins.put(principal.identity, pin, now)
        return principal

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        """An open call: its certificate is still admitted and its identity still belongs to
        its authority (nothing is pinned anew here)."""
        self._inner.recheck(call, principal, now)
        key = principal.anchor_key
        if not key:
            return
        pinned = self._pins.get(principal.identity)
        if decide_pin(pinned, key, self._authorities) is PinDecision.REFUSE:
            assert pinned is not None
            raise AuthenticationFailed(
                RefusalReason.AMBIGUOUS_IDENTITY,
                f"identity {principal.identity!r} now belongs to the CA {pinned.name!r}",
                principal.fingerprint,
            )

    def _name(self, key: str) -> str:
        return self._authorities.names.get(key, f"key sha256:{key[:16]}")
