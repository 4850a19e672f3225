"""Wake waiting long-polls when something they wait for happens (one event loop, no polling).

Keys name what changed: ``("node", node_id)`` when a message for a node is stored,
``("run", run_id)`` when a reply or status change concerns a run, ``("nodes",)`` when a node
comes online.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

__all__ = ["Notifier"]


class Notifier:
    def __init__(self) -> None:
        self._events: dict[Hashable, asyncio.Event] = {}

    def notify(self, key: Hashable) -> None:
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
