"""The audit trail as the interceptor records it, on a real mTLS gRPC server in this process.

Stub Control and Fleet servicers sit behind the real AuthInterceptor, MtlsAuthenticator,
RefusalLog and AuditTable (SQLite); clients connect over TLS with the test PKI's certificates.
Each refusal sits beside the call that passes. (The end-to-end version, through the CLI
against a running link, is in tests/e2e/test_roles.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from flwrmtls.auth.audit import AuditRecord, AuditSink, Retention
from flwrmtls.auth.caller import current_principal
from flwrmtls.auth.interceptor import AuthInterceptor
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.refusallog import RefusalLog
from flwrmtls.proto import control_pb2, control_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from flwrmtls.state.audittable import DEFAULT_LIMITS
from flwrmtls.state.linkstate import LinkState
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.wire.credentials import (
    channel_credentials,
    load_ca_bundle,
    load_tls_identity,
    server_credentials,
)

OPERATOR = "role=operator,CN=cli-operator"
USER = "role=user,CN=alice"
NODE = "CN=node-1,O=Hospital A"
CONTROL = "/flwrmtls.proto.Control/"
FLEET = "/flwrmtls.proto.Fleet/"
_Context = Any


class StubControl(control_pb2_grpc.ControlServicer):
    async def ListRuns(
        self, request: control_pb2.ListRunsRequest, context: _Context
    ) -> control_pb2.ListRunsResponse:
        return control_pb2.ListRunsResponse()

    async def ListNodes(
        self, request: control_pb2.ListNodesRequest, context: _Context
    ) -> control_pb2.ListNodesResponse:
        return control_pb2.ListNodesResponse()

    async def StopRun(
        self, request: control_pb2.StopRunRequest, context: _Context
    ) -> control_pb2.StopRunResponse:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED, f"run {request.run_id} belongs to another user"
        )
        raise AssertionError("unreachable")

    async def StreamLogs(
        self, request: control_pb2.StreamLogsRequest, context: _Context
    ) -> AsyncIterator[control_pb2.LogEntry]:
        for seq in (1, 2):
            yield control_pb2.LogEntry(seq=seq, text=f"line {seq}")
        if request.follow:
            await asyncio.sleep(60)

    async def StartRun(
        self, request: control_pb2.StartRunRequest, context: _Context
    ) -> control_pb2.StartRunResponse:
        return control_pb2.StartRunResponse(run_id=7)

    async def RegisterNodeKeys(
        self, request: control_pb2.RegisterNodeKeysRequest, context: _Context
    ) -> control_pb2.RegisterNodeKeysResponse:
        raise RuntimeError("a bug in the handler")


class StubFleet(fleet_pb2_grpc.FleetServicer):
    async def ActivateNode(
        self, request: fleet_pb2.ActivateNodeRequest, context: _Context
    ) -> fleet_pb2.ActivateNodeResponse:
        principal = current_principal()
        return fleet_pb2.ActivateNodeResponse(
            node_id=principal.node_id or 0, identity=principal.identity
        )

    async def Heartbeat(
        self, request: fleet_pb2.HeartbeatRequest, context: _Context
    ) -> fleet_pb2.HeartbeatResponse:
        return fleet_pb2.HeartbeatResponse()


@pytest.fixture(scope="module")
def audit_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    pki = make_test_pki(tmp_path_factory.mktemp("audit-pki"))
    pki.ca.issue_cli("alice", role="user")
    return pki


@dataclass
class Harness:
    pki: TestPki
    port: int
    clock: FakeClock
    state: LinkState

    def channel(self, cert: str) -> grpc.aio.Channel:
        chain, key = self.pki.paths(cert)
        identity = load_tls_identity(chain, key, cert_flag="chain", key_flag="key")
        roots = self.pki.trust_bundle_path.read_bytes()
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}", channel_credentials(roots, identity)
        )

    def trail(self) -> list[AuditRecord]:
        """The audit trail, oldest first."""
        return [entry.record for entry in reversed(self.state.audit.entries(1000))]


@contextlib.asynccontextmanager
async def serving(
    pki: TestPki,
    tmp_path: Path,
    sink: AuditSink | None = None,
    limits: Mapping[Retention, int] = DEFAULT_LIMITS,
) -> AsyncIterator[Harness]:
    state = LinkState(tmp_path / "link.db", audit_limits=limits)
    clock = FakeClock(datetime.now(UTC))
    _, authorities = load_ca_bundle(pki.trust_bundle_path, "client CA")
    authenticator = MtlsAuthenticator(authorities)
    interceptor = AuthInterceptor(
        lambda: authenticator, clock, RefusalLog(clock), audit=sink or state.audit.record
    )
    server = grpc.aio.server(interceptors=[interceptor])
    # The stubs implement only the methods these tests call.
    control_pb2_grpc.add_ControlServicer_to_server(StubControl(), server)  # type: ignore[abstract]
    fleet_pb2_grpc.add_FleetServicer_to_server(StubFleet(), server)  # type: ignore[abstract]
    chain, key = pki.paths("server")
    credentials = server_credentials(
        load_tls_identity(chain, key, cert_flag="server", key_flag="key"),
        client_ca_pem=pki.trust_bundle_path.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield Harness(pki, port, clock, state)
    finally:
        await server.stop(0)
        state.close()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def status_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_control_calls_are_recorded_with_who_what_and_how_they_ended(
    audit_pki: TestPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with serving(audit_pki, tmp_path) as link, link.channel("cli-operator") as channel:
            control = control_pb2_grpc.ControlStub(channel)
            assert await status_of(control.ListRuns(control_pb2.ListRunsRequest())) == (
                grpc.StatusCode.OK
            )
            assert [e.seq async for e in control.StreamLogs(control_pb2.StreamLogsRequest())] == [
                1, 2,
            ]  # fmt: skip
            stop = control.StopRun(control_pb2.StopRunRequest(run_id=3))
            assert await status_of(stop) == grpc.StatusCode.PERMISSION_DENIED
            keys = control.RegisterNodeKeys(control_pb2.RegisterNodeKeysRequest())
            assert await status_of(keys) == grpc.StatusCode.UNKNOWN
            trail = link.trail()
        assert [(r.method.removeprefix(CONTROL), r.outcome, r.detail) for r in trail] == [
            ("ListRuns", "ok", ""),
            ("StreamLogs", "ok", ""),
            ("StopRun", "PERMISSION_DENIED", "run 3 belongs to another user"),
            ("RegisterNodeKeys", "UNKNOWN", "the handler raised RuntimeError"),
        ]
        assert {(r.identity, r.auth_method) for r in trail} == {(OPERATOR, "certificate")}
        assert all(r.peer.startswith("ipv4:127.0.0.1:") for r in trail)
        assert [r.timestamp for r in trail] == sorted(r.timestamp for r in trail)

    run(scenario)


def test_policy_refusals_are_recorded_once_per_interval_beside_permitted_calls(
    audit_pki: TestPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with serving(audit_pki, tmp_path) as link:
            async with link.channel("alice") as channel:
                control = control_pb2_grpc.ControlStub(channel)
                ok = await status_of(control.ListRuns(control_pb2.ListRunsRequest()))
                assert ok == grpc.StatusCode.OK
                for _ in range(3):
                    refused = await status_of(control.ListNodes(control_pb2.ListNodesRequest()))
                    assert refused == grpc.StatusCode.PERMISSION_DENIED
            async with link.channel("node-1") as channel:
                control = control_pb2_grpc.ControlStub(channel)
                refused = await status_of(control.ListRuns(control_pb2.ListRunsRequest()))
                assert refused == grpc.StatusCode.PERMISSION_DENIED
            async with link.channel("cli-operator") as channel:
                control = control_pb2_grpc.ControlStub(channel)
                ok = await status_of(control.ListNodes(control_pb2.ListNodesRequest()))
                assert ok == grpc.StatusCode.OK
            trail = link.trail()
        # Repeated refusals of one certificate are one entry (a refused caller cannot flood
        # the bounded trail); every permitted call is its own entry.
        assert [(r.identity, r.method.removeprefix(CONTROL), r.outcome) for r in trail] == [
            (USER, "ListRuns", "ok"),
            (USER, "ListNodes", "not-permitted"),
            (NODE, "ListRuns", "not-permitted"),
            (OPERATOR, "ListNodes", "ok"),
        ]
        assert "user certificate 'role=user,CN=alice' may not call ListNodes" in trail[1].detail
        assert "certificate sha256:" in trail[1].detail

    run(scenario)


def test_admissions_are_recorded_and_heartbeats_are_not(audit_pki: TestPki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(audit_pki, tmp_path) as link, link.channel("node-1") as channel:
            fleet = fleet_pb2_grpc.FleetStub(channel)
            activated = await fleet.ActivateNode(fleet_pb2.ActivateNodeRequest())
            assert activated.identity == NODE
            for _ in range(20):
                await fleet.Heartbeat(fleet_pb2.HeartbeatRequest())
            trail = link.trail()
        assert [(r.identity, r.method, r.outcome) for r in trail] == [
            (NODE, FLEET + "ActivateNode", "ok")
        ]

    run(scenario)


def test_refusals_are_counted_not_written_per_call_on_every_api(
    audit_pki: TestPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with serving(audit_pki, tmp_path) as link:
            async with link.channel("node-1") as node, link.channel("cli-operator") as cli:
                fleet = fleet_pb2_grpc.FleetStub(node)
                control = control_pb2_grpc.ControlStub(cli)
                # Control: valid certificates, heartbeats pass unrecorded.
                assert await status_of(fleet.Heartbeat(fleet_pb2.HeartbeatRequest())) == (
                    grpc.StatusCode.OK
                )
                assert link.trail() == []
                link.clock.advance(400 * 86400)  # both certificates have expired
                for _ in range(5):
                    assert await status_of(fleet.Heartbeat(fleet_pb2.HeartbeatRequest())) == (
                        grpc.StatusCode.UNAUTHENTICATED
                    )
                for _ in range(2):
                    assert await status_of(control.ListRuns(control_pb2.ListRunsRequest())) == (
                        grpc.StatusCode.UNAUTHENTICATED
                    )
                link.clock.advance(601)  # the refusal log's interval has passed
                assert await status_of(fleet.Heartbeat(fleet_pb2.HeartbeatRequest())) == (
                    grpc.StatusCode.UNAUTHENTICATED
                )
            trail = link.trail()
        assert [(r.identity, r.method, r.outcome) for r in trail] == [
            (NODE, FLEET + "Heartbeat", "expired"),
            (OPERATOR, CONTROL + "ListRuns", "expired"),
            (NODE, FLEET + "Heartbeat", "expired"),
        ]
        assert trail[0].auth_method == "certificate"
        assert "certificate sha256:" in trail[0].detail
        assert "more like it" not in trail[0].detail
        assert trail[2].detail.endswith("; 4 more like it since the previous report")

    run(scenario)


def test_a_caller_going_away_mid_stream_is_recorded_as_cancelled(
    audit_pki: TestPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with serving(audit_pki, tmp_path) as link, link.channel("cli-operator") as channel:
            control = control_pb2_grpc.ControlStub(channel)
            stream = control.StreamLogs(control_pb2.StreamLogsRequest(follow=True))
            first = await stream.read()
            assert isinstance(first, control_pb2.LogEntry)
            assert first.seq == 1
            stream.cancel()
            for _ in range(100):
                if link.trail():
                    break
                await asyncio.sleep(0.02)
            trail = link.trail()
        assert [(r.method, r.outcome) for r in trail] == [(CONTROL + "StreamLogs", "CANCELLED")]

    run(scenario)


def test_a_method_missing_from_the_policy_is_refused_and_recorded(
    audit_pki: TestPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with serving(audit_pki, tmp_path) as link, link.channel("cli-operator") as channel:
            unlisted = channel.unary_unary(CONTROL + "DropAllTables", None, None)(b"")
            assert await status_of(unlisted) == grpc.StatusCode.PERMISSION_DENIED
            listed = control_pb2_grpc.ControlStub(channel).ListRuns(control_pb2.ListRunsRequest())
            assert await status_of(listed) == grpc.StatusCode.OK
            trail = link.trail()
        assert [(r.identity, r.method, r.outcome) for r in trail] == [
            (OPERATOR, CONTROL + "DropAllTables", "not-permitted"),
            (OPERATOR, CONTROL + "ListRuns", "ok"),
        ]

    run(scenario)


def test_a_failing_trail_does_not_fail_the_call(
    audit_pki: TestPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(record: AuditRecord) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async def scenario() -> None:
        async with (
            serving(audit_pki, tmp_path, sink=broken) as link,
            link.channel("cli-operator") as channel,
        ):
            call = control_pb2_grpc.ControlStub(channel).ListRuns(control_pb2.ListRunsRequest())
            assert await status_of(call) == grpc.StatusCode.OK

    with caplog.at_level(logging.ERROR, logger="flwrmtls.link.auth"):
        run(scenario)
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert message == (
        f"audit trail: cannot record {CONTROL}ListRuns by {OPERATOR}: disk I/O error"
    )


def test_a_users_listing_loop_cannot_push_their_own_run_start_out_of_the_trail(
    audit_pki: TestPki, tmp_path: Path
) -> None:
    """As a CLI user: the trail keeps each retention class apart, so reads (and refusals) in
    any number push out only older reads (refusals), never the record of a run started."""
    limits = {Retention.CHANGE: 50, Retention.ADMISSION: 50, Retention.READ: 20,
              Retention.REFUSAL: 20, Retention.ENROLLMENT: 20}  # fmt: skip

    async def scenario() -> None:
        async with serving(audit_pki, tmp_path, limits=limits) as link:
            async with link.channel("alice") as channel:
                control = control_pb2_grpc.ControlStub(channel)
                await control.StartRun(control_pb2.StartRunRequest())
                for _ in range(300):
                    await control.ListRuns(control_pb2.ListRunsRequest())
                for _ in range(100):  # refused: users may not list nodes
                    await status_of(control.ListNodes(control_pb2.ListNodesRequest()))
            trail = link.trail()
        started = [r for r in trail if r.method == CONTROL + "StartRun"]
        assert [(r.identity, r.outcome, r.retention) for r in started] == [
            (USER, "ok", Retention.CHANGE)
        ]
        reads = [r for r in trail if r.method == CONTROL + "ListRuns"]
        assert 20 <= len(reads) <= 22  # the newest, bounded: pruned every 2 records
        assert {r.retention for r in reads} == {Retention.READ}
        refusals = [r for r in trail if r.retention is Retention.REFUSAL]
        assert len(refusals) == 1  # the policy refusal, once per interval

    run(scenario)
