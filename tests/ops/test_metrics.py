"""Prometheus metrics of a real link and real nodes, scraped during and after a real run.

Each metric is checked to move as it should: counters from zero before the event to more
after it, gauges to what the link's state or the node's certificate says. Off by default is
in test_health.py (no port without the flag).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from flwrmtls.testing.processes import NodeProcess
from tests.e2e.deployment import Deployment, free_port
from tests.e2e.probe_app import write_probe_app

from .probes import scrape, value, wait_until


def _node(deployment: Deployment, name: str, fleet_port: int) -> tuple[NodeProcess, int]:
    port = free_port()
    node = deployment.node(name, fleet_port, "--metrics-address", f"127.0.0.1:{port}")
    return node, port


def test_metrics_follow_a_run(deployment: Deployment, tmp_path: Path) -> None:
    metrics = free_port()
    link = deployment.start_link(
        [*deployment.link_args(), "--metrics-address", f"127.0.0.1:{metrics}"]
    )
    link.wait_for(f"metrics on http://127.0.0.1:{metrics}/metrics")
    before = scrape(metrics)
    assert value(before, "flwrmtls_nodes", status="online") == 0
    assert value(before, "flwrmtls_objects_stored") == 0
    assert value(before, "flwrmtls_message_round_trip_seconds_count") == 0

    node_1, node_metrics = _node(deployment, "node-1", link.fleet_port)
    node_2, _ = _node(deployment, "node-2", link.fleet_port)
    node_1.wait_active()
    node_2.wait_active()
    deployment.profile(link.control_port)
    wait_until(lambda: value(scrape(metrics), "flwrmtls_nodes", status="online") == 2,
               "two nodes online")  # fmt: skip
    online = scrape(metrics)
    assert value(online, "flwrmtls_nodes", status="offline") == 0
    # Each node's calls carried its certificate's time left: about a year, in the top buckets.
    assert value(online, "flwrmtls_client_certificate_expiration_seconds_count", kind="node") > 0
    assert value(online, "flwrmtls_client_certificate_expiration_seconds_bucket", kind="node",
                 le="604800.0") == 0  # fmt: skip
    assert value(online, "flwrmtls_call_duration_seconds_count", api="Fleet",
                 method="ActivateNode", code="OK") == 2  # fmt: skip
    server_leaf = x509.load_pem_x509_certificate(deployment.pki.paths("server")[0].read_bytes())
    assert value(online, "flwrmtls_server_certificate_expiry_timestamp_seconds") == (
        server_leaf.not_valid_after_utc.timestamp()
    )

    # A refusal: a node's certificate on the Control API.
    deployment.profile(link.control_port, cert="node-1", name="wrong")
    refused = deployment.cli("ls", "wrong")
    assert refused.returncode == 1
    after_refusal = scrape(metrics)
    assert value(after_refusal, "flwrmtls_refusals_total", api="Control",
                 reason="not-permitted") == 1  # fmt: skip
    assert value(after_refusal, "flwrmtls_call_duration_seconds_count", api="Control",
                 method="ListRuns", code="PERMISSION_DENIED") == 1  # fmt: skip
    # A refusal of the error catalogue (a run that does not exist), counted by its code.
    assert deployment.cli("log", "99", "test").returncode == 1
    assert value(scrape(metrics), "flwrmtls_refusals_total", api="Control",
                 reason="no-run") == 1  # fmt: skip

    # A run of two rounds on two nodes: four replies, each with its round trip.
    app = write_probe_app(tmp_path / "app")
    result = deployment.cli("run", str(app), "--stream", "test", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: value(scrape(metrics), "flwrmtls_runs", status="completed") == 1,
               "the run counted as completed")  # fmt: skip
    after = scrape(metrics)
    assert value(after, "flwrmtls_message_round_trip_seconds_count") == 4
    assert value(after, "flwrmtls_message_round_trip_seconds_sum") > 0
    assert value(after, "flwrmtls_call_duration_seconds_count", api="Control",
                 method="StartRun", code="OK") == 1  # fmt: skip
    assert value(after, "flwrmtls_call_duration_seconds_count", api="ServerAppIo",
                 method="PushMessages", code="OK") >= 2  # fmt: skip
    # Bytes moved: the bundle came in on Control; arrays and bundle went out to the nodes.
    assert value(after, "flwrmtls_payload_bytes_total", api="Control", method="StartRun",
                 direction="received") > 0  # fmt: skip
    assert value(after, "flwrmtls_payload_bytes_total", api="Fleet", method="PullObject",
                 direction="sent") > 0  # fmt: skip
    assert value(after, "flwrmtls_payload_bytes_total", api="Fleet", method="PushMessages",
                 direction="received") > 0  # fmt: skip
    # A run's objects are deleted when it ends: stored objects back to none.
    assert value(after, "flwrmtls_objects_stored") == 0
    assert value(after, "flwrmtls_refusals_total", api="Fleet", reason="untrusted") == 0

    node = scrape(node_metrics)
    assert value(node, "flwrmtls_node_connected") == 1
    leaf = x509.load_pem_x509_certificate(deployment.pki.paths("node-1")[0].read_bytes())
    assert value(node, "flwrmtls_node_certificate_expiry_timestamp_seconds") == (
        leaf.not_valid_after_utc.timestamp()
    )
    assert value(node, "flwrmtls_node_call_duration_seconds_count", method="PushMessages",
                 code="OK") >= 2  # fmt: skip
    assert value(node, "flwrmtls_node_objects_stored") == 0  # the run's objects went with it

    link.stop()
    wait_until(lambda: value(scrape(node_metrics), "flwrmtls_node_connected") == 0,
               "the node counted as disconnected once its link is gone")  # fmt: skip


def test_objects_stored_while_a_run_holds_them(deployment: Deployment, tmp_path: Path) -> None:
    metrics = free_port()
    link = deployment.start_link(
        [*deployment.link_args(), "--metrics-address", f"127.0.0.1:{metrics}"]
    )
    node, node_metrics = _node(deployment, "node-1", link.fleet_port)
    node.wait_active()
    deployment.profile(link.control_port)
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli(
        "run", str(app), "test", "--run-config",
        "min-train=1 min-available=1 sleep-on=all sleep-seconds=120 array-mb=1",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    wait_until(lambda: value(scrape(metrics), "flwrmtls_object_stored_bytes") > 1 << 20,
               "the run's bundle and arrays stored on the link")  # fmt: skip
    assert value(scrape(metrics), "flwrmtls_objects_stored") >= 2
    assert value(scrape(metrics), "flwrmtls_runs", status="running") == 1
    wait_until(lambda: value(scrape(node_metrics), "flwrmtls_node_object_stored_bytes")
               > 1 << 20, "the arrays fetched into the node's state directory")  # fmt: skip
    assert deployment.cli("stop", "1", "test").returncode == 0
    wait_until(lambda: value(scrape(metrics), "flwrmtls_objects_stored") == 0,
               "the stopped run's objects deleted")  # fmt: skip
