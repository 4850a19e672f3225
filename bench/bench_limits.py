"""Against the limits: the authenticator's cost, large models, and 1,000 nodes on one link.

Run ``.venv/bin/python bench/bench_limits.py`` (``make bench`` runs it too); ``--only auth``,
``--only large`` or ``--only scale`` picks sections, ``--quick`` a small smoke version, ``--json``
JSON instead of the tables, ``--keep`` keeps the working directory (logs). Everything runs as
real processes with real gRPC over TLS on 127.0.0.1 (ports chosen by the OS); the PKI, the
databases, the apps and every temporary file live in one directory made by
``tempfile.mkdtemp`` (under ``$TMPDIR``) and removed at the end. Key material is only ever
passed as file paths.

Sections (docs/performance.md, "Against the limits", says what each figure means):

* ``auth``: a Fleet call (Heartbeat) on a link with the mTLS authenticator, on the same link's
  EC-key listener, and on a server-TLS-only link with no authenticator (``--node-auth none``):
  latency on one channel, and throughput with several channels (each its own connection and
  node) and several calls in flight each. Prints mTLS / none for both (target: <= 5 % worse).
  The measuring code is bench_auth.py's (figures 2 and 4 there).
* ``large``: a model (default 1 GB = 10**9 bytes of float32 in 4 arrays) sent by a ServerApp to
  N nodes (default 1, 2 and 4; a new federation each) with one ``flwrmtls run``, and a
  model-sized, different update back from every node; next to it, a plain gRPC byte stream
  over TLS between processes on this machine, in the same chunk size, both directions. Prints
  MB/s (10**6 bytes per second; the definitions are in the output), the ratio to the plain
  stream (target: >= 50 %), and the link's peak RSS for each N (it should not grow with N).
* ``scale``: 1,000 simulated nodes in a few worker processes, each node its own grpc.aio
  channel, TCP + TLS connection and certificate, doing on the Fleet API what a node does
  (ActivateNode, Heartbeat at the link's interval, long-poll PullMessages, and on a message:
  GetRun, the bundle, the message's objects, a reply built with flwrmtls' own message code,
  PushMessages). Prints the time for all to connect, the link's RSS, heartbeat latency
  p50/p99, and one ``flwrmtls run`` whose ServerApp sends every node a small message and waits
  for all replies (target: link RSS <= 1 GB).

It only prints figures; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_auth
import bench_rounds
import grpc
import grpc.aio
import numpy as np

from flwrmtls import __version__ as flwrmtls_version
from flwrmtls.app.message import message_from_proto, message_to_proto
from flwrmtls.app.records import ArrayRecord, MetricRecord, RecordDict
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.fleet.client import FleetClient
from flwrmtls.objects.store import CHUNK_SIZE, object_id_of
from flwrmtls.proto import common_pb2, fleet_pb2, fleet_pb2_grpc, objects_pb2
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.testing.processes import run_cli
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.errors import ConnectionContext

SECTIONS = ("auth", "large", "scale")
AUTH_TARGET = 0.05
"""mTLS may cost at most 5 % over no authenticator (latency up, throughput down)."""

DEFAULT_AUTH_CALLS = 3000
QUICK_AUTH_CALLS = 300

MB = 1_000_000
"""MB/s in this benchmark: 10**6 bytes per second."""
DEFAULT_MODEL_MB = 1000.0
QUICK_MODEL_MB = 64.0
DEFAULT_LARGE_NODES = (1, 2, 4)
LARGE_TARGET = 0.5
"""flwrmtls should move a large model at >= 50 % of a plain gRPC byte stream's rate."""
MODEL_ARRAYS = 4
LARGE_RUN_TIMEOUT = 3600.0
SAMPLE_INTERVAL = 0.05

DEFAULT_NODES = 1000
QUICK_NODES = 50
DEFAULT_WORKERS = 4
QUICK_WORKERS = 2
DEFAULT_HEARTBEAT_INTERVAL = 10.0
"""The link's own default --heartbeat-interval."""
QUICK_HEARTBEAT_INTERVAL = 2.0
IDLE_INTERVALS = 3
"""Heartbeat intervals the connected nodes idle for, before the round (2 with --quick)."""
SCALE_TARGET_MIB = 1e9 / (1 << 20)
"""The issue's 1 GB of link RSS (10**9 bytes), in MiB."""


class BenchError(Exception):
    """The benchmark could not measure: a process failed, or a run did not complete."""


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- auth -------------------------------------------------------------------------------------


