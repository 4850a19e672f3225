"""The bound below gRPC: the same bytes over plain TLS sockets, no framing but TLS records.

Rules: one listening process that forks a process per connection (as a federation would
give each node's traffic a core of its own), N client processes (as nodes are), mutual TLS
with the benchmark's certificates (the project's CA), N x the model's bytes up, then down,
in CHUNK_SIZE writes; the aggregate MB/s of each direction. Python's ``ssl`` (OpenSSL) does
the TLS: no protobuf, no HTTP/2, no store, no hash. It complements ``harness.rawstream`` (a
plain gRPC stream): a round's distance from each says what gRPC costs and what the rest does.
Linux (``os.fork``).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from flwrmtls.objects.store import CHUNK_SIZE
from flwrmtls.testing.pki import TestPki
from harness.rawstream import join_all, stream_rates

__all__ = ["measure_tls", "tls_context"]

TLS_TIMEOUT = 3600.0


def tls_context(side: int, chain: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(side)
    context.load_cert_chain(chain, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _receive(connection: ssl.SSLSocket, size: int) -> int:
    buffer = bytearray(CHUNK_SIZE)
    got = 0
    while got < size:
        count = connection.recv_into(buffer, min(CHUNK_SIZE, size - got))
        if not count:
            break
        got += count
    return got


def _send(connection: ssl.SSLSocket, size: int) -> None:
    data = os.urandom(CHUNK_SIZE)
    sent = 0
    while sent < size:
        piece = min(CHUNK_SIZE, size - sent)
        connection.sendall(memoryview(data)[:piece])
        sent += piece


def _serve_one(raw: socket.socket, context: ssl.SSLContext, size: int) -> None:
    """A connection's process: take ``size`` bytes, say how many, then send ``size`` back."""
    with context.wrap_socket(raw, server_side=True) as connection:
        got = _receive(connection, size)
        connection.sendall(got.to_bytes(8, "big"))
        if connection.recv(1) == b"d":
            _send(connection, size)


def _server_process(chain: Path, key: Path, ca: Path, streams: int, size: int, ports: Any) -> None:
    context = tls_context(ssl.PROTOCOL_TLS_SERVER, chain, key, ca)
    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    children = []
    for _ in range(streams):
        raw, _address = listener.accept()
        child = os.fork()
        if child == 0:
            try:
                _serve_one(raw, context, size)
            finally:
                os._exit(0)
        raw.close()
        children.append(child)
    for child in children:
        os.waitpid(child, 0)


def _client_process(
    port: int, chain: Path, key: Path, ca: Path, size: int, barrier: Any, results: Any
) -> None:
    context = tls_context(ssl.PROTOCOL_TLS_CLIENT, chain, key, ca)
    context.check_hostname = False  # the server's certificate names the link, not 127.0.0.1
    raw = socket.create_connection(("127.0.0.1", port))
    with context.wrap_socket(raw) as connection:
        connection.do_handshake()
        barrier.wait()
        start = time.monotonic()
        _send(connection, size)
        uploaded = int.from_bytes(_receive_exactly(connection, 8), "big")
        end = time.monotonic()
        barrier.wait()
        down_start = time.monotonic()
        connection.sendall(b"d")
        received = _receive(connection, size)
        down_end = time.monotonic()
    results.put(
        {"uploaded": uploaded, "received": received, "upload": [start, end],
         "download": [down_start, down_end]}
    )  # fmt: skip


def _receive_exactly(connection: ssl.SSLSocket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = connection.recv(count - len(data))
        if not piece:
            break
        data += piece
    return data


def measure_tls(pki: TestPki, streams: int, size: int) -> dict[str, Any]:
    """``streams`` client processes upload ``size`` bytes each at once over plain TLS, then
    download ``size`` bytes each; the aggregate MB/s of each direction."""
    context = multiprocessing.get_context("spawn")
    chain, key = pki.paths("server")
    ca = pki.trust_bundle_path
    ports = context.Queue()
    results = context.Queue()
    barrier = context.Barrier(streams)
    server = context.Process(
        target=_server_process, args=(chain, key, ca, streams, size, ports), daemon=True
    )
    server.start()
    clients: list[Any] = []
    try:
        port = ports.get(timeout=120)
        for index in range(1, streams + 1):
            node_chain, node_key = pki.paths(f"node-{index}")
            client = context.Process(
                target=_client_process,
                args=(port, node_chain, node_key, ca, size, barrier, results),
                daemon=True,
            )
            client.start()
            clients.append(client)
        reports = [results.get(timeout=TLS_TIMEOUT) for _ in clients]
    finally:
        join_all([*clients, server])
    return {**stream_rates("plain TLS", reports, size), "openssl": ssl.OPENSSL_VERSION}
