"""The state metrics' collectors: registered without reading anything, and collecting exactly
the families they declare.

The link registers its collector on its own event loop, and the collector reads the link's
state on that loop. Registration used to collect once (prometheus_client checks the names a
collector yields), so the loop waited on itself: every link started with ``--metrics-address``
stalled 5 s and logged that it could not read its state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flwrmtls.ops.metrics import LinkMetrics, LinkSnapshot, NodeMetrics, NodeSnapshot

NOT_AFTER = datetime(2027, 1, 1, tzinfo=UTC)


class _Reads:
    """Counts every read of the state a collector makes."""

    def __init__(self) -> None:
        self.count = 0

    def link(self) -> LinkSnapshot:
        self.count += 1
        return LinkSnapshot({"online": 2}, {"running": 1}, NOT_AFTER)

    def node(self) -> NodeSnapshot:
        self.count += 1
        return NodeSnapshot(connected=True, certificate_not_after=NOT_AFTER)

    def objects(self) -> int:
        self.count += 1
        return 3


@pytest.fixture
def running_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def _families(registry: object) -> set[str]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {family.name for family in text_string_to_metric_families(text)}


def test_the_link_registers_its_state_collector_on_its_loop_without_reading_it(
    running_loop: asyncio.AbstractEventLoop,
) -> None:
    reads = _Reads()
    metrics = LinkMetrics()

    async def register() -> None:  # where the link does it: on its own running loop
        metrics.watch_state(reads.link, asyncio.get_running_loop(), reads.objects, reads.objects)

    asyncio.run_coroutine_threadsafe(register(), running_loop).result(30)
    assert reads.count == 0  # nothing read until a scrape

    # A scrape (from the metrics server's thread) reads the state on the loop.
    families = _families(metrics.registry)
    assert reads.count == 3  # the snapshot, the object count, the stored bytes
    state = {"flwrmtls_nodes", "flwrmtls_runs", "flwrmtls_objects_stored",
             "flwrmtls_object_stored_bytes",
             "flwrmtls_server_certificate_expiry_timestamp_seconds"}  # fmt: skip
    assert state <= families


def test_a_collector_yields_exactly_the_families_it_declares() -> None:
    """The declared names are what the registry checks for clashes: a family collected
    under another name would slip past that check."""
    from flwrmtls.ops.metrics import _LinkCollector, _NodeCollector, _Objects

    reads = _Reads()
    objects = _Objects(reads.objects, reads.objects)
    for collector in (_LinkCollector(reads.link, objects), _NodeCollector(reads.node, objects)):
        collected = {family.name for family in collector.collect()}
        declared = {family.name for family in collector.describe()}
        assert collected == declared == set(collector.NAMES)


def test_the_node_registers_its_state_collector_without_reading_it() -> None:
    reads = _Reads()
    metrics = NodeMetrics()
    metrics.watch_state(reads.node, reads.objects, reads.objects)
    assert reads.count == 0
    assert "flwrmtls_node_connected" in _families(metrics.registry)
    assert reads.count == 3
