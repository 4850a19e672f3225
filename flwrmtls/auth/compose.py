"""Authenticators composed from others, so modes are configuration, not branches.

``AllOf(first, *more)`` admits a caller only if every authenticator admits it, and names it
as the first one does: ``AllOf(mtls, eckey)`` requires a certificate and a registered EC key
from every node, the node being named by its certificate.
"""

from __future__ import annotations

from datetime import datetime

from flwrmtls.auth.authenticator import Authenticator, CallCredentials, Principal

__all__ = ["AllOf"]


class AllOf:
    def __init__(self, first: Authenticator, *more: Authenticator) -> None:
        self._all = (first, *more)
        self.name = "+".join(authenticator.name for authenticator in self._all)

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        principal = self._all[0].authenticate(call, now)
        for authenticator in self._all[1:]:
            authenticator.authenticate(call, now)
        return principal
