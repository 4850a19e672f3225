"""Prometheus metrics of the link and of a node, served over HTTP when asked for.

Rules:

* Off by default: without ``--metrics-address`` nothing is created, no port is opened and
  the hooks are never installed (each is an ``if metrics is not None`` on its path, or an
  interceptor that is not there). On, the hot paths cost a counter or histogram update.
* Each process has a registry of its own (tests run several links in one process).
* What is counted on the way (refusals, certificate expiry, calls, bytes, round trips) is
  updated where it happens; what is a state (nodes by status, runs by status, objects
  stored) is read when Prometheus scrapes, from the state itself, so it is never stale and
  never drifts: the link's state is read on the link's event loop (the one thread that
  touches its database), with a bound on the wait.
* Labels hold only closed sets (API, method, status code, refusal reason, run and node
  status, certificate kind): never an identity, a node id or a run id. The endpoint is plain,
  unauthenticated HTTP, so it tells whoever reaches it counts and durations, not who.
* The table of metrics is :data:`LINK_METRICS` and :data:`NODE_METRICS` (name -> what it
  means); docs/deploy.md lists the same.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flwrmtls.errors import InputError
from flwrmtls.wire.listen import check_bindable

__all__ = [
    "CERTIFICATE_EXPIRY_BUCKETS",
    "LINK_METRICS",
    "NODE_METRICS",
    "LinkMetrics",
    "LinkSnapshot",
    "MetricsServer",
    "NodeMetrics",
    "NodeSnapshot",
]

log = logging.getLogger("flwrmtls.metrics")

LINK_METRICS: Mapping[str, str] = {
    "flwrmtls_nodes": "nodes the link knows, by status (online, offline, revoked, expired, "
    "unregistered, registered)",
    "flwrmtls_client_certificate_expiration_seconds": "seconds left on the client "
    "certificate of each authenticated call (histogram, by kind: node or cli), as "
    "kube-apiserver's apiserver_client_certificate_expiration_seconds",
    "flwrmtls_server_certificate_expiry_timestamp_seconds": "when the link's own server "
    "certificate expires (Unix time)",
    "flwrmtls_refusals_total": "calls refused, by API and reason: the credentials' (untrusted, "
    "expired, revoked, not-permitted, ...) and the error catalogue's codes (no-run, over-quota, "
    "session-superseded, ...)",
    "flwrmtls_runs": "runs, by status",
    "flwrmtls_call_duration_seconds": "time to answer a call, by API, method and status code",
    "flwrmtls_message_round_trip_seconds": "from a ServerApp's message stored to its node's "
    "reply stored: a node's part of a round, as the link sees it",
    "flwrmtls_objects_stored": "objects (array bytes, bundles) in the link's object directory",
    "flwrmtls_object_stored_bytes": "bytes of those objects",
    "flwrmtls_payload_bytes_total": "message bytes moved, by API, method and direction "
    "(received, sent)",
}

NODE_METRICS: Mapping[str, str] = {
    "flwrmtls_node_connected": "1 while the node has an active session with the link",
    "flwrmtls_node_certificate_expiry_timestamp_seconds": "when the node's client "
    "certificate in use expires (Unix time); rotation updates it",
    "flwrmtls_node_call_duration_seconds": "time the link took to answer the node's Fleet "
    "calls, by method and status code",
    "flwrmtls_node_objects_stored": "objects in the node's state directory",
    "flwrmtls_node_object_stored_bytes": "bytes of those objects",
}

CERTIFICATE_EXPIRY_BUCKETS = (
    0.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0, 172800.0, 345600.0, 604800.0,
    2592000.0, 7776000.0, 15552000.0, 31104000.0,
)  # fmt: skip
"""kube-apiserver's buckets for ``apiserver_client_certificate_expiration_seconds``, so the
standard alert (the 1st percentile under 7 days) reads the same."""

_CALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_SNAPSHOT_TIMEOUT = 5.0
"""Seconds a scrape waits for the link's event loop to read its state."""


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    """What the link's state says at a scrape."""

    nodes_by_status: Mapping[str, int]
    runs_by_status: Mapping[str, int]
    server_certificate_not_after: datetime | None


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    connected: bool
    certificate_not_after: datetime | None


