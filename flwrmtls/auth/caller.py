"""Who makes the call being handled: its :class:`~flwrmtls.auth.authenticator.Principal`.

The call gate (:mod:`flwrmtls.auth.callgate`) sets it while a handler runs, in the handler's
own context (each call runs in a task of its own); a servicer asks :func:`current_principal`.
:func:`acting_as` sets it without the gate, for a servicer called in-process (its unit tests).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from flwrmtls.auth.authenticator import Principal

__all__ = ["acting_as", "caller_name", "current_principal", "handling_as", "reset"]

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("flwrmtls_principal")


def reset(token: contextvars.Token[Principal]) -> None:
    """Undo the principal; a streaming handler closed from another context cannot, and need
    not: each call runs in its own task, whose context ends with it."""
    with contextlib.suppress(ValueError):
        _principal.reset(token)


def current_principal() -> Principal:
    """The authenticated caller of the call being handled (set by the interceptor)."""
    return _principal.get()


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Handle calls as ``principal`` without the interceptor: a servicer called in-process
    (its unit tests). Nothing on the network reaches a servicer this way."""
    token = _principal.set(principal)
    try:
        yield
    finally:
        reset(token)


def caller_name() -> str:
    """Who makes the call being handled, for a log line: its identity (or its kind); "" while
    it is not known yet (failed while authenticating)."""
    try:
        principal = current_principal()
    except LookupError:
        return ""
    return principal.identity or principal.kind.value


def handling_as(principal: Principal) -> contextvars.Token[Principal]:
    """Make ``principal`` the caller of the call being handled (undo with :func:`reset`)."""
    return _principal.set(principal)
