"""The bound below gRPC: the same bytes over plain TLS sockets, no framing but TLS records.

Rules: one listening process that forks a process per connection (as a federation would
give each node's traffic a core of its own), N client processes (as nodes are), mutual TLS
with the benchmark's certificates (the project's CA), N x the model's bytes down, then up,
in CHUNK_SIZE writes; the aggregate MB/s of each direction. Python's ``ssl`` (OpenSSL) does
the TLS: no protobuf, no HTTP/2, no store, no hash. It complements ``harness.rawstream`` (a
plain gRPC stream, one server process): a round's distance from each says what the rest
costs. A client or server that fails ends the measurement with a BenchError within
``STEP_TIMEOUT`` seconds, never a hang. Linux (``os.fork``).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import socket
import ssl
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from flwrmtls.objects.store import CHUNK_SIZE
from flwrmtls.testing.pki import TestPki
from harness import BenchError
from harness.rawstream import join_all, stream_rates

__all__ = ["measure_tls", "tls_context"]

STEP_TIMEOUT = 300.0
"""Seconds any one step (connecting, a barrier, a socket read or write) may take."""
SERVER_NAME = "localhost"
"""What the benchmark's server certificate names (``flwrmtls.testing.pki``)."""


def tls_context(side: int, chain: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """Mutual TLS: this side's certificate and key, the peer's checked against ``ca``."""
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


def _receive_exactly(connection: ssl.SSLSocket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = connection.recv(count - len(data))
        if not piece:
            break
        data += piece
    return data


def _send(connection: ssl.SSLSocket, size: int) -> None:
    data = memoryview(os.urandom(CHUNK_SIZE))
    sent = 0
    while sent < size:
        piece = min(CHUNK_SIZE, size - sent)
        connection.sendall(data[:piece])
        sent += piece


def _serve_one(raw: socket.socket, context: ssl.SSLContext, size: int) -> None:
    """A connection's process: on ``d`` send ``size`` bytes, then take ``size`` bytes and say
    how many arrived."""
    raw.settimeout(STEP_TIMEOUT)
    with context.wrap_socket(raw, server_side=True) as connection:
        if connection.recv(1) != b"d":
            raise BenchError("plain TLS: the client did not ask for its download")
        _send(connection, size)
        got = _receive(connection, size)
        connection.sendall(got.to_bytes(8, "big"))


def _server_process(chain: Path, key: Path, ca: Path, streams: int, size: int, ports: Any) -> None:
    context = tls_context(ssl.PROTOCOL_TLS_SERVER, chain, key, ca)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(STEP_TIMEOUT)
    ports.put(listener.getsockname()[1])
    ports.close()
    ports.join_thread()  # no queue thread left running when this process forks
    children = []
    for _ in range(streams):
        raw, _address = listener.accept()
        child = os.fork()
        if child == 0:
            listener.close()
            status = 0
            try:
                _serve_one(raw, context, size)
            except BaseException:
                traceback.print_exc()
                status = 1
            finally:
                sys.stderr.flush()
                os._exit(status)
        raw.close()
        children.append(child)
    listener.close()
    failed = [child for child in children if os.waitpid(child, 0)[1] != 0]
    if failed:
        raise SystemExit(f"plain TLS: {len(failed)} connection process(es) failed")


def _client_process(
    port: int, chain: Path, key: Path, ca: Path, size: int, barrier: Any, results: Any
) -> None:
    context = tls_context(ssl.PROTOCOL_TLS_CLIENT, chain, key, ca)
    raw = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
    with context.wrap_socket(raw, server_hostname=SERVER_NAME) as connection:
        barrier.wait(STEP_TIMEOUT)
        start = time.monotonic()
        connection.sendall(b"d")
        received = _receive(connection, size)
        end = time.monotonic()
        barrier.wait(STEP_TIMEOUT)
        up_start = time.monotonic()
        _send(connection, size)
        uploaded = int.from_bytes(_receive_exactly(connection, 8), "big")
        up_end = time.monotonic()
    results.put(
        {"received": received, "uploaded": uploaded, "download": [start, end],
         "upload": [up_start, up_end]}
    )  # fmt: skip


def _collect(results: Any, count: int, processes: list[Any]) -> list[dict[str, Any]]:
    """``count`` reports, or BenchError as soon as a process has failed (or after
    STEP_TIMEOUT seconds without a report)."""
    reports: list[dict[str, Any]] = []
    waited = 0.0
    while len(reports) < count:
        try:
            reports.append(results.get(timeout=1.0))
            waited = 0.0
            continue
        except queue.Empty:
            waited += 1.0
        failed = [p for p in processes if p.exitcode not in (None, 0)]
        if failed:
            raise BenchError(f"plain TLS: {len(failed)} process(es) failed (their errors above)")
        if waited >= STEP_TIMEOUT:
            raise BenchError(f"plain TLS: no report for {STEP_TIMEOUT:.0f} s")
    return reports


def measure_tls(pki: TestPki, streams: int, size: int) -> dict[str, Any]:
    """``streams`` client processes download ``size`` bytes each at once over plain TLS, then
    upload ``size`` bytes each; the aggregate MB/s of each direction."""
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
        try:
            port = ports.get(timeout=120)
        except queue.Empty:
            raise BenchError("plain TLS: the server did not start") from None
        for index in range(1, streams + 1):
            node_chain, node_key = pki.paths(f"node-{index}")
            client = context.Process(
                target=_client_process,
                args=(port, node_chain, node_key, ca, size, barrier, results),
                daemon=True,
            )
            client.start()
            clients.append(client)
        reports = _collect(results, streams, [server, *clients])
    except BaseException:
        for process in [*clients, server]:  # the others would wait out their timeouts
            if process.is_alive():
                process.kill()
        raise
    finally:
        join_all([*clients, server])
    return {**stream_rates("plain TLS", reports, size), "openssl": ssl.OPENSSL_VERSION}
