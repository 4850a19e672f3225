"""Authenticators composed from others, so modes are configuration, not branches.

``AllOf(first, *more)`` admits a caller only if every authenticator admits it, and names it
as the first one does: ``AllOf(mtls, eckey)`` requires a certificate and a registered EC key
from every node, the node being named by its certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    Authenticator,
    CallCredentials,
    Principal,
    RefusalReason,
)

__all__ = ["AllOf", "DenyUnregistered"]


class AllOf:
    def __init__(self, first: Authenticator, *more: Authenticator) -> None:
        self._all = (first, *more)
        self.name = "+".join(authenticator.name for authenticator in self._all)

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        principal = self._all[0].authenticate(call, now)
        for authenticator in self._all[1:]:
            authenticator.authenticate(call, now)
        return principal


class DenyUnregistered:
    """Refuse callers whose node id an operator unregistered, whatever admitted them.

    ``flwrmtls supernode unregister`` takes effect on the next call, without waiting for a CRL;
    ``flwrmtls supernode readmit`` undoes it. The check is a set lookup.
    """

    def __init__(self, inner: Authenticator, is_unregistered: Callable[[int], bool]) -> None:
        self._inner = inner
        self._is_unregistered = is_unregistered
        self.name = inner.name

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        principal = self._inner.authenticate(call, now)
        if principal.node_id is not None and self._is_unregistered(principal.node_id):
            raise AuthenticationFailed(
                RefusalReason.NODE_UNREGISTERED,
                f"node unregistered ({principal.identity}): an operator can re-admit it with "
                f"`flwrmtls supernode readmit {principal.node_id}`",
                principal.fingerprint,
            )
        return principal
