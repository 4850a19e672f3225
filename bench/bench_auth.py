"""What mTLS costs on the link: handshakes per second, and an authenticated call next to TLS-only.

Run ``.venv/bin/python bench/bench_auth.py`` (or ``make bench``); ``--json`` prints JSON instead
of the table. Two real links run as subprocesses on 127.0.0.1 (ports chosen by the OS), with the
test PKI and their databases in a temporary directory:

* ``mtls``: ``--ssl-require-client-auth --ssl-crl-file`` (the CRL revokes one other node, so
  the per-call CRL lookup has something to look in);
* ``tls-only``: server TLS only, no client certificate asked for or presented.

Figures:

1. Handshakes: each one is a new channel (its own subchannel, so a new TCP and TLS connection
   presenting the client certificate, no session resumption) plus one ActivateNode call, then
   the channel is closed. Run sequentially, then from a few threads at once, on both links
   in alternating rounds (the TLS-only rows show what the client certificate adds).
2. Heartbeat: one long-lived channel per link, one session, then the same Heartbeat call many
   times, in alternating rounds (mTLS, TLS-only, TLS-only, mTLS, ...) so that machine noise
   hits both alike. The ratio mTLS / TLS-only is what the authenticator adds per call; the
   link's own CPU time per call (Linux: the schedstat of its threads) is shown beside it,
   as it is less disturbed by the client sharing the machine.
3. ``MtlsAuthenticator.authenticate`` alone in this process, cached (what every call pays,
   with and without a CRL) and uncached (the first call of a certificate), to split figure 2.
4. Throughput under concurrency: several channels, each its own TCP + TLS connection and its
   own node (its own certificate on the mTLS link, its own key on the EC-key listener, its own
   session on the TLS-only link), each with several Heartbeat calls in flight from one
   grpc.aio event loop, in rounds alternating between the links: calls per second, latency
   under that load, and the link's CPU time per call. The ratio mTLS / TLS-only of calls per
   second is what the authenticator costs a busy link.

It only prints figures; nothing here asserts on timings. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cryptography
import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.authenticator import CallCredentials
from flwrmtls.auth.eckey import Audiences, EcKeyAuthenticator
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.revocation import RevocationStore
from flwrmtls.auth.signing import CallSigner, body_digest, key_signature_from_metadata
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.node.audience import LinkAudience
from flwrmtls.node.signer import SigningInterceptor
from flwrmtls.pki import RevocationReason
from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.testing.processes import LinkProcess
from flwrmtls.wire.credentials import (
    TlsIdentity,
    channel_credentials,
    load_ca_bundle,
    load_tls_identity,
)
from flwrmtls.wire.errors import ConnectionContext

DEFAULT_HANDSHAKES = 200
DEFAULT_CALLS = 3000
DEFAULT_THREADS = 4
DEFAULT_CHANNELS = 8
DEFAULT_DEPTH = 8
HEARTBEAT_ROUNDS = 30
THROUGHPUT_ROUNDS = 12
THROUGHPUT_NODE_PREFIX = "tp-node-"
HANDSHAKE_ROUNDS = 4
_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class LinkTarget:
    """A running link and how a client reaches it."""

    name: str
    port: int
    pid: int
    root_pem: bytes
    root_path: Path
    identity: TlsIdentity | None
    """The client certificate to present; None on the TLS-only link."""
    signer: CallSigner | None = None
    """The EC key that signs each call (the EC-key node); None otherwise."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def audience(self) -> LinkAudience:
        """The link's server key, learned as a node learns it (for EC-key signatures)."""
        return LinkAudience(self.address, self.root_pem, server_name="localhost")

    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.root_pem, self.identity)

    def client(self, credentials: grpc.ChannelCredentials) -> tuple[FleetClient, grpc.Channel]:
        """A new channel with its own subchannel: a new TCP + TLS connection on first call."""
        channel = grpc.secure_channel(
            self.address,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", "localhost"),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        ctx = ConnectionContext(
            self.address,
            tls=True,
            has_client_certificate=self.identity is not None,
            root_certificates=str(self.root_path),
        )
        if self.signer is not None:
            interceptor = SigningInterceptor(self.signer, self.audience().current)
            signed = grpc.intercept_channel(channel, interceptor)
            return FleetClient(signed, ctx), channel
        return FleetClient(channel, ctx), channel


