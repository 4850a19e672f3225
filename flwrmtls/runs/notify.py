"""Wake waiting long polls when something they wait for happens (one event loop, no polling),
and the one loop every long poll runs (:meth:`Notifier.long_poll`).

Rules:

* Keys name what changed: ``("node", node_id)`` when a message for a node is stored,
  ``("run", run_id)`` when a reply or status change concerns a run, ``("nodes",)`` when a node
  comes online.
* A long poll looks at once, then again each time its key is notified (or its own recheck is
  due), and answers as soon as what it found is ready, or with what it found last when its
  time is up. Its deadline is on the injected clock; it never sleeps to poll.
* Several link processes on one database: every key notified here is also handed to
  ``publish`` (the link announces it to the others, :mod:`flwrmtls.link.replication`), and a
  key another process announced wakes the waiters here through :meth:`Notifier.wake`, so a
  node's long poll on one process wakes for a message a ServerApp pushed through another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import TypeVar

from flwrmtls.clock import Clock

__all__ = ["Notifier"]

_T = TypeVar("_T")


class Notifier:
    def __init__(self, publish: Callable[[Hashable], None] | None = None) -> None:
        self._events: dict[Hashable, asyncio.Event] = {}
        self.publish = publish
        """Several links: hands each notified key to the other link processes."""

    def notify(self, key: Hashable) -> None:
        self.wake(key)
        if self.publish is not None:
            self.publish(key)

    def wake(self, key: Hashable) -> None:
        """Wake the waiters for ``key`` in this process only."""
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    async def wait(self, key: Hashable, timeout: float) -> bool:
        """Wait until ``key`` is notified or ``timeout`` passes; True if notified."""
        if timeout <= 0:
            return False
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def long_poll(
        self,
        key: Hashable,
        seconds: float,
        look: Callable[[], _T],
        *,
        clock: Clock,
        ready: Callable[[_T], bool] = bool,
        recheck_in: Callable[[], float] | None = None,
    ) -> _T:
        """``look()`` until ``ready`` says what it found will do, or ``seconds`` have passed
        (then what it found last); looking again whenever ``key`` is notified, and after
        ``recheck_in()`` seconds when given (a condition no notification announces)."""
        deadline = clock.monotonic() + seconds
        while True:
            found = look()
            remaining = deadline - clock.monotonic()
            if ready(found) or remaining <= 0:
                return found
            wait = remaining if recheck_in is None else max(0.0, min(remaining, recheck_in()))
            await self.wait(key, wait)
