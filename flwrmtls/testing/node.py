"""A node's parts on an event loop of their own, for tests that drive them with blocking
clients (as :mod:`flwrmtls.testing.link` runs a link).

A node is one asyncio program: its runs (:class:`~flwrmtls.node.clientapps.ClientApps`) belong
to its event loop. :func:`serving_clientapps` serves them over ClientAppIo on a loop in a
background thread; :meth:`NodeLoop.call` and :meth:`NodeLoop.run` hand that loop a function or
a coroutine and wait for its result, so a test touches the node's state only on its loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flwrmtls.node.appioserver import ClientAppIoServer
from flwrmtls.node.clientapps import ClientApps

__all__ = ["NodeLoop", "serving_clientapps"]

_T = TypeVar("_T")
_TIMEOUT = 60.0


class NodeLoop:
    """An event loop running in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="node-loop",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Await ``coroutine`` on the loop; its result (or its exception) here."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=_TIMEOUT)

    def call(self, function: Callable[..., _T], *args: Any) -> _T:
        """Call ``function(*args)`` on the loop; its result (or its exception) here."""

        async def on_loop() -> _T:
            return function(*args)

        return self.run(on_loop())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@contextmanager
def serving_clientapps(apps: ClientApps, address: str = "127.0.0.1:0") -> Iterator[NodeLoop]:
    """``apps`` served over ClientAppIo on ``address`` (loopback) from a loop of their own;
    on exit the server stops and every ClientApp with it."""
    node = NodeLoop()
    server = ClientAppIoServer(apps, address)
    try:
        node.run(server.start())
        yield node
    finally:
        try:
            node.run(server.stop())
            node.run(apps.shutdown())
        finally:
            node.close()