class _Objects:
    """Objects stored in a directory, read at a scrape (the store is safe across threads)."""

    def __init__(self, count: Callable[[], int], size: Callable[[], int]) -> None:
        self.count = count
        self.size = size


def _described(table: Mapping[str, str], names: tuple[str, ...]) -> Iterator[Metric]:
    """The families a collector yields, without reading anything: what the registry checks
    names against when the collector is registered (without ``describe`` it would collect,
    and the link's collector reads the state on the event loop that is registering it)."""
    for name in names:
        yield GaugeMetricFamily(name, table[name])


class _LinkCollector(Collector):
    NAMES = (
        "flwrmtls_nodes", "flwrmtls_runs", "flwrmtls_server_certificate_expiry_timestamp_seconds",
        "flwrmtls_objects_stored", "flwrmtls_object_stored_bytes",
    )  # fmt: skip

    def __init__(self, snapshot: Callable[[], LinkSnapshot], objects: _Objects) -> None:
        self._snapshot = snapshot
        self._objects = objects

    def describe(self) -> Iterator[Metric]:
        return _described(LINK_METRICS, self.NAMES)

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self._snapshot()
        except Exception as error:  # a scrape must not break the link; it says so
            log.warning("metrics: could not read the link's state: %s", error)
            snap = None
        if snap is not None:
            nodes = GaugeMetricFamily(
                "flwrmtls_nodes", LINK_METRICS["flwrmtls_nodes"], labels=["status"]
            )
            for status in sorted({"online", "offline", *snap.nodes_by_status}):
                nodes.add_metric([status], snap.nodes_by_status.get(status, 0))
            yield nodes
            runs = GaugeMetricFamily(
                "flwrmtls_runs", LINK_METRICS["flwrmtls_runs"], labels=["status"]
            )
            for status, count in sorted(snap.runs_by_status.items()):
                runs.add_metric([status], count)
            yield runs
            if snap.server_certificate_not_after is not None:
                name = "flwrmtls_server_certificate_expiry_timestamp_seconds"
                yield GaugeMetricFamily(
                    name, LINK_METRICS[name], value=snap.server_certificate_not_after.timestamp()
                )
        yield from _object_metrics(self._objects, "flwrmtls_", LINK_METRICS)


def _object_metrics(objects: _Objects, prefix: str, table: Mapping[str, str]) -> Iterator[Metric]:
    count, stored = f"{prefix}objects_stored", f"{prefix}object_stored_bytes"
    yield GaugeMetricFamily(count, table[count], value=objects.count())
    yield GaugeMetricFamily(stored, table[stored], value=objects.size())