def measure_auth(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Heartbeat latency (one channel) and throughput (channels x depth) per authenticator."""
    pki = bench_auth.make_pki(work / "pki", throughput_nodes=args.channels)
    chain, key = pki.paths("node-1")
    identity = load_tls_identity(chain, key, cert_flag="node-1", key_flag="node-1")
    links = bench_auth.start_links(pki, work)
    try:
        mtls, ec_key, tls_only = bench_auth.link_targets(pki, links, identity)
        progress(f"auth: latency, {args.auth_calls} heartbeats per link on one channel")
        latency = bench_auth.bench_heartbeats([mtls, ec_key, tls_only], args.auth_calls)
        calls = 2 * args.auth_calls
        progress(f"auth: throughput, {calls} heartbeats per link, {args.channels} x {args.depth}")
        throughput = bench_auth.bench_throughput(
            [mtls, ec_key, tls_only], pki, channels=args.channels, depth=args.depth, calls=calls
        )
    except (FlwrmtlsError, OSError) as error:
        tails = "\n".join(f"--- {name} log:\n{link.log[-2000:]}" for name, link in links.items())
        raise BenchError(f"auth: {error}\n{tails}") from None
    finally:
        bench_auth.stop_links(links)
    by_latency = {row.link: row for row in latency}
    by_throughput = {row.link: row for row in throughput}
    m, n = by_latency["mtls"], by_latency["tls-only"]
    tm, tn = by_throughput["mtls"], by_throughput["tls-only"]

    def cpu_ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    overhead = {
        # > 0: mTLS is slower / does fewer calls per second than no authenticator.
        "latency_p50": m.summary.p50_ms / n.summary.p50_ms - 1,
        "latency_mean": m.summary.mean_ms / n.summary.mean_ms - 1,
        "latency_link_cpu": _minus_one(cpu_ratio(m.link_cpu_us_per_call, n.link_cpu_us_per_call)),
        "throughput": 1 - tm.summary.per_second / tn.summary.per_second,
        "throughput_p50": tm.summary.p50_ms / tn.summary.p50_ms - 1,
        "throughput_link_cpu": _minus_one(
            cpu_ratio(tm.link_cpu_us_per_call, tn.link_cpu_us_per_call)
        ),
    }
    return {
        "latency": [asdict(row) for row in latency],
        "throughput": [asdict(row) for row in throughput],
        "mtls_over_none": overhead,
        "ratios": {
            "latency_p50_mtls_over_none": m.summary.p50_ms / n.summary.p50_ms,
            "latency_mean_mtls_over_none": m.summary.mean_ms / n.summary.mean_ms,
            "throughput_mtls_over_none": tm.summary.per_second / tn.summary.per_second,
            "throughput_ec_key_over_none": by_throughput["ec-key"].summary.per_second
            / tn.summary.per_second,
            "latency_p50_ec_key_over_none": by_latency["ec-key"].summary.p50_ms / n.summary.p50_ms,
        },
        "target": AUTH_TARGET,
        "config": {
            "latency_calls": args.auth_calls,
            "throughput_calls": calls,
            "channels": args.channels,
            "depth": args.depth,
        },
    }


def _minus_one(value: float | None) -> float | None:
    return None if value is None else value - 1


def _label(link: str) -> str:
    return {
        "mtls": "mTLS (client cert + CRL)",
        "ec-key": "EC-key P-384 (same link)",
        "tls-only": "none (server TLS only)",
    }[link]


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first, *rest = cells
    return "  ".join(
        [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} %"


def render_auth(auth: dict[str, Any]) -> list[str]:
    config = auth["config"]
    lines = [
        "1. Authenticator cost: Heartbeat on the Fleet API (links: subprocesses; client: this "
        "process)",
        f"   latency: one channel, {config['latency_calls']} calls per link one after another; "
        f"throughput: {config['channels']} channels (each its own connection and node) x "
        f"{config['depth']} calls in flight, {config['throughput_calls']} calls per link; "
        "rounds alternate between the links",
    ]
    widths = [28, 10, 10, 10, 12, 10, 10, 10, 12]
    header = ["authenticator", "lat p50", "lat p99", "calls/s", "CPU/call", "load c/s",
              "load p50", "load p99", "CPU/call"]  # fmt: skip
    lines.append(_row(header, widths))
    throughput = {row["link"]: row for row in auth["throughput"]}
    for row in auth["latency"]:
        s, t = row["summary"], throughput[row["link"]]
        ts = t["summary"]
        lines.append(
            _row(
                [
                    _label(row["link"]),
                    f"{s['p50_ms'] * 1000:.0f} us",
                    f"{s['p99_ms'] * 1000:.0f} us",
                    f"{s['per_second']:.0f}",
                    _us(row["link_cpu_us_per_call"]),
                    f"{ts['per_second']:.0f}",
                    f"{ts['p50_ms']:.1f} ms",
                    f"{ts['p99_ms']:.1f} ms",
                    _us(t["link_cpu_us_per_call"]),
                ],
                widths,
            )
        )
    o = auth["mtls_over_none"]
    target = auth["target"] * 100
    lines += [
        "   (CPU/call: the link process's CPU time per call, all threads)",
        f"   mTLS over none, one channel: latency p50 {_percent(o['latency_p50'])}, mean "
        f"{_percent(o['latency_mean'])}, link CPU/call {_percent(o['latency_link_cpu'])}",
        f"   mTLS over none, under load: throughput {_percent(-o['throughput'])} calls/s, "
        f"p50 {_percent(o['throughput_p50'])}, link CPU/call {_percent(o['throughput_link_cpu'])}",
        f"   target: mTLS at most {target:.0f} % over none: latency p50 "
        f"{'met' if o['latency_p50'] <= auth['target'] else 'NOT met'}, throughput "
        f"{'met' if o['throughput'] <= auth['target'] else 'NOT met'}",
    ]
    return lines


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} us"


# --- large: the app ---------------------------------------------------------------------------

_LARGE_PYPROJECT = """\
[project]
name = "bench-limits-large"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "bench_limits_large.server_app:app"
clientapp = "bench_limits_large.client_app:app"

[tool.flwrmtls.app.config]
nodes = 1
model-bytes = 1000000
arrays = 4
timeout = 3000.0
skip = "CN=probe"
"""

_LARGE_SERVER = '''\
"""Send every node a large model, take a model-sized update back; print monotonic stamps."""

import json
import time

import numpy as np

from flwrmtls.app import ArrayRecord, ConfigRecord, RecordDict, ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    config = context.run_config
    nodes = int(config["nodes"])
    timeout = float(config["timeout"])
    skip = str(config["skip"])
    # The nodes, not the benchmark's probe (it only heartbeats; it answers nothing).
    online = grid.wait_for_nodes(nodes + 1, 120.0)
    node_ids = sorted(n for n in online if skip not in grid.identities.get(n, ""))[:nodes]

    # A small round first, so that every node's ClientApp process is running before the
    # timed one: the timed round moves the model, it does not start processes.
    warm = [
        grid.create_message(RecordDict({"config": ConfigRecord({"warm-up": 1})}), "query", n, "w")
        for n in node_ids
    ]
    warm_start = time.monotonic()
    for reply in grid.send_and_receive(warm, timeout=300.0):
        if reply.has_error():
            raise RuntimeError(f"warm-up: {reply.error}")
    warm_end = time.monotonic()

    arrays = int(config["arrays"])
    per_array = int(config["model-bytes"]) // 4 // arrays
    rng = np.random.default_rng()
    model = ArrayRecord(
        {f"layer-{i}": rng.random(per_array, dtype=np.float32) for i in range(arrays)}
    )
    model_bytes = sum(a.nbytes for a in model.values())
    messages = [
        grid.create_message(RecordDict({"arrays": model}), "train", n, "large") for n in node_ids
    ]
    sent = time.monotonic()
    replies = grid.send_and_receive(messages, timeout=timeout)
    done = time.monotonic()

    # Every byte travelled: each node's update is the model plus its index.
    checked = 0
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
        index = reply.content["metrics"]["index"]
        for name, array in reply.content["arrays"].items():
            expected = model[name][[0, -1]] + np.float32(index)
            if array.nbytes != model[name].nbytes or not np.array_equal(array[[0, -1]], expected):
                raise RuntimeError(f"node {reply.metadata.src_node_id}: {name} is wrong")
            checked += array.nbytes
    stamps = {
        "nodes": len(node_ids), "model_bytes": model_bytes, "reply_bytes": checked,
        "warm_start": warm_start, "warm_end": warm_end, "sent": sent, "done": done,
    }
    print("BENCH-LIMITS " + json.dumps(stamps), flush=True)
    return {"nodes": len(node_ids), "model_bytes": model_bytes}
'''

_LARGE_CLIENT = '''\
"""Reply to the warm-up at once; reply to the model with model + index (new bytes)."""

import json
import time

import numpy as np

from flwrmtls.app import ArrayRecord, ClientApp, MetricRecord, RecordDict

app = ClientApp()


@app.query()
def warm(msg, context):
    return msg.create_reply(RecordDict({"metrics": MetricRecord({"ok": 1})}))


@app.train()
def train(msg, context):
    received = time.monotonic()
    index = int(context.node_config.get("index", 0))
    arrays = ArrayRecord(
        {key: value + np.float32(index) for key, value in msg.content["arrays"].items()}
    )
    nbytes = sum(a.nbytes for a in arrays.values())
    reply = msg.create_reply(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"index": index})})
    )
    stamps = {"index": index, "bytes": nbytes, "received": received, "replied": time.monotonic()}
    print("BENCH-LIMITS-CLIENT " + json.dumps(stamps), flush=True)
    return reply
'''


def write_app(directory: Path, package: str, files: dict[str, str], pyproject: str) -> Path:
    (directory / package).mkdir(parents=True)
    (directory / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    (directory / package / "__init__.py").write_text("", encoding="utf-8")
    for name, text in files.items():
        (directory / package / name).write_text(text, encoding="utf-8")
    return directory


# --- memory -----------------------------------------------------------------------------------


@dataclass
class RolePeaks:
    """Peak RSS in KiB of the link, of its children (the ServerApp), of the largest node and of
    the largest ClientApp (a node's children), sampled every ``SAMPLE_INTERVAL`` s."""

    link: int = 0
    serverapp: int = 0
    node: int = 0
    clientapp: int = 0
    samples: int = 0
    link_trace: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, the link's RSS in KiB), about one per second."""


class RoleSampler:
    def __init__(self, link_pid: int, node_pids: Sequence[int]) -> None:
        self._link = link_pid
        self._nodes = list(node_pids)
        self.peaks = RolePeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._started = time.monotonic()
        self._last_trace = -1.0

    def sample(self) -> None:
        rss = bench_rounds.rss_kib
        peaks = self.peaks
        link = rss(self._link)
        peaks.link = max(peaks.link, link)
        serverapp = sum(rss(child) for child in bench_rounds.descendants(self._link))
        peaks.serverapp = max(peaks.serverapp, serverapp)
        for pid in self._nodes:
            peaks.node = max(peaks.node, rss(pid))
            clientapp = sum(rss(child) for child in bench_rounds.descendants(pid))
            peaks.clientapp = max(peaks.clientapp, clientapp)
        peaks.samples += 1
        elapsed = time.monotonic() - self._started
        if elapsed - self._last_trace >= 1.0:
            peaks.link_trace.append((round(elapsed, 1), link))
            self._last_trace = elapsed

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()

    def __enter__(self) -> RoleSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()


def mib(kib: int) -> float:
    return kib / 1024


# --- large: a plain gRPC byte stream over TLS, the baseline ------------------------------------

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
    sampler = RoleSampler(server.pid or 0, [])
    try:
        port = ports.get(timeout=120)
        sampler.__enter__()
        for index in range(1, streams + 1):
            node_chain, node_key = pki.paths(bench_rounds.node_name(index))
            client = context.Process(
                target=_raw_client_process,
                args=(port, node_chain, node_key, ca, size, index, barrier, results),
                daemon=True,
            )
            client.start()
            clients.append(client)
        reports = [results.get(timeout=LARGE_RUN_TIMEOUT) for _ in clients]
    finally:
        sampler.__exit__()
        stop.set()
        for process in [*clients, server]:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    if any(r["received"] != size or r["uploaded"] != size for r in reports):
        raise BenchError(f"raw stream: wrong byte counts {reports}")
    down = max(r["download"][1] for r in reports) - min(r["download"][0] for r in reports)
    up = max(r["upload"][1] for r in reports) - min(r["upload"][0] for r in reports)
    return {
        "streams": streams,
        "bytes_per_stream": size,
        "download_seconds": down,
        "upload_seconds": up,
        "download_mb_s": streams * size / down / MB,
        "upload_mb_s": streams * size / up / MB,
        "server_peak_rss_mib": mib(sampler.peaks.link),
        "server_model_mib": size / (1 << 20),
    }


# --- large: flwrmtls --------------------------------------------------------------------------

_STAMPS = re.compile(r"BENCH-LIMITS (\{.*\})")


def client_stamps(
    nodes: Sequence[Any], run_id: int, marker: str, count: int
) -> list[dict[str, Any]]:
    """The stamps the ClientApps of ``run_id`` printed (their nodes relay them into their logs)."""
    pattern = re.compile(rf"run {run_id} ClientApp: {marker} (\{{.*\}})")
    deadline = time.monotonic() + 30.0
    while True:
        found = [
            json.loads(match.group(1)) for node in nodes for match in pattern.finditer(node.log)
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def run_app(
    env: dict[str, str], app_dir: Path, run_config: str, timeout: float
) -> tuple[int, dict[str, Any], float]:
    """``flwrmtls run APP --stream``: the run id, the ServerApp's stamps, the command's time."""
    started = time.monotonic()
    result = run_cli(
        ["run", str(app_dir), "--stream", "--run-config", run_config], env=env, timeout=timeout
    )
    wall = time.monotonic() - started
    output = result.stdout + result.stderr
    run_match = re.search(r"run (\d+) started:", result.stdout)
    stamps = _STAMPS.search(result.stdout)
    if result.returncode != 0 or run_match is None or stamps is None:
        raise BenchError(
            f"flwrmtls run exited with {result.returncode} (config {run_config}):\n{output[-4000:]}"
        )
    return int(run_match.group(1)), json.loads(stamps.group(1)), wall


class LargeFederation(bench_rounds.Federation):
    """bench_rounds' federation (mTLS + CRL link, N node processes). A node keeps a spare
    ClientApp process ready (since 33b0e42) and the link a spare ServerApp (since d7baa70), so
    a run's app processes are gone once each of them has at most one child left."""

    def wait_idle(self) -> bool:
        deadline = time.monotonic() + bench_rounds.IDLE_TIMEOUT
        link = [self.link.process.pid] if self.link and self.link.process else []
        nodes = self.node_pids()
        while time.monotonic() < deadline:
            if all(len(bench_rounds.children(pid)) <= 1 for pid in [*link, *nodes]):
                return True
            time.sleep(0.1)
        return False


def measure_large_cell(
    pki: TestPki, work: Path, app_dir: Path, env: dict[str, str], nodes: int, size: int
) -> dict[str, Any]:
    directory = work / f"large-{nodes}"
    federation = LargeFederation(pki, directory, nodes, env, bench_rounds.DEFAULT_STAGGER)
    try:
        begun = time.monotonic()
        federation.start()
        startup = time.monotonic() - begun
        link_pid, _ = federation.pids()
        link_idle = bench_rounds.rss_kib(link_pid)
        assert federation.link is not None
        probe = HeartbeatProbe(f"127.0.0.1:{federation.link.fleet_port}", pki)
        progress(f"large: {nodes} node(s) online after {startup:.1f} s; sending {size / MB:g} MB")
        try:
            with RoleSampler(link_pid, federation.node_pids()) as sampler:
                run_id, server, wall = run_app(
                    env, app_dir, f"nodes={nodes} model-bytes={size} arrays={MODEL_ARRAYS}",
                    LARGE_RUN_TIMEOUT,
                )  # fmt: skip
                federation.wait_idle()
        finally:
            probe.stop()
        clients = client_stamps(federation.nodes, run_id, "BENCH-LIMITS-CLIENT", nodes)
    except (BenchError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"large, {nodes} node(s): {error}\n{federation.log_tails()}") from None
    finally:
        federation.stop()
    if len(clients) != nodes:
        raise BenchError(f"large, {nodes} node(s): {len(clients)} ClientApp stamps")
    model_bytes = int(server["model_bytes"])
    sent, done = float(server["sent"]), float(server["done"])
    last_received = max(c["received"] for c in clients)
    first_replied = min(c["replied"] for c in clients)
    last_replied = max(c["replied"] for c in clients)
    broadcast = last_received - sent
    back = done - first_replied
    peaks = sampler.peaks
    return {
        "nodes": nodes,
        "model_bytes": model_bytes,
        "reply_bytes": int(server["reply_bytes"]),
        "startup_seconds": startup,
        "run_wall_seconds": wall,
        "warm_up_seconds": float(server["warm_end"]) - float(server["warm_start"]),
        "broadcast_seconds": broadcast,
        "client_seconds": last_replied - last_received,
        "return_seconds": back,
        "round_trip_seconds": done - sent,
        "broadcast_mb_s": nodes * model_bytes / broadcast / MB,
        "return_mb_s": nodes * model_bytes / back / MB,
        "round_trip_mb_s": 2 * nodes * model_bytes / (done - sent) / MB,
        "link_idle_rss_mib": mib(link_idle),
        "link_peak_rss_mib": mib(peaks.link),
        "serverapp_peak_rss_mib": mib(peaks.serverapp),
        "node_peak_rss_mib": mib(peaks.node),
        "clientapp_peak_rss_mib": mib(peaks.clientapp),
        "rss_samples": peaks.samples,
        "link_rss_trace_mib": [(t, round(mib(kib), 1)) for t, kib in peaks.link_trace],
        "probe_heartbeat": {
            **percentiles([h[1] for h in probe.samples if sent <= h[0] < done and h[2]]),
            "failed": sum(1 for h in probe.samples if sent <= h[0] < done and not h[2]),
        },
    }


def measure_large(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    step = 4 * MODEL_ARRAYS
    size = int(args.model_mb * MB) // step * step
    pki = make_test_pki(work / "pki")
    bench_rounds.issue_nodes(pki, max(args.large_nodes))
    pki.ca.issue_node(PROBE_NAME, organization="Probe")
    app_dir = write_app(
        work / "app",
        "bench_limits_large",
        {"server_app.py": _LARGE_SERVER, "client_app.py": _LARGE_CLIENT},
        _LARGE_PYPROJECT,
    )
    (work / "tmp").mkdir()
    env = {"FLWRMTLS_HOME": str(work / "home"), "TMPDIR": str(work / "tmp")}
    cells = []
    for nodes in args.large_nodes:
        progress(f"large: plain gRPC stream over TLS, {nodes} stream(s) x {size / MB:g} MB")
        raw = measure_raw(pki, nodes, size)
        cell = measure_large_cell(pki, work, app_dir, env, nodes, size)
        cell["raw"] = raw
        cell["broadcast_over_raw"] = cell["broadcast_mb_s"] / raw["download_mb_s"]
        cell["return_over_raw"] = cell["return_mb_s"] / raw["upload_mb_s"]
        cells.append(cell)
        progress(
            f"large: {nodes} node(s): broadcast {cell['broadcast_mb_s']:.0f} MB/s (raw "
            f"{raw['download_mb_s']:.0f}), return {cell['return_mb_s']:.0f} MB/s (raw "
            f"{raw['upload_mb_s']:.0f}), link peak {cell['link_peak_rss_mib']:.0f} MiB"
        )
    return {
        "model_bytes": size,
        "arrays": MODEL_ARRAYS,
        "chunk_bytes": CHUNK_SIZE,
        "target": LARGE_TARGET,
        "cells": cells,
    }


def render_large(large: dict[str, Any]) -> list[str]:
    size = large["model_bytes"] / MB
    lines = [
        f"2. Large model: {size:g} MB (float32, {large['arrays']} arrays) to N nodes, and a "
        "model-sized update (model + node index) back from each; one `flwrmtls run` on a new "
        "mTLS federation per N",
        "   MB/s = 10**6 bytes/s. broadcast: N x model bytes / (ServerApp calls "
        "send_and_receive -> the last ClientApp's handler starts, arrays decoded); return: "
        "N x model bytes / (the first ClientApp's handler returns -> send_and_receive returns, "
        "replies decoded); round trip: 2 x N x model bytes / send_and_receive. raw: N client "
        "processes, one grpc.aio server process, mutual TLS, "
        f"{large['chunk_bytes'] // 1024} KiB chunks, N x model bytes down, then up.",
    ]
    widths = [5, 12, 8, 6, 12, 8, 6, 12, 10, 10, 9, 10]
    header = ["nodes", "broadcast", "raw down", "ratio", "return", "raw up", "ratio",
              "round trip", "link RSS", "ServerApp", "node", "ClientApp"]  # fmt: skip
    lines.append(_row(header, widths))
    for cell in large["cells"]:
        raw = cell["raw"]
        lines.append(
            _row(
                [
                    str(cell["nodes"]),
                    f"{cell['broadcast_mb_s']:.0f} MB/s",
                    f"{raw['download_mb_s']:.0f}",
                    f"{cell['broadcast_over_raw'] * 100:.0f} %",
                    f"{cell['return_mb_s']:.0f} MB/s",
                    f"{raw['upload_mb_s']:.0f}",
                    f"{cell['return_over_raw'] * 100:.0f} %",
                    f"{cell['round_trip_mb_s']:.0f} MB/s",
                    f"{cell['link_peak_rss_mib']:.0f} MiB",
                    f"{cell['serverapp_peak_rss_mib']:.0f} MiB",
                    f"{cell['node_peak_rss_mib']:.0f} MiB",
                    f"{cell['clientapp_peak_rss_mib']:.0f} MiB",
                ],
                widths,
            )
        )
    for cell in large["cells"]:
        lines.append(
            f"   N={cell['nodes']}: broadcast {cell['broadcast_seconds']:.1f} s, ClientApps "
            f"{cell['client_seconds']:.1f} s, return {cell['return_seconds']:.1f} s; the run "
            f"command {cell['run_wall_seconds']:.1f} s (warm-up round "
            f"{cell['warm_up_seconds']:.1f} s); raw down {cell['raw']['download_seconds']:.1f} s, "
            f"up {cell['raw']['upload_seconds']:.1f} s, raw server peak RSS "
            f"{cell['raw']['server_peak_rss_mib']:.0f} MiB (it holds the model: "
            f"{cell['raw']['server_model_mib']:.0f} MiB)"
        )
    for cell in large["cells"]:
        lines.append(
            f"   N={cell['nodes']}: a probe node's Heartbeat (every {PROBE_INTERVAL * 1000:.0f} "
            "ms, from the benchmark's process) while the model moved: "
            + _beats(cell["probe_heartbeat"])
        )
    idle = ", ".join(f"{c['link_idle_rss_mib']:.0f}" for c in large["cells"])
    lines.append(
        f"   RSS: peaks during the run command; link: the link process alone (idle before: "
        f"{idle} MiB); ServerApp: the link's children (the run's ServerApp, and a spare one "
        "once the link keeps it); node: the largest node process; "
        "ClientApp: the largest sum of a node's children (the run's ClientApp and the node's "
        "spare one)"
    )
    target = large["target"]
    worst = min(min(c["broadcast_over_raw"], c["return_over_raw"]) for c in large["cells"])
    first, last = large["cells"][0], large["cells"][-1]
    lines.append(
        f"   target >= {target * 100:.0f} % of the raw stream: "
        f"{'met' if worst >= target else 'NOT met'} (lowest {worst * 100:.0f} %); link peak RSS "
        f"with {first['nodes']} -> {last['nodes']} node(s): {first['link_peak_rss_mib']:.0f} -> "
        f"{last['link_peak_rss_mib']:.0f} MiB"
    )
    return lines


# --- scale: the app ---------------------------------------------------------------------------

_SCALE_PYPROJECT = """\
[project]
name = "bench-limits-scale"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "bench_limits_scale.server_app:app"
clientapp = "bench_limits_scale.client_app:app"

[tool.flwrmtls.app.config]
nodes = 1
timeout = 600.0
skip = "CN=probe"
"""

_SCALE_SERVER = '''\
"""One small message to every node, then wait for every reply; print monotonic stamps."""

import json
import time

import numpy as np

from flwrmtls.app import ArrayRecord, ConfigRecord, RecordDict, ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    nodes = int(context.run_config["nodes"])
    timeout = float(context.run_config["timeout"])
    entered = time.monotonic()
    skip = str(context.run_config["skip"])
    # Every online node but the benchmark's probe (it only heartbeats; it answers nothing).
    node_ids = [
        n for n in grid.wait_for_nodes(nodes + 1, 120.0) if skip not in grid.identities.get(n, "")
    ]
    online = time.monotonic()
    content = RecordDict(
        {
            "arrays": ArrayRecord({"weights": np.arange(256, dtype=np.float32)}),
            "config": ConfigRecord({"server-round": 1}),
        }
    )
    messages = [grid.create_message(content, "train", n, "scale") for n in node_ids]
    sent = time.monotonic()
    replies = grid.send_and_receive(messages, timeout=timeout)
    done = time.monotonic()
    errors = {}
    answered = set()
    for reply in replies:
        if reply.has_error():
            errors[reply.error.code_name] = errors.get(reply.error.code_name, 0) + 1
            continue
        index = reply.content["metrics"]["index"]
        expected = np.arange(256, dtype=np.float32) + np.float32(index)
        if not np.array_equal(reply.content["arrays"]["weights"], expected):
            errors["wrong reply"] = errors.get("wrong reply", 0) + 1
            continue
        answered.add(reply.metadata.src_node_id)
    stamps = {
        "entered": entered, "online": online, "sent": sent, "done": done,
        "nodes": len(node_ids), "messages": len(messages), "replies": len(replies),
        "answered": len(answered), "errors": errors,
    }
    print("BENCH-LIMITS " + json.dumps(stamps), flush=True)
    return {"answered": len(answered)}
'''

_SCALE_CLIENT = '''\
"""Not used: the scale section's nodes are simulated in bench_limits.py (the bundle needs one)."""

from flwrmtls.app import ClientApp

app = ClientApp()
'''


# --- scale: simulated nodes -------------------------------------------------------------------

PULL_WAIT = 20.0
"""Seconds a simulated node's long poll waits, as a real node's (flwrmtls.node.agent)."""
ACTIVATE_ATTEMPTS = 6
SIM_NODE_PREFIX = "sim-"


@dataclass
class WorkerStats:
    activated: list[float] = field(default_factory=list)
    """time.monotonic() when each node's ActivateNode returned."""
    activation_retries: int = 0
    heartbeats: list[tuple[float, float, bool]] = field(default_factory=list)
    """(sent at, seconds, succeeded) per heartbeat."""
    handled: list[tuple[float, float]] = field(default_factory=list)
    """(the long poll returned the message, the reply was pushed) per message."""
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def error(self, where: str, error: BaseException) -> None:
        code = (
            error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
        )
        key = f"{where}: {code}"
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{key}: {error}"[:500])


class SimNode:
    """One simulated node: its own channel (own TCP + TLS connection, own certificate) and
    on the Fleet API the calls a real node makes (flwrmtls.node.agent, .apps, .fleet.client)."""

    def __init__(self, index: int, address: str, credentials: grpc.ChannelCredentials) -> None:
        self.index = index
        self.channel = grpc.aio.secure_channel(
            address,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", "localhost"),
                # a subchannel pool of its own: never a connection shared with another node
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)
        self.node_id = 0
        self.session_id = ""
        self.interval = 10.0
        self.runs: set[int] = set()
        """Runs this node works for (a real node has a ClientApp process for each)."""

    async def activate(self, stats: WorkerStats) -> None:
        """ActivateNode, retried on UNAVAILABLE as a real node retries (1 s, doubling)."""
        for attempt in range(1, ACTIVATE_ATTEMPTS + 1):
            try:
                response = await self.stub.ActivateNode(
                    fleet_pb2.ActivateNodeRequest(node_version=flwrmtls_version), timeout=60
                )
            except grpc.aio.AioRpcError as error:
                retry = error.code() in (
                    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED
                )  # fmt: skip
                if not retry or attempt == ACTIVATE_ATTEMPTS:
                    raise
                stats.activation_retries += 1
                await asyncio.sleep(min(30.0, 2.0 ** (attempt - 1)))
                continue
            self.node_id, self.session_id = response.node_id, response.session_id
            self.interval = response.heartbeat_interval or self.interval
            stats.activated.append(time.monotonic())
            return

    async def heartbeats(self, stats: WorkerStats) -> None:
        """A Heartbeat every interval the link asked for, as the node's heartbeat thread."""
        while True:
            await asyncio.sleep(self.interval)
            start = time.monotonic()
            ok = True
            try:
                response = await self.stub.Heartbeat(
                    fleet_pb2.HeartbeatRequest(session_id=self.session_id), timeout=10
                )
                self.interval = response.heartbeat_interval or self.interval
            except grpc.aio.AioRpcError as error:
                ok = False
                stats.error("Heartbeat", error)
            stats.heartbeats.append((start, time.monotonic() - start, ok))

    async def work(self, stats: WorkerStats) -> None:
        """Long-poll PullMessages; answer each message; forget runs the link says ended."""
        while True:
            try:
                response = await self.stub.PullMessages(
                    fleet_pb2.PullMessagesRequest(
                        session_id=self.session_id, wait_seconds=PULL_WAIT,
                        active_run_ids=sorted(self.runs),
                    ),
                    timeout=PULL_WAIT + 10,
                )  # fmt: skip
            except grpc.aio.AioRpcError as error:
                stats.error("PullMessages", error)
                await asyncio.sleep(1.0)
                continue
            self.runs.difference_update(response.ended_run_ids)
            for message in response.messages:
                received = time.monotonic()
                try:
                    await self.answer(message)
                except (grpc.aio.AioRpcError, ValueError, KeyError) as error:
                    stats.error("answer", error)
                    continue
                stats.handled.append((received, time.monotonic()))

    async def pull_object(self, object_id: str) -> bytes:
        """PullObject into memory and verify it (as transfer.pull_object_bytes does)."""
        buffer = bytearray()
        async for chunk in self.stub.PullObject(
            objects_pb2.PullObjectRequest(object_id=object_id, session_id=self.session_id),
            timeout=600,
        ):
            if chunk.offset != len(buffer):
                raise ValueError(f"object {object_id}: chunk at {chunk.offset}")
            buffer += chunk.data
        data = bytes(buffer)
        if object_id_of(data) != object_id:
            raise ValueError(f"object {object_id}: bytes do not match their SHA-256")
        return data

    async def answer(self, proto: common_pb2.Message) -> None:
        """What the node and its ClientApp do with a message: the run's bundle on its first
        message, the message's objects, the reply (built with flwrmtls' message code), its
        objects (those the link lacks), PushMessages."""
        if proto.run_id not in self.runs:
            run = await self.stub.GetRun(
                fleet_pb2.GetRunRequest(session_id=self.session_id, run_id=proto.run_id),
                timeout=30,
            )
            await self.pull_object(run.bundle_hash)
            self.runs.add(proto.run_id)
        objects = {oid: await self.pull_object(oid) for oid in dict.fromkeys(proto.object_ids)}
        message = message_from_proto(proto, objects)
        record = message.content["arrays"]
        assert isinstance(record, ArrayRecord)
        weights = record["weights"]
        reply = message.create_reply(
            RecordDict(
                {
                    "arrays": ArrayRecord({"weights": weights + np.float32(self.index)}),
                    "metrics": MetricRecord({"index": self.index}),
                }
            )
        )
        reply_proto, reply_objects = message_to_proto(reply)
        if reply_objects:
            missing = await self.stub.MissingObjects(
                objects_pb2.MissingObjectsRequest(
                    object_ids=list(reply_objects), session_id=self.session_id
                ),
                timeout=30,
            )
            for object_id in missing.object_ids:
                await self.stub.PushObject(
                    _object_chunks(object_id, reply_objects[object_id], self.session_id),
                    timeout=600,
                )
        reply_proto.run_id = proto.run_id
        reply_proto.src_node_id = self.node_id
        await self.stub.PushMessages(
            fleet_pb2.PushMessagesRequest(session_id=self.session_id, messages=[reply_proto]),
            timeout=30,
        )

    async def deactivate(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.DeactivateNode(
                fleet_pb2.DeactivateNodeRequest(session_id=self.session_id), timeout=30
            )


def _object_chunks(
    object_id: str, data: memoryview, session_id: str
) -> Iterator[objects_pb2.ObjectChunk]:
    view = data.cast("B")
    total = len(view)
    for offset in range(0, max(total, 1), CHUNK_SIZE):
        yield objects_pb2.ObjectChunk(
            object_id=object_id, total_size=total, offset=offset,
            data=bytes(view[offset : offset + CHUNK_SIZE]), session_id=session_id,
        )  # fmt: skip


def _scale_worker_process(
    conn: Any, address: str, root: Path, nodes: list[tuple[int, Path, Path]]
) -> None:
    """A worker process: ``nodes`` simulated nodes on one event loop, driven by ``conn``."""
    asyncio.run(_scale_worker(conn, address, root, nodes))


async def _scale_worker(
    conn: Any, address: str, root: Path, specs: list[tuple[int, Path, Path]]
) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def listen() -> None:
        while True:
            try:
                command = conn.recv()
            except (EOFError, OSError):
                command = "stop"
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if command == "stop":
                return

    root_pem = root.read_bytes()
    nodes = []
    for index, chain, key in specs:
        identity = load_tls_identity(chain, key, cert_flag="cert", key_flag="key")
        nodes.append(SimNode(index, address, channel_credentials(root_pem, identity)))
    stats = WorkerStats()
    tasks: list[asyncio.Task[None]] = []
    threading.Thread(target=listen, name="commands", daemon=True).start()
    conn.send({"ready": os.getpid()})
    try:
        while True:
            command = await commands.get()
            if command == "connect":
                outcomes = await asyncio.gather(
                    *(node.activate(stats) for node in nodes), return_exceptions=True
                )
                live = []
                for node, outcome in zip(nodes, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        stats.error("ActivateNode", outcome)
                    else:
                        live.append(node)
                for node in live:
                    tasks.append(asyncio.create_task(node.heartbeats(stats)))
                    tasks.append(asyncio.create_task(node.work(stats)))
                conn.send(
                    {
                        "activated": stats.activated,
                        "retries": stats.activation_retries,
                        "errors": dict(stats.errors),
                        "first_errors": list(stats.first_errors),
                    }
                )
            elif command == "report":
                conn.send(asdict(stats))
            elif command == "stop":
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(node.deactivate() for node in nodes if node.session_id))
        await asyncio.gather(*(node.channel.close(None) for node in nodes))
        with contextlib.suppress(OSError):
            conn.send({"stopped": True})


def fleet_connections(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the link's side of each)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == "01"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                count += 1
    return count


PROBE_INTERVAL = 0.1
PROBE_NAME = "probe"


class HeartbeatProbe:
    """One more node, in this process, on its own thread and blocking channel: a Heartbeat every
    ``PROBE_INTERVAL`` s, timed. It shows how fast the link answers while all the simulated
    nodes are connected, without the worker processes' own scheduling in the figure."""

    def __init__(self, address: str, pki: TestPki) -> None:
        chain, key = pki.paths(PROBE_NAME)
        identity = load_tls_identity(chain, key, cert_flag="cert", key_flag="key")
        root = pki.trust_bundle_path
        self.channel = grpc.secure_channel(
            address,
            channel_credentials(root.read_bytes(), identity),
            options=[
                ("grpc.ssl_target_name_override", "localhost"),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        context = ConnectionContext(
            address, tls=True, has_client_certificate=True, root_certificates=str(root)
        )
        self.client = FleetClient(self.channel, context)
        self.session = self.client.activate()
        self.samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            start = time.monotonic()
            ok = True
            try:
                self.client.heartbeat(self.session)
            except FlwrmtlsError:
                ok = False
            self.samples.append((start, time.monotonic() - start, ok))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(FlwrmtlsError):
            self.client.deactivate(self.session)
        self.channel.close()


class ScaleLink(bench_rounds.Federation):
    """A link (mTLS + CRL) and a CLI profile, with no node processes; its heartbeat interval
    is ``interval`` (the link's default is 10 s)."""

    def __init__(self, pki: TestPki, directory: Path, env: dict[str, str], interval: float):
        super().__init__(pki, directory, 0, env, 0.0)
        self.interval = interval

    def link_args(self) -> list[str]:
        args = super().link_args()
        args[args.index("--heartbeat-interval") + 1] = f"{self.interval:g}"
        return args


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds of values in seconds (nearest rank)."""
    if not values:
        return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        index = max(1, round(fraction * len(ordered) + 0.4999))
        return ordered[min(index, len(ordered)) - 1] * 1000

    return {
        "count": len(ordered),
        "p50_ms": rank(0.50),
        "p99_ms": rank(0.99),
        "max_ms": ordered[-1] * 1000,
    }


class Workers:
    """The worker processes and their pipes."""

    def __init__(self, count: int, address: str, root: Path, pki: TestPki, nodes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.pipes: list[Any] = []
        for worker in range(count):
            specs = [
                (index, *pki.paths(f"{SIM_NODE_PREFIX}{index}"))
                for index in range(worker + 1, nodes + 1, count)
            ]
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_scale_worker_process, args=(theirs, address, root, specs), daemon=True
            )
            process.start()
            theirs.close()
            self.processes.append(process)
            self.pipes.append(ours)

    def receive(self, timeout: float) -> list[dict[str, Any]]:
        answers = []
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                if not pipe.poll(timeout):
                    raise BenchError(f"worker {process.pid} did not answer in {timeout:.0f} s")
                answers.append(pipe.recv())
            except (EOFError, OSError):
                raise BenchError(
                    f"worker {process.pid} exited with {process.exitcode} (its traceback is above)"
                ) from None
        return answers

    def ask(self, command: str, timeout: float) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send(command)
        return self.receive(timeout)

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for pipe in self.pipes:
            with contextlib.suppress(OSError, EOFError):
                if pipe.poll(60):
                    pipe.recv()
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()


def online_count(link: ScaleLink) -> int:
    result = run_cli(["supernode", "list", "--format", "json"], env=link.env, timeout=120)
    if result.returncode != 0:
        raise BenchError(f"flwrmtls supernode list failed: {result.stderr.strip()}")
    nodes: list[dict[str, Any]] = json.loads(result.stdout)
    return sum(1 for node in nodes if node.get("status") == "online")


def measure_scale(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    count = args.nodes
    pki = make_test_pki(work / "pki")
    began = time.monotonic()
    for index in range(1, count + 1):
        pki.ca.issue_node(f"{SIM_NODE_PREFIX}{index}", organization=f"Sim {index}")
    pki.ca.issue_node(PROBE_NAME, organization="Probe")
    progress(f"scale: {count} node certificates issued in {time.monotonic() - began:.1f} s")
    app_dir = write_app(
        work / "app",
        "bench_limits_scale",
        {"server_app.py": _SCALE_SERVER, "client_app.py": _SCALE_CLIENT},
        _SCALE_PYPROJECT,
    )
    (work / "tmp").mkdir()
    env = {"FLWRMTLS_HOME": str(work / "home"), "TMPDIR": str(work / "tmp")}
    link = ScaleLink(pki, work / "link", env, args.heartbeat_interval)
    workers: Workers | None = None
    probe: HeartbeatProbe | None = None
    try:
        link.start()
        assert link.link is not None
        assert link.link.process is not None
        link_pid = link.link.process.pid
        port = link.link.fleet_port
        rss: dict[str, float] = {"idle_no_nodes": mib(bench_rounds.rss_kib(link_pid))}
        workers = Workers(
            args.workers, f"127.0.0.1:{port}", pki.trust_bundle_path, pki, count
        )  # fmt: skip
        workers.receive(timeout=300)  # each has loaded its certificates and made its channels
        with RoleSampler(link_pid, workers.pids()) as whole:
            cpu_before = bench_auth.process_cpu_ns(link_pid)
            go = time.monotonic()
            connected = workers.ask("connect", timeout=900)
            activated = [t for answer in connected for t in answer["activated"]]
            all_active = max(activated) - go if activated else float("nan")
            progress(f"scale: {len(activated)} of {count} nodes active after {all_active:.1f} s")
            while (online := online_count(link)) < len(activated):
                if time.monotonic() - go > 900:
                    raise BenchError(f"only {online} of {len(activated)} nodes online")
                time.sleep(0.5)
            all_online = time.monotonic() - go
            connections = fleet_connections(port)
            rss["connected"] = mib(bench_rounds.rss_kib(link_pid))
            cpu_connected = bench_auth.process_cpu_ns(link_pid)
            progress(
                f"scale: the link lists {online} online after {all_online:.1f} s; "
                f"{connections} connections to its Fleet port; RSS {rss['connected']:.0f} MiB; "
                f"idle for {args.idle_seconds:g} s"
            )
            probe = HeartbeatProbe(f"127.0.0.1:{port}", pki)
            idle_start = time.monotonic()
            time.sleep(args.idle_seconds)
            idle_end = time.monotonic()
            cpu_idle = bench_auth.process_cpu_ns(link_pid)
            rss["after_idle"] = mib(bench_rounds.rss_kib(link_pid))
            progress(f"scale: `flwrmtls run` to {len(activated)} nodes")
            with RoleSampler(link_pid, []) as during_round:
                round_start = time.monotonic()
                run_id, server, wall = run_app(
                    env, app_dir, f"nodes={len(activated)} timeout={args.round_timeout:g}",
                    args.round_timeout + 300,
                )  # fmt: skip
                round_end = time.monotonic()
            cpu_round = bench_auth.process_cpu_ns(link_pid)
            connections_after = fleet_connections(port)
            reports = workers.ask("report", timeout=120)
        probe.stop()
        probe_samples = probe.samples
        probe = None
        workers.stop()
        workers = None
    except (BenchError, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"scale: {error}\n{link.log_tails()}") from None
    finally:
        if probe is not None:
            probe.stop()
        if workers is not None:
            workers.stop()
        link.stop()
    heartbeats = [h for report in reports for h in report["heartbeats"]]
    handled = [h for report in reports for h in report["handled"]]
    errors: dict[str, int] = {}
    for report in reports:  # each worker's counts since its start
        for key, value in report["errors"].items():
            errors[key] = errors.get(key, 0) + value
    first_errors = [e for report in reports for e in report["first_errors"]][:10]

    def window(
        start: float, end: float, samples: Sequence[Sequence[Any]] = heartbeats
    ) -> dict[str, float]:
        return {
            **percentiles([h[1] for h in samples if start <= h[0] < end and h[2]]),
            "failed": sum(1 for h in samples if start <= h[0] < end and not h[2]),
        }

    sent, done = float(server["sent"]), float(server["done"])
    received = [h[0] for h in handled if h[0] >= sent]
    replied = [h[1] for h in handled if h[0] >= sent]

    def cpu(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None else (b - a) / 1e9

    idle_beats = window(idle_start, idle_end)
    probe_idle = window(idle_start, idle_end, probe_samples)
    idle_cpu = cpu(cpu_connected, cpu_idle)
    return {
        "nodes": count,
        "workers": args.workers,
        "heartbeat_interval": args.heartbeat_interval,
        "idle_seconds": idle_end - idle_start,
        "activated": len(activated),
        "activation_retries": sum(answer["retries"] for answer in connected),
        "connect_seconds": all_active,
        "online_seconds": all_online,
        "fleet_connections": connections,
        "fleet_connections_after_round": connections_after,
        "link_rss_mib": {
            **rss,
            "peak_round": mib(during_round.peaks.link),
            "peak": mib(whole.peaks.link),
        },
        "serverapp_peak_rss_mib": mib(during_round.peaks.serverapp),
        "worker_peak_rss_mib": mib(whole.peaks.node),
        "link_cpu_seconds": {
            "connect": cpu(cpu_before, cpu_connected),
            "idle": idle_cpu,
            "round": cpu(cpu_idle, cpu_round),
        },
        "link_idle_cpu_cores": None if idle_cpu is None else idle_cpu / (idle_end - idle_start),
        "heartbeat_idle": idle_beats,
        "heartbeat_round": window(round_start, round_end),
        "heartbeat_all": window(0.0, float("inf")),
        "probe_interval": PROBE_INTERVAL,
        "probe_idle": probe_idle,
        "probe_round": window(round_start, round_end, probe_samples),
        "round": {
            "run_id": run_id,
            "run_wall_seconds": wall,
            "wait_for_nodes_seconds": float(server["online"]) - float(server["entered"]),
            "send_and_receive_seconds": done - sent,
            "last_delivered_seconds": max(received) - sent if received else None,
            "last_reply_pushed_seconds": max(replied) - sent if replied else None,
            "delivery": percentiles([t - sent for t in received]),
            "messages": int(server["messages"]),
            "answered": int(server["answered"]),
            "error_replies": server["errors"],
        },
        "errors": errors,
        "first_errors": first_errors,
        "target_rss_mib": SCALE_TARGET_MIB,
    }


def _cores(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _beats(window: dict[str, Any]) -> str:
    return (
        f"p50 {window['p50_ms']:.1f} ms, p99 {window['p99_ms']:.1f} ms, max "
        f"{window['max_ms']:.0f} ms ({window['count']} calls, {window['failed']} failed)"
    )


def render_scale(scale: dict[str, Any]) -> list[str]:
    r, rss = scale["round"], scale["link_rss_mib"]
    idle, during = scale["heartbeat_idle"], scale["heartbeat_round"]
    cpu = scale["link_cpu_seconds"]

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    lines = [
        f"3. Scale: {scale['nodes']} simulated nodes in {scale['workers']} worker processes (each "
        "node: its own grpc.aio channel, TCP + TLS connection and certificate); one mTLS link "
        f"with --heartbeat-interval {scale['heartbeat_interval']:g}",
        f"   connect: all {scale['activated']} ActivateNode calls done "
        f"{scale['connect_seconds']:.1f} s after the start (all at once; "
        f"{scale['activation_retries']} retries); the link lists "
        f"them online after {scale['online_seconds']:.1f} s; established connections to the "
        f"Fleet port: {scale['fleet_connections']} (after the round: "
        f"{scale['fleet_connections_after_round']}, with the probe's)",
        f"   link RSS: {rss['idle_no_nodes']:.0f} MiB with no node, {rss['connected']:.0f} MiB "
        f"with all connected, {rss['after_idle']:.0f} MiB after {scale['idle_seconds']:.0f} s "
        f"idle, peak {rss['peak_round']:.0f} MiB during the round, {rss['peak']:.0f} MiB "
        f"overall (target <= {scale['target_rss_mib']:.0f} MiB: "
        f"{'met' if rss['peak'] <= scale['target_rss_mib'] else 'NOT met'}); ServerApp peak "
        f"{scale['serverapp_peak_rss_mib']:.0f} MiB",
        f"   heartbeat latency, the simulated nodes' own calls: {_beats(idle)} while idle; "
        f"{_beats(during)} during the round",
        f"   heartbeat latency, a probe node in the benchmark's process (a Heartbeat every "
        f"{scale['probe_interval'] * 1000:.0f} ms): {_beats(scale['probe_idle'])} while idle; "
        f"{_beats(scale['probe_round'])} during the round",
        f"   the round (`flwrmtls run`, one small message to each node, wait for all replies): "
        f"send_and_receive {r['send_and_receive_seconds']:.2f} s ({r['answered']} of "
        f"{r['messages']} answered; error replies {r['error_replies'] or 'none'}); last message "
        f"delivered after {seconds(r['last_delivered_seconds'])} (p50 "
        f"{r['delivery']['p50_ms'] / 1000:.2f} s), last reply pushed after "
        f"{seconds(r['last_reply_pushed_seconds'])}; the run command "
        f"{r['run_wall_seconds']:.1f} s (wait_for_nodes {r['wait_for_nodes_seconds']:.2f} s)",
        f"   link CPU: connect {seconds(cpu['connect'])}, idle {seconds(cpu['idle'])} "
        f"({_cores(scale['link_idle_cpu_cores'])} of a core: heartbeats, long polls renewed "
        f"every {PULL_WAIT:g} s, the probe), round "
        f"{seconds(cpu['round'])}; worker peak RSS {scale['worker_peak_rss_mib']:.0f} MiB",
    ]
    if scale["errors"]:
        lines.append(f"   errors seen by the simulated nodes: {scale['errors']}")
        lines += [f"     {error}" for error in scale["first_errors"][:5]]
    return lines


# --- output and main --------------------------------------------------------------------------


def revision() -> str:
    """The git revision of this checkout (``+dirty`` with uncommitted changes), or unknown."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def render(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "flwrmtls against the limits",
        f"  {result['date']}, revision {result['revision']}; flwrmtls {machine['flwrmtls']}, "
        f"Python {machine['python']}, grpcio {machine['grpcio']}, numpy {machine['numpy']}",
        f"  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable)"
        + (f", {machine['cpu_model']}" if machine["cpu_model"] else "")
        + f", {machine['memory_gib']} GiB; {machine['platform']}",
    ]
    if "auth" in result:
        lines += ["", *render_auth(result["auth"])]
    if "large" in result:
        lines += ["", *render_large(result["large"])]
    if "scale" in result:
        lines += ["", *render_scale(result["scale"])]
    lines += ["", f"total time {result['elapsed_seconds']:.1f} s"]
    return "\n".join(lines)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument(
        "--only",
        choices=SECTIONS,
        nargs="+",
        help="run only these sections (default: all three)",
    )
    p.add_argument("--quick", action="store_true", help="a small smoke version of each section")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs) and print it"
    )
    auth = p.add_argument_group("auth")
    auth.add_argument(
        "--auth-calls",
        type=positive,
        help=f"heartbeats per link on one channel (default {DEFAULT_AUTH_CALLS}, quick "
        f"{QUICK_AUTH_CALLS}); twice as many for throughput",
    )
    auth.add_argument(
        "--channels",
        type=positive,
        default=bench_auth.DEFAULT_CHANNELS,
        help=f"throughput: channels per link (default {bench_auth.DEFAULT_CHANNELS})",
    )
    auth.add_argument(
        "--depth",
        type=positive,
        default=bench_auth.DEFAULT_DEPTH,
        help=f"throughput: calls in flight per channel (default {bench_auth.DEFAULT_DEPTH})",
    )
    large = p.add_argument_group("large")
    large.add_argument(
        "--model-mb",
        type=float,
        help=f"model size in MB (10**6 bytes; default {DEFAULT_MODEL_MB:g}, quick "
        f"{QUICK_MODEL_MB:g})",
    )
    large.add_argument(
        "--large-nodes",
        type=positive,
        nargs="+",
        help="node counts, a new federation each (default 1 2 4)",
    )
    scale = p.add_argument_group("scale")
    scale.add_argument(
        "--nodes",
        type=positive,
        help=f"simulated nodes (default {DEFAULT_NODES}, quick {QUICK_NODES})",
    )
    scale.add_argument(
        "--workers",
        type=positive,
        help=f"worker processes for them (default {DEFAULT_WORKERS}, quick {QUICK_WORKERS})",
    )
    scale.add_argument(
        "--heartbeat-interval",
        type=float,
        help=f"the link's --heartbeat-interval (default {DEFAULT_HEARTBEAT_INTERVAL:g}, quick "
        f"{QUICK_HEARTBEAT_INTERVAL:g})",
    )
    scale.add_argument(
        "--idle-seconds",
        type=float,
        help=f"seconds all nodes idle before the round (default {IDLE_INTERVALS} heartbeat "
        "intervals, quick 2)",
    )
    scale.add_argument(
        "--round-timeout",
        type=float,
        default=600.0,
        help="seconds the round's ServerApp waits for replies (default 600)",
    )
    return p


def apply_defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    if args.auth_calls is None:
        args.auth_calls = QUICK_AUTH_CALLS if quick else DEFAULT_AUTH_CALLS
    if args.model_mb is None:
        args.model_mb = QUICK_MODEL_MB if quick else DEFAULT_MODEL_MB
    if args.large_nodes is None:
        args.large_nodes = list(DEFAULT_LARGE_NODES)
    if args.nodes is None:
        args.nodes = QUICK_NODES if quick else DEFAULT_NODES
    if args.workers is None:
        args.workers = min(QUICK_WORKERS if quick else DEFAULT_WORKERS, args.nodes)
    if args.heartbeat_interval is None:
        args.heartbeat_interval = QUICK_HEARTBEAT_INTERVAL if quick else DEFAULT_HEARTBEAT_INTERVAL
    if args.idle_seconds is None:
        args.idle_seconds = args.heartbeat_interval * (2 if quick else IDLE_INTERVALS)


@contextlib.contextmanager
def _raise_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the benchmark like Ctrl-C, so processes and files are cleaned up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    apply_defaults(args)
    sections = args.only or list(SECTIONS)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="flwrmtls-bench-limits-"))
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "revision": revision(),
        "machine": {**bench_rounds.machine_facts(), "flwrmtls": flwrmtls_version},
        "sections": sections,
        "quick": args.quick,
    }
    try:
        with _raise_on_sigterm():
            if "auth" in sections:
                result["auth"] = measure_auth(args, work / "auth")
            if "large" in sections:
                result["large"] = measure_large(args, work / "large")
            if "scale" in sections:
                result["scale"] = measure_scale(args, work / "scale")
    except BenchError as error:
        raise SystemExit(f"bench_limits: {error}") from None
    except KeyboardInterrupt:
        raise SystemExit("bench_limits: interrupted") from None
    finally:
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["elapsed_seconds"] = time.monotonic() - started
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))


if __name__ == "__main__":
    main(sys.argv[1:])
