"""What the authenticator costs a link: handshakes, heartbeat latency and throughput, per link.

Used by bench_auth.py (all four figures) and bench_limits.py (its ``auth`` section). Rules:
links run as subprocesses on 127.0.0.1 (ports from the OS), the client in this process;
rounds alternate between the links (A B, B A, ...) so machine noise hits each alike; the link's
own CPU per call comes from its threads' schedstat (finer than clock ticks).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.authenticator import CallCredentials
from flwrmtls.auth.callsigning import CallSigner, body_digest, key_signature_from_metadata
from flwrmtls.auth.eckey import Audiences, EcKeyAuthenticator
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.revocation import RevocationStore
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
from harness.procs import thread_cpu_ns as process_cpu_ns

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


def start_links(
    pki: TestPki, work: Path, env: Mapping[str, str] | None = None
) -> dict[str, LinkProcess]:
    """Start both links at once (their imports overlap), then wait for each to listen."""
    links = {
        name: LinkProcess(
            link_args(pki, work / f"{name}.db", mtls=name == "mtls"),
            work / f"{name}.log",
            {"FLWRMTLS_HOME": str(work / "home"), **(env or {})},
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