@dataclass(frozen=True)
class LatencySummary:
    count: int
    seconds: float
    per_second: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class HandshakeRow:
    link: str
    threads: int
    summary: LatencySummary


@dataclass(frozen=True)
class HeartbeatRow:
    link: str
    summary: LatencySummary
    link_cpu_us_per_call: float | None
    """CPU time the link process spent per measured call (all its threads); None off Linux."""


def percentile(sorted_ns: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in milliseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(1, round(fraction * len(sorted_ns) + 0.4999))
    return sorted_ns[min(rank, len(sorted_ns)) - 1] / _NS_PER_MS


def summarize(samples_ns: Sequence[int], seconds: float) -> LatencySummary:
    ordered = sorted(samples_ns)
    return LatencySummary(
        count=len(ordered),
        seconds=seconds,
        per_second=len(ordered) / seconds if seconds > 0 else 0.0,
        mean_ms=statistics.fmean(ordered) / _NS_PER_MS if ordered else 0.0,
        p50_ms=percentile(ordered, 0.50),
        p99_ms=percentile(ordered, 0.99),
        max_ms=ordered[-1] / _NS_PER_MS if ordered else 0.0,
    )


# --- the links --------------------------------------------------------------------------------


def make_pki(directory: Path, throughput_nodes: int = 0) -> TestPki:
    """The test PKI, plus one revoked node so the link's CRL is not empty, plus
    ``throughput_nodes`` node certificates (``tp-node-K``) for the throughput figure."""
    pki = make_test_pki(directory)
    for index in range(1, throughput_nodes + 1):
        pki.ca.issue_node(f"{THROUGHPUT_NODE_PREFIX}{index}", organization=f"Site {index}")
    pki.ca.issue_node("node-revoked", organization="Hospital C")
    revoked_chain, _ = pki.paths("node-revoked")
    pki.ca.revoke(certificate_file=revoked_chain, reason=RevocationReason.KEY_COMPROMISE)
    return pki


def link_args(pki: TestPki, database: Path, *, mtls: bool) -> list[str]:
    chain, key = pki.paths("server")
    args = [
        "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
        "--database", str(database), "--heartbeat-interval", "10",
        "--serverappio-api-address", "127.0.0.1:0",
        "--ssl-ca-certfile", str(pki.trust_bundle_path),
        "--ssl-certfile", str(chain), "--ssl-keyfile", str(key),
    ]  # fmt: skip
    if mtls:
        # The EC-key node reaches the same link on its second Fleet listener.
        args += ["--ssl-require-client-auth", "--ssl-crl-file", str(pki.crl_path),
                 "--key-fleet-api-address", "127.0.0.1:0"]  # fmt: skip
    else:
        args += ["--node-auth", "none"]  # the baseline: server TLS, no authenticator
    return args


def start_links(pki: TestPki, work: Path) -> dict[str, LinkProcess]:
    """Start both links at once (their imports overlap), then wait for each to listen."""
    links = {
        name: LinkProcess(
            link_args(pki, work / f"{name}.db", mtls=name == "mtls"),
            work / f"{name}.log",
            {"FLWRMTLS_HOME": str(work / "home")},
        )
        for name in ("mtls", "tls-only")
    }
    try:
        with ThreadPoolExecutor(max_workers=len(links), thread_name_prefix="start") as pool:
            list(pool.map(lambda link: link.start_and_wait(timeout=60.0), links.values()))
    except BaseException:
        stop_links(links)
        raise
    return links


def stop_links(links: dict[str, LinkProcess]) -> None:
    for link in links.values():
        if link.process is not None:
            link.stop()


# --- the measurements -------------------------------------------------------------------------


def one_handshake(target: LinkTarget, credentials: grpc.ChannelCredentials) -> int:
    """New channel, ActivateNode, close; the time it took in nanoseconds."""
    start = time.perf_counter_ns()
    client, channel = target.client(credentials)
    try:
        client.activate()
    finally:
        channel.close()
    return time.perf_counter_ns() - start


def handshake_round(
    target: LinkTarget, credentials: grpc.ChannelCredentials, count: int, threads: int
) -> tuple[list[int], int]:
    """``count`` handshakes from ``threads`` threads: the latencies and the round's wall time."""
    start = time.perf_counter_ns()
    if threads <= 1:
        samples = [one_handshake(target, credentials) for _ in range(count)]
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="handshake") as pool:
            samples = list(pool.map(lambda _: one_handshake(target, credentials), range(count)))
    return samples, time.perf_counter_ns() - start