class LinkMetrics:
    """The link's metrics. Hooks: :meth:`refused`, :meth:`admitted`, :meth:`round_trip`,
    :meth:`call`, :meth:`payload`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._refusals = Counter(
            "flwrmtls_refusals", LINK_METRICS["flwrmtls_refusals_total"],
            ["api", "reason"], registry=r,
        )  # fmt: skip
        self._expiry = Histogram(
            "flwrmtls_client_certificate_expiration_seconds",
            LINK_METRICS["flwrmtls_client_certificate_expiration_seconds"],
            ["kind"], buckets=CERTIFICATE_EXPIRY_BUCKETS, registry=r,
        )  # fmt: skip
        self._calls = Histogram(
            "flwrmtls_call_duration_seconds", LINK_METRICS["flwrmtls_call_duration_seconds"],
            ["api", "method", "code"], buckets=_CALL_BUCKETS, registry=r,
        )  # fmt: skip
        self._round_trip = Histogram(
            "flwrmtls_message_round_trip_seconds",
            LINK_METRICS["flwrmtls_message_round_trip_seconds"],
            buckets=_ROUND_BUCKETS, registry=r,
        )  # fmt: skip
        self._payload = Counter(
            "flwrmtls_payload_bytes", LINK_METRICS["flwrmtls_payload_bytes_total"],
            ["api", "method", "direction"], registry=r,
        )  # fmt: skip

    def watch_state(
        self,
        snapshot: Callable[[], LinkSnapshot],
        loop: asyncio.AbstractEventLoop,
        object_count: Callable[[], int],
        object_bytes: Callable[[], int],
    ) -> None:
        """Read ``snapshot`` on ``loop`` at each scrape (the thread that owns the state)."""

        async def read() -> LinkSnapshot:
            return snapshot()

        def on_loop() -> LinkSnapshot:
            future = asyncio.run_coroutine_threadsafe(read(), loop)
            try:
                return future.result(_SNAPSHOT_TIMEOUT)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise TimeoutError(
                    f"the event loop did not answer in {_SNAPSHOT_TIMEOUT:.0f} s"
                ) from None

        self.registry.register(_LinkCollector(on_loop, _Objects(object_count, object_bytes)))

    # --- hooks ------------------------------------------------------------------------------

    def refused(self, api: str, reason: str) -> None:
        self._refusals.labels(api, reason).inc()

    def admitted(self, kind: str, seconds_left: float) -> None:
        self._expiry.labels(kind).observe(seconds_left)

    def round_trip(self, seconds: float) -> None:
        self._round_trip.observe(seconds)

    def call(self, api: str, method: str, code: str, seconds: float) -> None:
        self._calls.labels(api, method, code).observe(seconds)

    def payload(self, api: str, method: str, direction: str, size: int) -> None:
        self._payload.labels(api, method, direction).inc(size)


class _NodeCollector(Collector):
    NAMES = (
        "flwrmtls_node_connected", "flwrmtls_node_certificate_expiry_timestamp_seconds",
        "flwrmtls_node_objects_stored", "flwrmtls_node_object_stored_bytes",
    )  # fmt: skip

    def __init__(self, snapshot: Callable[[], NodeSnapshot], objects: _Objects) -> None:
        self._snapshot = snapshot
        self._objects = objects

    def describe(self) -> Iterator[Metric]:
        return _described(NODE_METRICS, self.NAMES)

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield GaugeMetricFamily(
            "flwrmtls_node_connected", NODE_METRICS["flwrmtls_node_connected"],
            value=1 if snap.connected else 0,
        )  # fmt: skip
        if snap.certificate_not_after is not None:
            name = "flwrmtls_node_certificate_expiry_timestamp_seconds"
            yield GaugeMetricFamily(
                name, NODE_METRICS[name], value=snap.certificate_not_after.timestamp()
            )
        yield from _object_metrics(self._objects, "flwrmtls_node_", NODE_METRICS)


class NodeMetrics:
    """A node's metrics. Hook: :meth:`call` (a Fleet call answered)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._calls = Histogram(
            "flwrmtls_node_call_duration_seconds",
            NODE_METRICS["flwrmtls_node_call_duration_seconds"],
            ["method", "code"], buckets=_CALL_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def watch_state(
        self,
        snapshot: Callable[[], NodeSnapshot],
        object_count: Callable[[], int],
        object_bytes: Callable[[], int],
    ) -> None:
        self.registry.register(_NodeCollector(snapshot, _Objects(object_count, object_bytes)))

    def call(self, method: str, code: str, seconds: float) -> None:
        self._calls.labels(method, code).observe(seconds)


def _split(address: str, flag: str) -> tuple[str, int]:
    host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not host or not 0 <= port <= 65535:
        raise InputError(
            f"{flag} {address!r} is not HOST:PORT (e.g. 0.0.0.0:9100, [::]:9100, 127.0.0.1:9100)"
        )
    return host.strip("[]"), port


class MetricsServer:
    """``GET /metrics`` over plain HTTP at ``address``, from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, address: str, flag: str) -> None:
        host, port = _split(address, flag)
        try:
            check_bindable(address)
        except OSError as error:
            raise InputError(f"{flag}: {error}") from None
        self._server: WSGIServer
        server, self._thread = start_http_server(port, addr=host, registry=registry)
        self._server = server
        self.port: int = server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def counts(values: Any) -> dict[str, int]:
    """How many of each value (a status) there are."""
    found: dict[str, int] = {}
    for value in values:
        found[str(value)] = found.get(str(value), 0) + 1
    return found
