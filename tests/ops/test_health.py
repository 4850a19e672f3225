"""gRPC health checking on the link and on nodes, probed as the kubelet's grpc probe does.

Readiness is "certificates loaded and within their dates, state open, serving"; each case
that makes one of them false has its control (the same process SERVING) in the same test.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flwrmtls.clock import SystemClock
from flwrmtls.ops.health import judge
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.link import mtls_config, running_link
from flwrmtls.testing.pki import TestPki
from tests.e2e.deployment import Deployment, free_port

from .probes import listening_ports, probe, wait_until


def _config(pki: TestPki, tmp_path: Path):  # type: ignore[no-untyped-def]
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    return replace(config, health_address="127.0.0.1:0")


def test_link_is_ready_until_its_server_certificate_lapses(pki: TestPki, tmp_path: Path) -> None:
    clock = FakeClock(SystemClock().now())
    with running_link(_config(pki, tmp_path), clock) as link:
        port = link.health_port
        assert port != 0
        assert probe(port) == "SERVING"
        assert probe(port, "readiness") == "SERVING"
        assert probe(port, "liveness") == "SERVING"
        assert probe(port, "flwrmtls.NoSuchService") == "NOT_FOUND"
        leaf = link.config.tls.leaf  # type: ignore[union-attr]
        clock.advance((leaf.not_valid_after_utc - clock.now()).total_seconds() + 1)
        assert probe(port) == "NOT_SERVING"
        assert probe(port, "readiness") == "NOT_SERVING"
        assert probe(port, "liveness") == "SERVING"  # alive: restarting it would not help


def test_link_is_not_ready_when_its_database_cannot_be_read(pki: TestPki, tmp_path: Path) -> None:
    with running_link(_config(pki, tmp_path)) as link:
        assert probe(link.health_port) == "SERVING"
        link.state.close()  # what a database that fails every read looks like to the link
        assert probe(link.health_port) == "NOT_SERVING"
        assert probe(link.health_port, "liveness") == "SERVING"


def test_link_health_turns_not_serving_before_it_stops(pki: TestPki, tmp_path: Path) -> None:
    seen: list[str] = []
    started = threading.Event()
    with running_link(_config(pki, tmp_path)) as link:
        channel = grpc.insecure_channel(f"127.0.0.1:{link.health_port}")
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=60
        )

        def watch() -> None:
            try:
                for answer in stream:
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
                    started.set()
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert started.wait(10)
    watcher.join(timeout=30)
    channel.close()
    assert seen[0] == "SERVING"
    assert seen[-1] == "NOT_SERVING"


def test_a_check_that_raises_is_a_failed_check() -> None:
    def broken() -> str | None:
        raise OSError("disk I/O error")

    verdict = judge({"state": broken, "serving": lambda: None})
    assert not verdict.ready
    assert verdict.problems == ("state: the check raised OSError: disk I/O error",)
    assert judge({"state": lambda: None}).ready


def test_node_is_ready_only_while_it_has_a_session(deployment: Deployment) -> None:
    fleet = free_port()
    health = free_port()
    node = deployment.node("node-1", fleet, "--health-api-address", f"127.0.0.1:{health}")
    node.wait_for("health \\(grpc.health.v1\\) on")
    # No link yet: alive, not ready (it has nothing to serve), and it says why in its log.
    assert probe(health, "liveness") == "SERVING"
    assert probe(health) == "NOT_SERVING"
    node.wait_for("node not ready: serving: no active session with the link")
    link = deployment.start_link(deployment.link_args(fleet=f"127.0.0.1:{fleet}"))
    node.wait_active(timeout=90)
    wait_until(lambda: probe(health) == "SERVING", "the node ready once active")
    assert probe(health, "readiness") == "SERVING"
    link.stop()
    wait_until(lambda: probe(health) == "NOT_SERVING", "the node not ready without its link")
    assert probe(health, "liveness") == "SERVING"


def test_health_and_metrics_listen_only_when_asked(deployment: Deployment) -> None:
    plain = deployment.start_link()
    assert plain.process is not None
    baseline = listening_ports(plain.process.pid)
    assert len(baseline) == 3  # Fleet, Control, ServerAppIo: nothing else by default
    assert {plain.fleet_port, plain.control_port} <= baseline
    plain.stop()
    health, metrics = free_port(), free_port()
    args = [*deployment.link_args(), "--health-api-address", f"127.0.0.1:{health}",
            "--metrics-address", f"127.0.0.1:{metrics}"]  # fmt: skip
    asked = deployment.start_link(args, name="link-2")
    assert asked.process is not None
    ports = listening_ports(asked.process.pid)
    assert {health, metrics} <= ports
    assert len(ports) == len(baseline) + 2
    assert probe(health) == "SERVING"


def test_a_health_address_in_use_is_one_line(deployment: Deployment) -> None:
    link = deployment.start_link()
    taken = f"127.0.0.1:{link.fleet_port}"
    node = deployment.node("node-1", link.fleet_port, "--health-api-address", taken)
    assert node.wait_exit(60) == 1
    assert f"cannot listen on {taken}" in node.log
    assert "--health-api-address" in node.log
    assert "Traceback" not in node.log


@pytest.mark.parametrize("flag", ["--health-api-address", "--metrics-address"])
def test_link_refuses_an_unusable_address_in_one_line(deployment: Deployment, flag: str) -> None:
    from flwrmtls.testing.processes import LinkProcess

    link = LinkProcess(
        [*deployment.link_args(), flag, "nonsense"], deployment.tmp / "bad.log", deployment.env
    )
    deployment.processes.append(link)
    link.start()
    assert link.wait_exit(60) == 1
    assert "flwrmtls-superlink: error:" in link.log
    assert "nonsense" in link.log
    assert "Traceback" not in link.log
