"""Calls in flight on the link, judged again when what admitted them may have changed.

A unary call is judged once, when it starts. A call that stays open (a node's long poll, a
followed log stream, an object transfer) would otherwise outlive a revocation, an expiry or an
unregister by as long as it stays open. Rules kept here:

* Every authorized call on a listener that keeps a registry (Fleet, Control) is in it from its
  authorization until it ends, however it ends: memory is bounded by the calls open now.
* A call is judged again with the credentials it presented, by the authenticator its listener
  uses *now* (a new client CA bundle replaces the authenticator), through
  :meth:`~flwrmtls.auth.authenticator.Authenticator.recheck`: cached verification and dict
  lookups, nothing that may only happen once (an EC-key signature's nonce).
* :func:`refused_calls` is the decision: which calls are refused now, and why. It has no side
  effect; :class:`LiveCalls` applies it by calling each refused call's ``end``.
* When: every call after an event that may end credentials (CRLs reloaded, the client CA
  bundle replaced, a node unregistered, a key bound anew, an OCSP answer that revokes a
  certificate or can no longer be used) and once a CRL's or an OCSP answer's next-update
  passes;
  each second only the calls whose credentials have expired (:func:`expired_calls`, one
  comparison per call).
* How a call ends is the interceptor's business (it answers the caller with the refusal, as
  for a refused unary call); here a call is ended at most once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    Authenticator,
    CallCredentials,
    Principal,
    TryLater,
)

__all__ = ["LiveCall", "LiveCalls", "expired_calls", "refused_calls"]

log = logging.getLogger("flwrmtls.link.auth")


@dataclass(eq=False, slots=True)
class LiveCall:
    """One open call: what it presented, who it was, who judges it, how to end it."""

    credentials: CallCredentials
    principal: Principal
    authenticator: Callable[[], Authenticator]
    """The listener's authenticator as it is now (it is replaced when the CA bundle is)."""
    end: Callable[[AuthenticationFailed], None]
    """Answer the caller with this refusal and stop the handler (set by the interceptor)."""


def refused_calls(
    calls: Iterable[LiveCall], now: datetime
) -> list[tuple[LiveCall, AuthenticationFailed]]:
    """The calls whose credentials are no longer admitted at ``now``, each with its refusal.

    An authenticator that cannot decide yet (:class:`TryLater`: an OCSP answer being fetched
    again for a certificate whose entry was dropped) refuses nothing; one that fails otherwise
    (a bug, an unreadable database) refuses nothing either: its error is logged, and the call's
    next unary call will meet the same error.
    """
    refused = []
    for call in calls:
        try:
            call.authenticator().recheck(call.credentials, call.principal, now)
        except AuthenticationFailed as refusal:
            refused.append((call, refusal))
        except TryLater:
            continue
        except Exception:
            log.exception("re-judging an open call of %s failed", call.principal.identity)
    return refused


def expired_calls(calls: Iterable[LiveCall], now: datetime) -> list[LiveCall]:
    """The calls whose credentials' validity ended before ``now`` (one comparison each)."""
    return [
        call
        for call in calls
        if call.principal.not_after is not None and call.principal.not_after < now
    ]


class LiveCalls:
    """The registry of open calls (event loop only: no locks)."""

    def __init__(self) -> None:
        self._calls: set[LiveCall] = set()

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, call: LiveCall) -> None:
        self._calls.add(call)

    def discard(self, call: LiveCall) -> None:
        self._calls.discard(call)

    def recheck(self, now: datetime) -> int:
        """Judge every open call again; end the refused ones. Returns how many were ended."""
        return self._end(refused_calls(list(self._calls), now))

    def recheck_expired(self, now: datetime) -> int:
        """Judge again only the calls whose credentials expired; end them."""
        expired = expired_calls(self._calls, now)
        return self._end(refused_calls(expired, now)) if expired else 0

    def _end(self, refused: list[tuple[LiveCall, AuthenticationFailed]]) -> int:
        for call, refusal in refused:
            self._calls.discard(call)
            call.end(refusal)
        return len(refused)