def bench_handshakes(
    targets: Sequence[LinkTarget], count: int, threads: int, rounds: int = HANDSHAKE_ROUNDS
) -> list[HandshakeRow]:
    """``count`` handshakes on each link, in rounds alternating between the links."""
    # As a node does: credentials loaded once, reused on every reconnect.
    credentials = {target.name: target.credentials() for target in targets}
    for target in targets:  # warm-up: the link's first verification of this certificate
        handshake_round(target, credentials[target.name], max(1, threads), threads)
    samples: dict[str, list[int]] = {target.name: [] for target in targets}
    wall_ns = dict.fromkeys(samples, 0)
    for index, round_count in enumerate(split(count, rounds)):
        order = targets if index % 2 == 0 else list(reversed(targets))
        for target in order:
            round_samples, round_ns = handshake_round(
                target, credentials[target.name], round_count, threads
            )
            samples[target.name] += round_samples
            wall_ns[target.name] += round_ns
    return [
        HandshakeRow(
            link=target.name,
            threads=threads,
            summary=summarize(samples[target.name], wall_ns[target.name] / 1e9),
        )
        for target in targets
    ]


def split(total: int, rounds: int) -> list[int]:
    """``total`` as at most ``rounds`` near-equal positive parts."""
    rounds = max(1, min(rounds, total))
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of every live thread of ``pid``, in nanoseconds (Linux schedstat), or None."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:  # the thread just exited
                continue
    except (OSError, ValueError, IndexError):
        return None
    return total


class HeartbeatLoop:
    """One long-lived channel and session on a link, timing each Heartbeat."""

    def __init__(self, target: LinkTarget) -> None:
        self.target = target
        self.client, self.channel = target.client(target.credentials())
        self.session: Session = self.client.activate()
        self.samples: list[int] = []
        self.busy_ns = 0
        self.link_cpu_ns: int | None = 0

    def run(self, calls: int, *, record: bool = True) -> None:
        client, session = self.client, self.session
        samples: list[int] = []
        clock = time.perf_counter_ns
        cpu_before = process_cpu_ns(self.target.pid)
        round_start = clock()
        for _ in range(calls):
            start = clock()
            client.heartbeat(session)
            samples.append(clock() - start)
        round_ns = clock() - round_start
        cpu_after = process_cpu_ns(self.target.pid)
        if record:
            self.busy_ns += round_ns
            self.samples.extend(samples)
            if self.link_cpu_ns is not None and cpu_before is not None and cpu_after is not None:
                self.link_cpu_ns += cpu_after - cpu_before
            else:
                self.link_cpu_ns = None

    def close(self) -> None:
        self.channel.close()


