"""A node's call metrics never turn a call it can cancel into one it must wait out.

The node's long poll is a gRPC future, cancelled when the node stops. The metrics interceptor
used to wait for each call's status before handing the call back, so with ``--metrics-address``
a stopping node sat out its long poll (20 s). Real gRPC on loopback: a server whose answer the
test holds back, a channel with the node's interceptor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flwrmtls.clock import SystemClock
from flwrmtls.ops.callmetrics import NodeCallMetrics
from flwrmtls.ops.metrics import NodeMetrics

METHOD = "/flwrmtls.fleet.Fleet/PullMessages"
WAIT = 30.0
"""Seconds the held-back answer waits at most (far longer than any assertion here)."""


class _HeldBack(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Answers ``METHOD`` with its request once the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        if details.method != METHOD:
            return None

        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.entered.set()
            self.release.wait(WAIT)
            return request

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture
def held_back() -> Iterator[tuple[_HeldBack, int]]:
    handler = _HeldBack()
    server = grpc.server(ThreadPoolExecutor(2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield handler, port
    handler.release.set()
    server.stop(None)


def _calls(metrics: NodeMetrics) -> dict[str, float]:
    """``code -> count`` of the calls counted so far."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            if sample.name == "flwrmtls_node_call_duration_seconds_count":
                counts[sample.labels["code"]] = sample.value
    return counts


def _wait_counted(metrics: NodeMetrics, expected: dict[str, float]) -> None:
    """gRPC runs a future's done callbacks on its own thread once the status arrives."""
    deadline = time.monotonic() + WAIT
    while _calls(metrics) != expected:
        assert time.monotonic() < deadline, f"counted {_calls(metrics)}, not {expected}"
        time.sleep(0.01)


def _stub(port: int, metrics: NodeMetrics) -> tuple[grpc.Channel, Any]:
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{port}"), NodeCallMetrics(metrics, SystemClock())
    )
    return channel, channel.unary_unary(METHOD, None, None)


def test_a_call_in_progress_is_handed_back_and_can_be_cancelled(
    held_back: tuple[_HeldBack, int], request: pytest.FixtureRequest
) -> None:
    handler, port = held_back
    metrics = NodeMetrics()
    channel, pull = _stub(port, metrics)
    request.addfinalizer(channel.close)
    futures: list[Any] = []
    caller = threading.Thread(target=lambda: futures.append(pull.future(b"poll", timeout=WAIT)))
    caller.start()
    assert handler.entered.wait(WAIT), "the call never reached the server"
    caller.join(WAIT / 2)
    # The server still holds the answer back: the future was handed back before it.
    assert not caller.is_alive(), "the interceptor waited for the call's answer"
    assert not handler.release.is_set()
    (future,) = futures
    assert not future.done()
    assert _calls(metrics) == {}  # not counted before it finishes

    assert future.cancel()
    _wait_counted(metrics, {"CANCELLED": 1.0})


def test_a_call_that_is_answered_is_counted_with_its_code(
    held_back: tuple[_HeldBack, int], request: pytest.FixtureRequest
) -> None:
    handler, port = held_back
    handler.release.set()
    metrics = NodeMetrics()
    channel, pull = _stub(port, metrics)
    request.addfinalizer(channel.close)
    assert pull(b"poll", timeout=WAIT) == b"poll"  # the blocking way the node calls too
    assert _calls(metrics) == {"OK": 1.0}
    assert pull.future(b"again", timeout=WAIT).result() == b"again"
    _wait_counted(metrics, {"OK": 2.0})
    with pytest.raises(grpc.RpcError) as failed:  # a method the server lacks
        channel.unary_unary("/flwrmtls.fleet.Fleet/Nothing", None, None)(b"", timeout=WAIT)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert _calls(metrics) == {"OK": 2.0, "UNIMPLEMENTED": 1.0}
