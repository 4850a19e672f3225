"""The baseline for large models: a plain gRPC byte stream over mutual TLS between processes.

Rules: one grpc.aio server process (as the link is one) and N client processes (as nodes are),
the same chunk size as flwrmtls's objects (CHUNK_SIZE), N x the model's bytes down, then up;
the aggregate MB/s (10**6 bytes per second) of each direction. No other work is done, so it
is what moving the bytes alone costs on this machine.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np

from flwrmtls.objects.store import CHUNK_SIZE
from flwrmtls.testing.pki import TestPki
from harness import BenchError
from harness.procs import RssSampler

__all__ = ["MB", "join_all", "measure_raw", "stream_rates"]

MB = 1_000_000
"""MB/s here: 10**6 bytes per second."""
RAW_TIMEOUT = 3600.0

_RAW_SERVICE = "benchlimits.Raw"


def _raw_server_process(chain: Path, key: Path, ca: Path, size: int, ports: Any, stop: Any) -> None:
    """A minimal grpc.aio server (as the link is one): Download streams ``size`` bytes in
    CHUNK_SIZE chunks, Upload takes a stream of chunks; mutual TLS, no other work."""

    async def serve() -> None:
        data = np.random.default_rng(1).random(size // 4, dtype=np.float32).tobytes()
        view = memoryview(data)

        async def download(request: bytes, context: Any) -> AsyncIterator[bytes]:
            total = min(int(request), len(view))
            for offset in range(0, total, CHUNK_SIZE):
                yield bytes(view[offset : min(offset + CHUNK_SIZE, total)])

        async def upload(chunks: AsyncIterator[bytes], context: Any) -> bytes:
            total = 0
            async for chunk in chunks:
                total += len(chunk)
            return str(total).encode()

        handler = grpc.method_handlers_generic_handler(
            _RAW_SERVICE,
            {
                "Download": grpc.unary_stream_rpc_method_handler(download),
                "Upload": grpc.stream_unary_rpc_method_handler(upload),
            },
        )
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials(
            [(key.read_bytes(), chain.read_bytes())],
            root_certificates=ca.read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        ports.put(port)
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await server.stop(1)

    asyncio.run(serve())


def _raw_client_process(
    port: int, chain: Path, key: Path, ca: Path, size: int, index: int, barrier: Any,
    results: Any,
) -> None:  # fmt: skip
    """One client (as a node is one): download ``size`` bytes, then upload ``size`` bytes."""
    credentials = grpc.ssl_channel_credentials(
        ca.read_bytes(), key.read_bytes(), chain.read_bytes()
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )
    download = channel.unary_stream(f"/{_RAW_SERVICE}/Download", None, None)
    upload = channel.stream_unary(f"/{_RAW_SERVICE}/Upload", None, None)
    payload = np.random.default_rng(100 + index).random(size // 4, dtype=np.float32).tobytes()
    view = memoryview(payload)

    def chunks() -> Iterator[bytes]:
        for offset in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[offset : offset + CHUNK_SIZE])

    sum(len(chunk) for chunk in download(b"1024"))  # connect and warm up
    barrier.wait()
    start = time.monotonic()
    received = sum(len(chunk) for chunk in download(str(size).encode()))
    end = time.monotonic()
    barrier.wait()
    upload_start = time.monotonic()
    uploaded = int(upload(chunks()))
    upload_end = time.monotonic()
    channel.close()
    results.put(
        {
            "index": index, "received": received, "uploaded": uploaded,
            "download": [start, end], "upload": [upload_start, upload_end],
        }
    )  # fmt: skip


def measure_raw(pki: TestPki, streams: int, size: int) -> dict[str, Any]:
    """``streams`` client processes download ``size`` bytes each from one server process at
    once, then upload ``size`` bytes each; the aggregate MB/s of each direction."""
    context = multiprocessing.get_context("spawn")
    chain, key = pki.paths("server")
    ca = pki.trust_bundle_path
    ports = context.Queue()
    results = context.Queue()
    stop = context.Event()
    barrier = context.Barrier(streams)
    server = context.Process(
        target=_raw_server_process, args=(chain, key, ca, size, ports, stop), daemon=True
    )
    server.start()
    clients: list[Any] = []
    sampler = RssSampler({"server": server.pid or 0})
    try:
        port = ports.get(timeout=120)
        sampler.__enter__()
        for index in range(1, streams + 1):
            node_chain, node_key = pki.paths(f"node-{index}")
            client = context.Process(
                target=_raw_client_process,
                args=(port, node_chain, node_key, ca, size, index, barrier, results),
                daemon=True,
            )
            client.start()
            clients.append(client)
        reports = [results.get(timeout=RAW_TIMEOUT) for _ in clients]
    finally:
        sampler.__exit__()
        stop.set()
        join_all([*clients, server])
    return {
        **stream_rates("raw stream", reports, size),
        "server_peak_rss_mib": sampler.own_mib("server"),
        "server_model_mib": size / (1 << 20),
    }


def join_all(processes: list[Any]) -> None:
    """Wait for each process up to 30 s; kill one that is still alive then."""
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


def stream_rates(what: str, reports: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """From each client's report (bytes ``received`` and ``uploaded``, ``download`` and
    ``upload`` as [start, end]): BenchError unless every client moved ``size`` bytes each way,
    else the span and aggregate MB/s of each direction."""
    if any(r["received"] != size or r["uploaded"] != size for r in reports):
        raise BenchError(f"{what}: wrong byte counts {reports}")
    down = max(r["download"][1] for r in reports) - min(r["download"][0] for r in reports)
    up = max(r["upload"][1] for r in reports) - min(r["upload"][0] for r in reports)
    streams = len(reports)
    return {
        "streams": streams,
        "bytes_per_stream": size,
        "download_seconds": down,
        "upload_seconds": up,
        "download_mb_s": streams * size / down / MB,
        "upload_mb_s": streams * size / up / MB,
    }
