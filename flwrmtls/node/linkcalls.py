"""A run's calls on the link, which outlive the node's session.

Rules:

* The agent sets the node's session each time the node activates; every call of a run is made
  on the session current when it starts, in a worker thread (it blocks on the link).
* A run's call on the link (an object its ClientApp needs, its reply) can outlast the session
  it started on: the node activates again when its certificate is rotated or the link
  restarted, and the link then answers the old session "superseded" or "unknown". Such a call
  is made once more on the node's next session, waited for up to :data:`SESSION_WAIT`
  seconds on the injected clock, so a rotation mid-run costs the run nothing; with none, the
  error stands (another process took the identity: the node stops).
* Everything here runs on the node's event loop, which alone changes the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from flwrmtls.clock import Clock
from flwrmtls.fleet.client import Session, SessionEnded

__all__ = ["SESSION_WAIT", "LinkCalls"]

log = logging.getLogger("flwrmtls.node.clientapps")  # the runs' log, where these calls are made

SESSION_WAIT = 30.0
"""Seconds a run's call whose session the link ended waits for the node's next session (it
activates again at once after a certificate rotation, within its backoff after a link
restart)."""
_T = TypeVar("_T")


class LinkCalls:
    """The node's current session with the link, and calls on it (event loop only)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._current: Session | None = None
        self._changed = asyncio.Event()
        """Set (and replaced) each time the session changes."""

    @property
    def session(self) -> Session | None:
        return self._current

    @session.setter
    def session(self, session: Session | None) -> None:
        self._current = session
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _session(self) -> Session:
        if self._current is None:
            raise RuntimeError("the node has no session with the link")
        return self._current

    async def on_link(self, call: Callable[[Session], _T]) -> _T:
        """``call`` on the node's session, in a worker thread (it blocks on the link)."""
        session = self._session()
        return await asyncio.to_thread(call, session)

    async def on_session(self, call: Callable[[Session], _T]) -> _T:
        """:meth:`on_link`; once more on the node's next session if the link ended it."""
        session = self._session()
        try:
            return await asyncio.to_thread(call, session)
        except SessionEnded:
            current = await self._next_session(session)
            if current is None:
                raise
        log.info("the session a call of this node's run was on ended; again on the new one")
        return await asyncio.to_thread(call, current)

    async def _next_session(self, ended: Session) -> Session | None:
        """The session after ``ended``, once the agent has it (None after SESSION_WAIT)."""
        deadline = self._clock.monotonic() + SESSION_WAIT
        while self._current in (None, ended):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return None
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return self._current
