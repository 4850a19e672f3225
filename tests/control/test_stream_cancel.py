"""A client that walks away from a followed log stream must not hurt the link.

Regression: the audit hook once read ``context.peer()`` after grpc.aio had finished the
abandoned call, which segfaulted the link (seen under load, ~1 run in 3). Here the client
cancels mid-stream on purpose, and the link must go on answering.
"""

from __future__ import annotations

import time

import grpc

from flwrmtls.link.server import Link
from flwrmtls.proto import control_pb2, control_pb2_grpc
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity


def operator_channel(link: Link, pki: TestPki) -> grpc.Channel:
    identity = load_tls_identity(*pki.paths("cli-operator"), cert_flag="c", key_flag="k")
    return grpc.secure_channel(
        f"127.0.0.1:{link.control_port}",
        channel_credentials(pki.trust_bundle_path.read_bytes(), identity),
    )


def test_an_abandoned_log_stream_is_audited_and_the_link_keeps_serving(
    link: Link, pki: TestPki
) -> None:
    runs = link.state.runs
    run_id = runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}",
        owner="role=operator,CN=cli-operator", now=1.0,
    )  # fmt: skip
    runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
    runs.add_log(run_id, "link", "first line", 3.0)
    for _ in range(20):
        with operator_channel(link, pki) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            stream = stub.StreamLogs(control_pb2.StreamLogsRequest(run_id=run_id, follow=True))
            assert next(iter(stream)).text == "first line"
            stream.cancel()  # type: ignore[no-untyped-call]  # walk away mid-stream
    time.sleep(0.5)
    with operator_channel(link, pki) as channel:  # control: the link still answers
        stub = control_pb2_grpc.ControlStub(channel)
        [run] = stub.ListRuns(control_pb2.ListRunsRequest(run_id=run_id)).runs
        assert run.status == "running"
    cancelled = [
        entry for entry in link.state.audit.entries(limit=100)
        if entry.record.method.endswith("StreamLogs")
    ]  # fmt: skip
    assert cancelled
    assert all(entry.record.outcome == "CANCELLED" for entry in cancelled)
    assert all(entry.record.peer.startswith("ipv4:127.0.0.1:") for entry in cancelled)
