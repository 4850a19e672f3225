"""What the link shows its operators, each only where its address is configured: the gRPC
health listener (readiness: its server certificate loaded and in date, its database answers,
its listeners serve) and the Prometheus metrics endpoint (the state counted on the link's
loop at each scrape). Without them no port is opened. The counters the listeners and
servicers update are :class:`~flwrmtls.ops.metrics.LinkMetrics`, which the link makes and
hands here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cryptography import x509

from flwrmtls.clock import Clock
from flwrmtls.link.config import LinkConfig
from flwrmtls.objects.store import ObjectStore
from flwrmtls.ops.health import HealthListener
from flwrmtls.ops.metrics import LinkMetrics, LinkSnapshot, MetricsServer, counts
from flwrmtls.state.linkstate import LinkState

__all__ = ["LinkOperations"]


class LinkOperations:
    """The link's health listener and metrics endpoint (see the module's rules)."""

    def __init__(
        self,
        config: LinkConfig,
        clock: Clock,
        state: LinkState,
        store: ObjectStore,
        metrics: LinkMetrics | None,
        *,
        tls_leaf: Callable[[], x509.Certificate | None],
        serving: Callable[[], bool],
    ) -> None:
        self._config = config
        self._clock = clock
        self._state = state
        self._store = store
        self._metrics = metrics
        self._tls_leaf = tls_leaf
        self._serving = serving
        self.health: HealthListener | None = None
        self.metrics_server: MetricsServer | None = None

    async def start(self) -> None:
        """Open the health listener and the metrics endpoint the operator asked for."""
        config = self._config
        if config.health_address is not None:
            self.health = HealthListener(
                config.health_address,
                {"certificates": self._certificates_ready, "state": self._state_ready,
                 "serving": self._serving_ready},
            )  # fmt: skip
            await self.health.start()
        if self._metrics is not None and config.metrics_address is not None:
            self._metrics.watch_state(
                self._snapshot, asyncio.get_running_loop(),
                lambda: len(self._store.object_ids()), self._store.stored_bytes,
            )  # fmt: skip
            self.metrics_server = MetricsServer(
                self._metrics.registry, config.metrics_address, "--metrics-address"
            )

    async def stop(self) -> None:
        """Not ready first (so no new work is sent to the link), then no metrics."""
        if self.health is not None:
            await self.health.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    @property
    def health_port(self) -> int:
        return self.health.port if self.health is not None else 0

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port if self.metrics_server is not None else 0

    def _certificates_ready(self) -> str | None:
        leaf = self._tls_leaf()
        if leaf is None:
            return None if self._config.insecure else "no server certificate loaded"
        now = self._clock.now()
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            return (
                f"the server certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} "
                f"to {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
            )
        return None

    def _state_ready(self) -> str | None:
        self._state.runs.active()  # raises when the database cannot be read
        return None

    def _serving_ready(self) -> str | None:
        return None if self._serving() else "the listeners are not serving"

    def _snapshot(self) -> LinkSnapshot:
        now = self._clock.now().timestamp()
        leaf = self._tls_leaf()
        return LinkSnapshot(
            nodes_by_status=counts(node.status for node in self._state.list_nodes(now=now)),
            runs_by_status=counts(run.status.value for run in self._state.runs.all()),
            server_certificate_not_after=leaf.not_valid_after_utc if leaf is not None else None,
        )
