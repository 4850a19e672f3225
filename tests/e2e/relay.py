"""A TCP relay between a node and the link that can hold either direction: a stalled network.

Rules:

* Bytes pass unchanged, so TLS (and the node's client certificate) goes end to end: the link
  sees the node itself, only later. Nothing in a deployment is replaced.
* ``hold("up")`` keeps what the node sends (its next calls) in the relay, ``hold("down")``
  keeps what the link answers; ``release`` forwards what was kept, in order. A held direction
  reads on, so the sender is never blocked by it.
* ``received[direction]`` counts the bytes read so far in that direction, held or not.
* Listens on 127.0.0.1, port chosen by the OS; every connection gets two threads.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Relay", "relay_to"]

_DIRECTIONS = ("up", "down")


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
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def hold(self, direction: str) -> None:
        self._open[direction].clear()

    def release(self, direction: str) -> None:
        self._open[direction].set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                node, _ = self._listener.accept()
            except OSError:
                return
            link = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [node, link]
            for source, target, direction in ((node, link, "up"), (link, node, "down")):
                threading.Thread(
                    target=self._pump, args=(source, target, direction), daemon=True,
                    name=f"relay-{direction}",
                ).start()  # fmt: skip

    def _pump(self, source: socket.socket, target: socket.socket, direction: str) -> None:
        gate = self._open[direction]
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.received[direction] += len(data)
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
