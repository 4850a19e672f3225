"""A TCP relay between a node and the link that can hold either direction: a stalled network.

Rules:

* Bytes pass unchanged, so TLS (and the node's client certificate) goes end to end: the link
  sees the node itself, only later. Nothing in a deployment is replaced.
* ``hold("up")`` keeps what the node sends (its next calls) in the relay, ``hold("down")``
  keeps what the link answers; ``release`` forwards what was kept, in order. A held direction
  reads on, so the sender is never blocked by it.
* ``received[direction]`` counts the bytes read so far in that direction, held or not.
* ``hold_open(direction)`` holds only the connections open now (a node's old channel, while
  the new one it opens after a certificate rotation passes); the :class:`Held` it returns
  counts what they read since and releases them.
* Listens on 127.0.0.1, port chosen by the OS; every connection gets two threads.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Held", "Relay", "relay_to"]

_DIRECTIONS = ("up", "down")


class _Connection:
    """One connection's own gates and byte counts (beside the relay's)."""

    def __init__(self) -> None:
        self.open = {direction: threading.Event() for direction in _DIRECTIONS}
        for gate in self.open.values():
            gate.set()
        self.received = dict.fromkeys(_DIRECTIONS, 0)


class Held:
    """Connections held in one direction by :meth:`Relay.hold_open`."""

    def __init__(self, connections: list[_Connection], direction: str) -> None:
        self._connections = connections
        self._direction = direction
        self._before = sum(c.received[direction] for c in connections)

    @property
    def received(self) -> int:
        """Bytes these connections read in the held direction since the hold."""
        return sum(c.received[self._direction] for c in self._connections) - self._before

    def release(self) -> None:
        for connection in self._connections:
            connection.open[self._direction].set()


class Relay:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = {direction: threading.Event() for direction in _DIRECTIONS}
        for gate in self._open.values():
            gate.set()
        self.received = dict.fromkeys(_DIRECTIONS, 0)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._connections: list[_Connection] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def hold(self, direction: str) -> None:
        self._open[direction].clear()

    def release(self, direction: str) -> None:
        self._open[direction].set()

    def hold_open(self, direction: str) -> Held:
        """Hold ``direction`` of the connections open now only; later ones pass."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.open[direction].clear()
        return Held(connections, direction)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                node, _ = self._listener.accept()
            except OSError:
                return
            link = socket.create_connection(self._target)
            connection = _Connection()
            with self._lock:
                self._sockets += [node, link]
                self._connections.append(connection)
            for source, target, direction in ((node, link, "up"), (link, node, "down")):
                threading.Thread(
                    target=self._pump, args=(source, target, direction, connection),
                    daemon=True, name=f"relay-{direction}",
                ).start()  # fmt: skip

    def _pump(
        self, source: socket.socket, target: socket.socket, direction: str, connection: _Connection
    ) -> None:
        """Read ``source`` on (counting), whatever is held; the forwarder sends in order."""
        pending: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(
            target=self._forward, args=(pending, source, target, direction, connection),
            daemon=True, name=f"relay-{direction}-forward",
        ).start()  # fmt: skip
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.received[direction] += len(data)
                    connection.received[direction] += len(data)
                pending.put(data)
        except OSError:
            pass  # the other side closed
        pending.put(None)

    def _forward(
        self,
        pending: queue.Queue[bytes | None],
        source: socket.socket,
        target: socket.socket,
        direction: str,
        connection: _Connection,
    ) -> None:
        gates = (self._open[direction], connection.open[direction])
        try:
            while (data := pending.get()) is not None:
                for gate in gates:
                    while not gate.wait(0.1):
                        if self._closed.is_set():
                            return
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side closed: so does this one
        finally:
            for end in (source, target):
                end.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for end in self._sockets:
                end.close()


@contextmanager
def relay_to(target_port: int) -> Iterator[Relay]:
    relay = Relay(target_port)
    try:
        yield relay
    finally:
        relay.close()
