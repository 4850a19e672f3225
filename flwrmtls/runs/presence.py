"""Which nodes are present: a node whose connection closes is offline within a second.

The link learns that a node is gone in three ways:

=========================  =================================================================
what happens               what the link does
=========================  =================================================================
the node deactivates       offline at once (:meth:`~flwrmtls.state.linkstate.LinkState.
                           deactivate_node`)
its connection closes      its open long poll is cancelled (the kernel closes a dead
(the process died, its     process's connections at once). If, ``DROP_GRACE`` seconds later,
host's network went down   the node has no long poll open and has made no Fleet call since,
and the kernel said so)    on the session that dropped, it is offline: the awaited replies
                           of its runs are answered ``NODE_UNAVAILABLE`` ("went offline (its
                           connection closed at ...)") by the ServerAppIo servicer, woken
                           here
nothing is heard at all    its heartbeat lapses (``HEARTBEAT_GRACE`` intervals): the bound
(silent network loss)      for a peer that vanished without a word
=========================  =================================================================

Rules kept here:

* Only a cancelled long poll counts as a drop; a long poll that ends because its wait is over
  or work arrived does not. The grace lets a node that cancels its own long poll to call
  again (a rotated certificate: it activates again on a new connection) stay online; a newer
  session, or any call on the node's session, keeps it online.
* A node marked offline by a drop that calls again on the same session is online again at
  once (the caller resumes it, as a heartbeat would).
* Event loop only: no locks. Marking happens in a timer callback; once :meth:`Presence.close`
  is called (the link is stopping) nothing more is marked.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from flwrmtls.clock import Clock

__all__ = ["DROP_GRACE", "Presence"]

log = logging.getLogger("flwrmtls.link")

DROP_GRACE = 0.5
"""Seconds a node whose long poll was cancelled has to call again before it is offline."""


class Presence:
    def __init__(
        self,
        clock: Clock,
        *,
        mark_offline: Callable[[int, str, float], bool],
        on_offline: Callable[[int], None],
        grace: float = DROP_GRACE,
    ) -> None:
        """``mark_offline(node_id, session_id, now)``: end the node's online time if that
        session is still its own and it is online (returns whether it was);
        ``on_offline(node_id)``: wake whoever awaits the node's replies."""
        self._clock = clock
        self._mark_offline = mark_offline
        self._on_offline = on_offline
        self._grace = grace
        self._polls: Counter[int] = Counter()
        """Node id -> long polls open now."""
        self._last_call: dict[int, float] = {}
        """Node id -> monotonic time of its latest Fleet call (only while it has a drop pending
        or was marked offline by one: the dict stays as small as the drops)."""
        self._pending: dict[int, float] = {}
        """Node id -> monotonic time of its latest drop not yet judged."""
        self.closed_at: dict[int, float] = {}
        """Node id -> when (seconds since the epoch) its connection closed, for the nodes marked
        offline by a drop that have not called since: what the error replies say."""
        self.generation = 0
        """Grows by one each time a node is marked offline here."""
        self._closed = False

    def call(self, node_id: int) -> bool:
        """A Fleet call of ``node_id`` on its current session starts. Returns True when the
        node had been marked offline by a drop (the caller makes it online again)."""
        if node_id in self._pending:
            self._last_call[node_id] = self._clock.monotonic()
        return self.closed_at.pop(node_id, None) is not None

    def poll_started(self, node_id: int) -> None:
        self._polls[node_id] += 1

    def poll_ended(self, node_id: int, session_id: str, *, dropped: bool) -> None:
        """A long poll of ``node_id`` ended; ``dropped``: it was cancelled, not answered."""
        self._polls[node_id] -= 1
        if self._polls[node_id] <= 0:
            del self._polls[node_id]
        if not dropped or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing can wake later (not the link's case)
            return
        dropped_at = self._clock.monotonic()
        self._pending[node_id] = dropped_at
        self._last_call.pop(node_id, None)
        closed = self._clock.now().timestamp()
        loop.call_later(self._grace, self._judge, node_id, session_id, dropped_at, closed)

    def _judge(self, node_id: int, session_id: str, dropped_at: float, closed: float) -> None:
        if self._closed or self._pending.get(node_id) != dropped_at:
            return  # a later drop is judged later
        del self._pending[node_id]
        called = self._last_call.pop(node_id, None)
        if self._polls[node_id] > 0 or called is not None:
            return  # it called again: alive
        self._polls.pop(node_id, None)
        now = self._clock.now().timestamp()
        try:
            marked = self._mark_offline(node_id, session_id, now)
        except Exception:  # a failing database: the heartbeat bound still holds
            log.exception("marking node %d offline after its connection closed failed", node_id)
            return
        if not marked:
            return
        self.closed_at[node_id] = closed
        self.generation += 1
        log.info("node %d: its connection closed; offline", node_id)
        try:
            self._on_offline(node_id)
        except Exception:  # the ServerApps' next offline check finds it anyway
            log.exception("waking the runs that await node %d failed", node_id)

    def close(self) -> None:
        """The link is stopping: judge nothing more (its connections all close now)."""
        self._closed = True
