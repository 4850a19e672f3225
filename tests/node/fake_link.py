"""A link that answers what a test tells it to: a real gRPC Fleet server on 127.0.0.1:0.

It plays a broken or hostile link (a NaN heartbeat interval, an object announced at 2^62
bytes), which the real link never is; a node talks to it over a real channel, through its
own FleetClient and agent, as it would to a link.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import grpc

from flwrmtls.fleet.client import FleetClient
from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc, objects_pb2
from flwrmtls.wire.errors import ConnectionContext
from flwrmtls.wire.metadata import REFUSAL_KEY

__all__ = ["BreakOff", "FakeLink", "fake_link"]


class BreakOff(NamedTuple):
    """A PullObject ended with ``code`` and ``details`` before chunk ``before`` (0: before any),
    with a ``flwrmtls-refusal`` trailer unless ``refusal`` is empty."""

    code: grpc.StatusCode
    details: str
    refusal: str = ""
    before: int = 1


@dataclass
class FakeLink(fleet_pb2_grpc.FleetServicer):
    activate_interval: float = 1.0
    heartbeat_intervals: list[float] = field(default_factory=list)
    """What each Heartbeat answers, in turn (the last one repeats); empty: ``activate_interval``."""
    chunks: list[objects_pb2.ObjectChunk] = field(default_factory=list)
    """What PullObject streams."""
    break_off: list[BreakOff] = field(default_factory=list)
    """How the next PullObjects end, one each in turn. Empty: they stream whole."""
    object_pulls: int = 0
    heartbeats: int = 0
    chunks_sent: int = 0
    pulls: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ActivateNode(
        self, request: fleet_pb2.ActivateNodeRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.ActivateNodeResponse:
        return fleet_pb2.ActivateNodeResponse(
            node_id=7, session_id="s", identity="CN=fake",
            heartbeat_interval=self.activate_interval,
        )  # fmt: skip

    def Heartbeat(
        self, request: fleet_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.HeartbeatResponse:
        with self.lock:
            self.heartbeats += 1
            answers = self.heartbeat_intervals or [self.activate_interval]
            interval = answers[min(self.heartbeats, len(answers)) - 1]
        return fleet_pb2.HeartbeatResponse(heartbeat_interval=interval)

    def PullMessages(
        self, request: fleet_pb2.PullMessagesRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.PullMessagesResponse:
        with self.lock:
            self.pulls += 1
        threading.Event().wait(min(request.wait_seconds, 0.2))
        return fleet_pb2.PullMessagesResponse()

    def DeactivateNode(
        self, request: fleet_pb2.DeactivateNodeRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.DeactivateNodeResponse:
        return fleet_pb2.DeactivateNodeResponse()

    def GetRun(
        self, request: fleet_pb2.GetRunRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.GetRunResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("unreachable")

    def PushMessages(
        self, request: fleet_pb2.PushMessagesRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.PushMessagesResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("unreachable")

    def PushObject(
        self, request_iterator: Iterator[objects_pb2.ObjectChunk], context: grpc.ServicerContext
    ) -> objects_pb2.PushObjectResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("unreachable")

    def MissingObjects(
        self, request: objects_pb2.MissingObjectsRequest, context: grpc.ServicerContext
    ) -> objects_pb2.MissingObjectsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("unreachable")

    def PushLogs(
        self, request: fleet_pb2.PushLogsRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.PushLogsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("unreachable")

    def RenewCertificate(
        self, request: fleet_pb2.RenewCertificateRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.RenewCertificateResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("unreachable")

    def PullObject(
        self, request: objects_pb2.PullObjectRequest, context: grpc.ServicerContext
    ) -> Iterator[objects_pb2.ObjectChunk]:
        with self.lock:
            self.object_pulls += 1
            ending = self.break_off.pop(0) if self.break_off else None
        for index, chunk in enumerate(self.chunks):
            if ending is not None and index == ending.before:
                if ending.refusal:
                    context.set_trailing_metadata(((REFUSAL_KEY, ending.refusal),))
                context.abort(ending.code, ending.details)
            with self.lock:
                self.chunks_sent += 1
            yield chunk


@contextmanager
def fake_link(servicer: FakeLink) -> Iterator[FleetClient]:
    """``servicer`` served on 127.0.0.1 (port 0), and a node's FleetClient for it."""
    server = grpc.server(ThreadPoolExecutor(4))
    fleet_pb2_grpc.add_FleetServicer_to_server(servicer, server)
    servicer.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{servicer.port}"
    channel = grpc.insecure_channel(address)
    try:
        yield FleetClient(channel, ConnectionContext(address, False, False, ""))
    finally:
        channel.close()
        server.stop(None)