def bench_heartbeats(
    targets: Sequence[LinkTarget], calls: int, rounds: int = HEARTBEAT_ROUNDS
) -> list[HeartbeatRow]:
    loops = [HeartbeatLoop(target) for target in targets]
    try:
        warm_up = min(300, max(10, calls // 10))
        for loop in loops:
            loop.run(warm_up, record=False)
        for index, round_calls in enumerate(split(calls, rounds)):
            # A B, B A, A B, ...: neither link always goes first after the other's round.
            order = loops if index % 2 == 0 else list(reversed(loops))
            for loop in order:
                loop.run(round_calls)
    finally:
        for loop in loops:
            loop.close()
    return [
        HeartbeatRow(
            link=loop.target.name,
            summary=summarize(loop.samples, loop.busy_ns / 1e9),
            link_cpu_us_per_call=(
                loop.link_cpu_ns / len(loop.samples) / 1000
                if loop.link_cpu_ns is not None and loop.samples
                else None
            ),
        )
        for loop in loops
    ]


@dataclass(frozen=True)
class ThroughputRow:
    link: str
    channels: int
    """Channels, each its own TCP + TLS connection and its own node."""
    depth: int
    """Calls in flight on each channel."""
    summary: LatencySummary
    """Per-call latency under load; ``per_second`` is calls completed per second."""
    link_cpu_us_per_call: float | None


_HEARTBEAT_METHOD = "/flwrmtls.proto.Fleet/Heartbeat"
_ACTIVATE_METHOD = "/flwrmtls.proto.Fleet/ActivateNode"


class AsyncNode:
    """One channel (its own connection) and one node session on a link, from grpc.aio."""

    def __init__(
        self, target: LinkTarget, identity: TlsIdentity | None, signer: CallSigner | None
    ) -> None:
        self.signer = signer
        self.audience = target.audience().current() if signer is not None else b""
        self.channel = grpc.aio.secure_channel(
            target.address,
            channel_credentials(target.root_pem, identity),
            options=[
                ("grpc.ssl_target_name_override", "localhost"),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)
        self.session_id = ""

    def _metadata(self, method: str, request: Any) -> tuple[tuple[str, str], ...] | None:
        """As the node's SigningInterceptor does: one signature per call (EC-key only)."""
        if self.signer is None:
            return None
        digest = body_digest(request.SerializeToString())
        return self.signer.metadata(method, digest, datetime.now(UTC), self.audience)

    async def activate(self) -> None:
        request = fleet_pb2.ActivateNodeRequest(node_version="bench")
        response = await self.stub.ActivateNode(
            request, metadata=self._metadata(_ACTIVATE_METHOD, request), timeout=30
        )
        self.session_id = response.session_id

    async def heartbeat(self) -> None:
        request = fleet_pb2.HeartbeatRequest(session_id=self.session_id)
        await self.stub.Heartbeat(
            request, metadata=self._metadata(_HEARTBEAT_METHOD, request), timeout=30
        )


async def _throughput_round(nodes: Sequence[AsyncNode], calls: int, depth: int) -> list[int]:
    """``calls`` heartbeats spread over every node's ``depth`` workers; each call's latency."""
    remaining = calls
    samples: list[int] = []
    clock = time.perf_counter_ns

    async def worker(node: AsyncNode) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = clock()
            await node.heartbeat()
            samples.append(clock() - start)

    await asyncio.gather(*(worker(node) for node in nodes for _ in range(depth)))
    return samples


async def _bench_throughput(
    groups: dict[str, tuple[LinkTarget, list[AsyncNode]]],
    calls: int,
    depth: int,
    rounds: int,
) -> list[ThroughputRow]:
    try:
        await asyncio.gather(*(n.activate() for _, nodes in groups.values() for n in nodes))
        names = list(groups)
        for name in names:  # warm-up: connections, caches, the link's code paths
            await _throughput_round(groups[name][1], max(len(groups[name][1]) * depth, 200), depth)
        samples: dict[str, list[int]] = {name: [] for name in names}
        wall_ns = dict.fromkeys(names, 0)
        cpu_ns: dict[str, int | None] = dict.fromkeys(names, 0)
        for index, round_calls in enumerate(split(calls, rounds)):
            for name in names if index % 2 == 0 else list(reversed(names)):
                target, nodes = groups[name]
                cpu_before = process_cpu_ns(target.pid)
                start = time.perf_counter_ns()
                samples[name] += await _throughput_round(nodes, round_calls, depth)
                wall_ns[name] += time.perf_counter_ns() - start
                cpu_after = process_cpu_ns(target.pid)
                used = cpu_ns[name]
                cpu_ns[name] = (
                    None
                    if used is None or cpu_before is None or cpu_after is None
                    else used + cpu_after - cpu_before
                )
    finally:
        await asyncio.gather(
            *(n.channel.close(None) for _, nodes in groups.values() for n in nodes)
        )
    rows = []
    for name in names:
        nodes = groups[name][1]
        used = cpu_ns[name]
        count = len(samples[name])
        rows.append(
            ThroughputRow(
                link=name,
                channels=len(nodes),
                depth=depth,
                summary=summarize(samples[name], wall_ns[name] / 1e9),
                link_cpu_us_per_call=None if used is None or not count else used / count / 1000,
            )
        )
    return rows


def bench_throughput(
    targets: Sequence[LinkTarget],
    pki: TestPki,
    *,
    channels: int,
    depth: int,
    calls: int,
    rounds: int = THROUGHPUT_ROUNDS,
) -> list[ThroughputRow]:
    """Heartbeats from ``channels`` nodes with ``depth`` calls in flight each, per link.

    The certificate link's nodes present ``tp-node-1`` .. ``tp-node-<channels>`` (issued by
    :func:`make_pki`); EC-key nodes each sign with a key of their own; TLS-only nodes present
    nothing, and each ActivateNode makes a node of its own.
    """

    async def main() -> list[ThroughputRow]:
        groups: dict[str, tuple[LinkTarget, list[AsyncNode]]] = {}
        for target in targets:
            nodes = []
            for index in range(1, channels + 1):
                identity = None
                signer = None
                if target.identity is not None:
                    chain, key = pki.paths(f"{THROUGHPUT_NODE_PREFIX}{index}")
                    identity = load_tls_identity(chain, key, cert_flag="cert", key_flag="key")
                if target.signer is not None:
                    signer = CallSigner(ec.generate_private_key(ec.SECP384R1()))
                nodes.append(AsyncNode(target, identity, signer))
            groups[target.name] = (target, nodes)
        return await _bench_throughput(groups, calls, depth, rounds)

    return asyncio.run(main())


@dataclass(frozen=True)
class AuthenticatorRow:
    case: str
    calls: int
    us_per_call: float


def bench_authenticator(pki: TestPki, node: str, calls: int) -> list[AuthenticatorRow]:
    """``MtlsAuthenticator.authenticate`` alone, in this process, as the link calls it.

    The credentials are new bytes objects on every call, as grpc's auth context hands them
    over, so the cache key is hashed each time.
    """
    _, anchors = load_ca_bundle(pki.trust_bundle_path, "trust bundle")
    chain = x509.load_pem_x509_certificates(pki.paths(node)[0].read_bytes())
    leaf_pem = chain[0].public_bytes(serialization.Encoding.PEM)
    rest_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:])

    def credentials() -> CallCredentials:
        return CallCredentials(
            "/flwrmtls.proto.Fleet/Heartbeat",
            "ipv4:127.0.0.1:1",
            bytes(bytearray(leaf_pem)),
            bytes(bytearray(rest_pem)),
        )

    rows = []
    cases = (
        ("cached, validity + CRL check", RevocationStore(pki.crl_path)),
        ("cached, validity only (no --ssl-crl-file)", None),
    )
    for case, revocations in cases:
        authenticator = MtlsAuthenticator(anchors, revocations=revocations)
        authenticator.authenticate(credentials(), datetime.now(UTC))
        total = 0
        for _ in range(calls):
            call, now = credentials(), datetime.now(UTC)
            start = time.perf_counter_ns()
            authenticator.authenticate(call, now)
            total += time.perf_counter_ns() - start
        rows.append(AuthenticatorRow(case, calls, total / calls / 1000))
    first_calls = max(1, min(200, calls // 20))
    revocations = RevocationStore(pki.crl_path)
    total = 0
    for _ in range(first_calls):
        authenticator = MtlsAuthenticator(anchors, revocations=revocations)
        call, now = credentials(), datetime.now(UTC)
        start = time.perf_counter_ns()
        authenticator.authenticate(call, now)
        total += time.perf_counter_ns() - start
    rows.append(
        AuthenticatorRow(
            "first call of a certificate (chain verification)",
            first_calls,
            total / first_calls / 1000,
        )
    )
    rows.append(bench_key_authenticator(max(1, calls // 5)))
    return rows


def bench_key_authenticator(calls: int) -> AuthenticatorRow:
    """``EcKeyAuthenticator.authenticate`` alone: each call freshly signed (not timed)."""
    method = "/flwrmtls.proto.Fleet/Heartbeat"
    signer = CallSigner(ec.generate_private_key(ec.SECP384R1()))
    audience = bytes(32)
    authenticator = EcKeyAuthenticator(audiences=Audiences(audience))
    digest = body_digest(b"a heartbeat request")
    total = 0
    for _ in range(calls):
        now = datetime.now(UTC)
        metadata = signer.metadata(method, digest, now, audience)
        signature = key_signature_from_metadata(metadata, digest)
        call = CallCredentials(method, "ipv4:127.0.0.1:1", None, None, key_signature=signature)
        start = time.perf_counter_ns()
        authenticator.authenticate(call, now)
        total += time.perf_counter_ns() - start
    return AuthenticatorRow(
        "EC-key P-384 (cached key; ECDSA verify + nonce)", calls, total / calls / 1000
    )


# --- output -----------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "cryptography": cryptography.__version__,
        "openssl": _openssl_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model,
    }


def _openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first, *rest = cells
    return "  ".join(
        [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
    )


def _label(link: str) -> str:
    return {
        "mtls": "mTLS (client cert + CRL)",
        "ec-key": "EC-key P-384 (same link)",
        "tls-only": "TLS-only (no client cert)",
    }[link]


def render_table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    config = result["config"]
    lines = [
        "flwrmtls auth benchmark",
        f"  Python {machine['python']} ({machine['implementation']}), grpcio {machine['grpcio']}, "
        f"cryptography {machine['cryptography']} ({machine['openssl']})",
        f"  {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable)"
        + (f", {machine['cpu_model']}" if machine["cpu_model"] else "")
        + f"; {machine['platform']}",
        f"  links: subprocesses on 127.0.0.1; client in this process; "
        f"per link: {config['handshakes']} handshakes per row ({config['handshake_rounds']} "
        f"rounds), {config['calls']} heartbeats ({config['heartbeat_rounds']} rounds); "
        "rounds alternate between the links",
        "",
        "1. Handshakes: new channel (TCP + TLS) + ActivateNode + close",
    ]
    widths = [30, 8, 12, 10, 10, 10]
    lines.append(_row(["link", "threads", "handshakes/s", "p50 ms", "p99 ms", "max ms"], widths))
    for row in result["handshakes"]:
        s = row["summary"]
        lines.append(
            _row(
                [
                    _label(row["link"]),
                    str(row["threads"]),
                    f"{s['per_second']:.1f}",
                    f"{s['p50_ms']:.2f}",
                    f"{s['p99_ms']:.2f}",
                    f"{s['max_ms']:.2f}",
                ],
                widths,
            )
        )
    lines += ["", "2. Heartbeat on one long-lived channel (per call)"]
    widths = [30, 8, 10, 10, 10, 10, 14]
    lines.append(_row(["link", "calls", "mean", "p50", "p99", "calls/s", "link CPU/call"], widths))
    for row in result["heartbeat"]:
        s = row["summary"]
        cpu = row["link_cpu_us_per_call"]
        lines.append(
            _row(
                [
                    _label(row["link"]),
                    str(s["count"]),
                    f"{s['mean_ms'] * 1000:.0f} us",
                    f"{s['p50_ms'] * 1000:.0f} us",
                    f"{s['p99_ms'] * 1000:.0f} us",
                    f"{s['per_second']:.0f}",
                    "n/a" if cpu is None else f"{cpu:.0f} us",
                ],
                widths,
            )
        )
    ratio = result["heartbeat_ratio"]
    lines.append(
        f"  mTLS / TLS-only: mean x{ratio['mean']:.3f}, p50 x{ratio['p50']:.3f}, "
        f"p99 x{ratio['p99']:.3f}; difference per call: mean {ratio['mean_difference_us']:+.0f} "
        f"us, p50 {ratio['p50_difference_us']:+.0f} us"
        + (
            ""
            if ratio["link_cpu_difference_us"] is None
            else f", link CPU {ratio['link_cpu_difference_us']:+.1f} us"
        )
    )
    lines.append(
        f"  EC-key / mTLS (same link): p50 x{ratio['ec_key_over_mtls_p50']:.3f}, "
        f"{ratio['ec_key_p50_difference_us']:+.0f} us per call (the node signs, the link verifies)"
    )
    lines += ["", "3. The authenticators alone (this process, hot loop)"]
    widths = [50, 8, 12]
    lines.append(_row(["case", "calls", "per call"], widths))
    for row in result["authenticator"]:
        lines.append(_row([row["case"], str(row["calls"]), f"{row['us_per_call']:.1f} us"], widths))
    lines += ["", render_throughput(result["throughput"], result["throughput_ratio"], 4)]
    lines += ["", f"total time {result['elapsed_seconds']:.1f} s"]
    return "\n".join(lines)


def render_throughput(rows: Sequence[dict[str, Any]], ratio: dict[str, Any], number: int) -> str:
    first = rows[0]
    lines = [
        f"{number}. Heartbeat throughput: {first['channels']} channels (own connection, own "
        f"node) x {first['depth']} calls in flight, one grpc.aio loop in this process"
    ]
    widths = [30, 8, 10, 10, 10, 14]
    lines.append(_row(["link", "calls", "calls/s", "p50", "p99", "link CPU/call"], widths))
    for row in rows:
        s = row["summary"]
        cpu = row["link_cpu_us_per_call"]
        lines.append(
            _row(
                [
                    _label(row["link"]),
                    str(s["count"]),
                    f"{s['per_second']:.0f}",
                    f"{s['p50_ms']:.2f} ms",
                    f"{s['p99_ms']:.2f} ms",
                    "n/a" if cpu is None else f"{cpu:.0f} us",
                ],
                widths,
            )
        )
    cpu_text = (
        "" if ratio["mtls_link_cpu"] is None else f", link CPU/call x{ratio['mtls_link_cpu']:.3f}"
    )
    lines.append(
        f"  mTLS / TLS-only: calls/s x{ratio['mtls_calls_per_second']:.3f}, "
        f"p50 x{ratio['mtls_p50']:.3f}, p99 x{ratio['mtls_p99']:.3f}{cpu_text}"
    )
    lines.append(
        f"  EC-key / TLS-only: calls/s x{ratio['ec_key_calls_per_second']:.3f}, "
        f"p50 x{ratio['ec_key_p50']:.3f}, p99 x{ratio['ec_key_p99']:.3f}"
    )
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument(
        "--handshakes",
        type=positive,
        default=DEFAULT_HANDSHAKES,
        help=f"handshakes per run (default {DEFAULT_HANDSHAKES})",
    )
    p.add_argument(
        "--calls",
        type=positive,
        default=DEFAULT_CALLS,
        help=f"measured heartbeats per link (default {DEFAULT_CALLS})",
    )
    p.add_argument(
        "--threads",
        type=positive,
        default=DEFAULT_THREADS,
        help=f"threads for the concurrent handshake run (default {DEFAULT_THREADS})",
    )
    p.add_argument(
        "--channels",
        type=positive,
        default=DEFAULT_CHANNELS,
        help=f"throughput: channels (connections, nodes) per link (default {DEFAULT_CHANNELS})",
    )
    p.add_argument(
        "--depth",
        type=positive,
        default=DEFAULT_DEPTH,
        help=f"throughput: calls in flight per channel (default {DEFAULT_DEPTH})",
    )
    p.add_argument(
        "--throughput-calls",
        type=positive,
        help="throughput: measured heartbeats per link (default: twice --calls)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def link_targets(
    pki: TestPki, links: dict[str, LinkProcess], identity: TlsIdentity
) -> tuple[LinkTarget, LinkTarget, LinkTarget]:
    """The mTLS link (presenting ``identity``), its EC-key listener, and the TLS-only link."""
    root_path = pki.trust_bundle_path
    targets = {
        name: LinkTarget(
            name=name,
            port=link.fleet_port,
            pid=link.process.pid if link.process is not None else 0,
            root_pem=root_path.read_bytes(),
            root_path=root_path,
            identity=identity if name == "mtls" else None,
        )
        for name, link in links.items()
    }
    mtls = targets["mtls"]
    key_port = int(links["mtls"].wait_for(r"EC-key nodes also on port (\d+)").group(1))
    ec_key = LinkTarget(
        name="ec-key", port=key_port, pid=mtls.pid, root_pem=mtls.root_pem,
        root_path=root_path, identity=None,
        signer=CallSigner(ec.generate_private_key(ec.SECP384R1())),
    )  # fmt: skip
    return mtls, ec_key, targets["tls-only"]


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pki = make_pki(work / "pki", throughput_nodes=args.channels)
    node_chain, node_key = pki.paths("node-1")
    identity = load_tls_identity(node_chain, node_key, cert_flag="node-1", key_flag="node-1")
    links = start_links(pki, work)
    try:
        mtls, ec_key, tls_only = link_targets(pki, links, identity)
        # Heartbeats first, while each link's table holds only the benchmark's own node.
        heartbeat = bench_heartbeats([mtls, ec_key, tls_only], args.calls)
        throughput = bench_throughput(
            [mtls, ec_key, tls_only], pki, channels=args.channels, depth=args.depth,
            calls=args.throughput_calls or 2 * args.calls,
        )  # fmt: skip
        handshakes = [
            row
            for threads in (1, args.threads)
            for row in bench_handshakes([mtls, tls_only], args.handshakes, threads)
        ]
    except (FlwrmtlsError, grpc.RpcError) as error:
        tails = "\n".join(f"--- {name} log:\n{link.log[-2000:]}" for name, link in links.items())
        raise SystemExit(f"bench_auth: {error}\n{tails}") from None
    finally:
        stop_links(links)
    authenticator = bench_authenticator(pki, "node-1", args.calls * 5)
    by_link = {row.link: row for row in heartbeat}
    m, t = by_link["mtls"].summary, by_link["tls-only"].summary
    k = by_link["ec-key"].summary
    m_cpu, t_cpu = by_link["mtls"].link_cpu_us_per_call, by_link["tls-only"].link_cpu_us_per_call
    return {
        "handshakes": [asdict(row) for row in handshakes],
        "heartbeat": [asdict(row) for row in heartbeat],
        "throughput": [asdict(row) for row in throughput],
        "throughput_ratio": throughput_ratio(throughput),
        "authenticator": [asdict(row) for row in authenticator],
        "heartbeat_ratio": {
            "mean": m.mean_ms / t.mean_ms,
            "p50": m.p50_ms / t.p50_ms,
            "p99": m.p99_ms / t.p99_ms,
            "mean_difference_us": (m.mean_ms - t.mean_ms) * 1000,
            "p50_difference_us": (m.p50_ms - t.p50_ms) * 1000,
            "link_cpu": None if m_cpu is None or t_cpu is None else m_cpu / t_cpu,
            "link_cpu_difference_us": None if m_cpu is None or t_cpu is None else m_cpu - t_cpu,
            "ec_key_over_mtls_p50": k.p50_ms / m.p50_ms,
            "ec_key_p50_difference_us": (k.p50_ms - m.p50_ms) * 1000,
        },
    }


def throughput_ratio(rows: Sequence[ThroughputRow]) -> dict[str, float | None]:
    """mTLS and EC-key against TLS-only: calls per second, p50 and p99 under load, link CPU."""
    by_link = {row.link: row for row in rows}
    base = by_link["tls-only"]
    ratios: dict[str, float | None] = {}
    for name, key in (("mtls", "mtls"), ("ec-key", "ec_key")):
        row = by_link[name]
        ratios[f"{key}_calls_per_second"] = row.summary.per_second / base.summary.per_second
        ratios[f"{key}_p50"] = row.summary.p50_ms / base.summary.p50_ms
        ratios[f"{key}_p99"] = row.summary.p99_ms / base.summary.p99_ms
        cpu, base_cpu = row.link_cpu_us_per_call, base.link_cpu_us_per_call
        ratios[f"{key}_link_cpu"] = None if cpu is None or base_cpu is None else cpu / base_cpu
    return ratios


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flwrmtls-bench-") as tmp:
        figures = run(args, Path(tmp))
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_facts(),
        "config": {
            "handshakes": args.handshakes,
            "calls": args.calls,
            "threads": args.threads,
            "channels": args.channels,
            "depth": args.depth,
            "throughput_calls": args.throughput_calls or 2 * args.calls,
            "throughput_rounds": len(
                split(args.throughput_calls or 2 * args.calls, THROUGHPUT_ROUNDS)
            ),
            "heartbeat_rounds": len(split(args.calls, HEARTBEAT_ROUNDS)),
            "handshake_rounds": len(split(args.handshakes, HANDSHAKE_ROUNDS)),
        },
        **figures,
        "elapsed_seconds": time.monotonic() - started,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render_table(result))


if __name__ == "__main__":
    main(sys.argv[1:])
