"""Authenticators composed from others, so modes are configuration, not branches.

* ``AllOf(first, *more)`` admits a caller only if every authenticator admits it, and names it
  as the first one does.
* ``CertificateAndBoundKey(certificates, keys, bound_node)`` is ``certificate+key``: a node
  presents a certificate *and* signs with a registered EC key, and the key must be the one an
  operator registered for that certificate's node (``flwrmtls supernode register KEY.pub
  --identity ...``). Without the binding, any registered key would vouch for any certificate:
  node B's certificate with node A's key would pass. The node is named by its certificate.
* ``DenyUnregistered(inner, is_unregistered)`` refuses node ids an operator unregistered.

Each also re-judges an open call (``recheck``) by asking the authenticators it is made of.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    Authenticator,
    AuthMethod,
    CallCredentials,
    Principal,
    RefusalReason,
)
from flwrmtls.auth.eckey import EcKeyAuthenticator

__all__ = ["AllOf", "BoundNode", "CertificateAndBoundKey", "DenyUnregistered"]

BoundNode = Callable[[int], int | None]
"""The node id an EC key (by its own node id) was registered for; None if it is bound to none."""


class AllOf:
    def __init__(self, first: Authenticator, *more: Authenticator) -> None:
        self._all = (first, *more)
        self.name = "+".join(authenticator.name for authenticator in self._all)

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        principal = self._all[0].authenticate(call, now)
        for authenticator in self._all[1:]:
            authenticator.authenticate(call, now)
        return principal

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        for authenticator in self._all:
            authenticator.recheck(call, principal, now)


class CertificateAndBoundKey:
    """A certificate names the node; the call's EC key must be registered to that node."""

    def __init__(
        self, certificates: Authenticator, keys: EcKeyAuthenticator, bound_node: BoundNode
    ) -> None:
        self._certificates = certificates
        self._keys = keys
        self._bound_node = bound_node
        self.name = f"{certificates.name}+{keys.name}"

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        principal = self._certificates.authenticate(call, now)
        key = self._keys.authenticate(call, now)
        self._check_bound(principal, key.node_id, key.fingerprint)
        return principal

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        self._certificates.recheck(call, principal, now)
        self._keys.recheck(call, principal, now)
        key_node_id, fingerprint = self._keys.key_of(call)
        self._check_bound(principal, key_node_id, fingerprint)

    def _check_bound(self, principal: Principal, key_node_id: int | None, key: str) -> None:
        if key_node_id is not None and self._bound_node(key_node_id) == principal.node_id:
            return
        raise AuthenticationFailed(
            RefusalReason.KEY_NOT_BOUND,
            f"EC key {key} is not registered for this certificate's node "
            f"({principal.identity}, node id {principal.node_id}): an operator binds it with "
            f"`flwrmtls supernode register KEY.pub --identity '{principal.identity}'`",
            principal.fingerprint,
        )


class DenyUnregistered:
    """Refuse callers whose node id an operator unregistered, whatever admitted them.

    ``flwrmtls supernode unregister`` takes effect at once, without waiting for a CRL: open
    calls are re-judged when it happens. ``flwrmtls supernode readmit`` undoes it. The check is
    a set lookup.
    """

    def __init__(self, inner: Authenticator, is_unregistered: Callable[[int], bool]) -> None:
        self._inner = inner
        self._is_unregistered = is_unregistered
        self.name = inner.name

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        principal = self._inner.authenticate(call, now)
        self._check(principal)
        return principal

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        self._inner.recheck(call, principal, now)
        self._check(principal)

    def _check(self, principal: Principal) -> None:
        if principal.node_id is not None and self._is_unregistered(principal.node_id):
            readmit = (
                "`flwrmtls supernode register <its .pub file>`"
                if principal.auth_method is AuthMethod.KEY
                else f"`flwrmtls supernode readmit {principal.node_id}`"
            )
            raise AuthenticationFailed(
                RefusalReason.NODE_UNREGISTERED,
                f"node unregistered ({principal.identity}): an operator can re-admit it with "
                + readmit,
                principal.fingerprint,
            )
