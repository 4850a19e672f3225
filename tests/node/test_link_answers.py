"""A node checks what the link answers as strictly as the link checks what it receives.

Against a link that answers what the test says (a real gRPC server, :mod:`.fake_link`): a
heartbeat interval of NaN, 0, a fraction of a second or 1e300, at activation or later, ends
the node with one line naming the field (no loop without pause, no silent end of the
heartbeat thread), beside an interval of 1 s, which it keeps to; an object announced larger
than any object may be, or larger than the node's storage bound, is refused before a byte is
written, beside an object that fits.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from flwrmtls.errors import FlwrmtlsError, LinkUnreachable, Refused
from flwrmtls.fleet.client import (
    FETCH_ATTEMPTS,
    BadAnswer,
    FleetClient,
    Session,
    fetch_again,
)
from flwrmtls.node.agent import NodeAgent, RetryPolicy
from flwrmtls.node.storage import NodeStorage
from flwrmtls.objects.scope import QuotaExceeded
from flwrmtls.objects.store import CorruptObject, ObjectStore, object_id_of
from flwrmtls.objects.transfer import MAX_OBJECT_BYTES, pull_object_into
from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc, objects_pb2
from flwrmtls.testing.processes import NodeProcess
from flwrmtls.wire.bounds import RESPONSE_BOUNDS, response_problem
from flwrmtls.wire.errors import ConnectionContext

from ..e2e.deployment import free_port
from ..e2e.test_processes import one_error_line
from .fake_link import BreakOff, FakeLink, fake_link

_NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64,
}  # fmt: skip
_APP_DATA_FILE = "flwrmtls/proto/records.proto"
_BAD_INTERVALS = [math.nan, 0.0, 0.5, 1e300, math.inf, -1.0]


def response_types() -> Iterator[Descriptor]:
    """Every message type a node receives from the Fleet API, and those nested in them."""
    seen: set[str] = set()
    pending = [
        method.output_type
        for service in fleet_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in seen or descriptor.file.name == _APP_DATA_FILE:
            continue
        seen.add(descriptor.full_name)
        yield descriptor
        pending.extend(f.message_type for f in descriptor.fields if f.message_type is not None)


def test_every_numeric_field_of_every_fleet_answer_has_a_range_and_every_row_a_field() -> None:
    wanted = {
        (descriptor.full_name, field.name)
        for descriptor in response_types()
        for field in descriptor.fields
        if field.type in _NUMERIC
        or (field.message_type is not None and field.message_type.file.name != _APP_DATA_FILE)
    }
    listed = {(message, name) for message, rows in RESPONSE_BOUNDS.items() for name in rows}
    assert wanted - listed == set(), "numeric answer fields without a range"
    assert listed - wanted == set(), "rows naming no numeric answer field"
    assert ("flwrmtls.proto.HeartbeatResponse", "heartbeat_interval") in wanted  # the walk works


def test_answer_ranges_refuse_what_a_node_cannot_use_beside_their_edges() -> None:
    for interval in (1.0, 86400.0):  # control: the edges
        assert response_problem(fleet_pb2.HeartbeatResponse(heartbeat_interval=interval)) is None
    for interval in _BAD_INTERVALS:
        problem = response_problem(fleet_pb2.HeartbeatResponse(heartbeat_interval=interval))
        assert problem == (
            "HeartbeatResponse.heartbeat_interval must be a number of seconds from 1 to 86400; "
            f"got {interval!r}"
        )
    bad_ttl = fleet_pb2.PullMessagesResponse()
    bad_ttl.messages.add(message_id="m", ttl=math.nan)
    assert response_problem(bad_ttl) == (
        "Message.ttl must be a number of seconds from 0 to 3.1536e+07; got nan"
    )


def serve_until_done(agent: NodeAgent, timeout: float) -> BaseException | None:
    """Run ``agent`` for up to ``timeout`` s: what it ended with, or None if it never ended
    (it is stopped then)."""
    ended: list[BaseException | None] = []

    def serve() -> None:
        try:
            asyncio.run(agent.run())
            ended.append(None)
        except BaseException as error:  # reported to the test
            ended.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        agent.request_stop()
        thread.join(30)
        return TimeoutError(f"the node did not end within {timeout} s")
    return ended[0]


@pytest.mark.parametrize("interval", _BAD_INTERVALS, ids=repr)
def test_a_bad_heartbeat_interval_at_activation_ends_the_node_naming_it(interval: float) -> None:
    link = FakeLink(activate_interval=interval)
    with fake_link(link) as client:
        error = serve_until_done(NodeAgent(client, retry=RetryPolicy(max_retries=0)), 10)
    assert type(error) is BadAnswer, error
    assert str(error) == (
        "the link answered outside the protocol: ActivateNodeResponse.heartbeat_interval must "
        f"be a number of seconds from 1 to 86400; got {interval!r}; this node cannot use that "
        "answer (is the link a compatible flwrmtls version?)"
    )
    assert link.heartbeats == 0  # never a loop without pause


@pytest.mark.parametrize("interval", [math.nan, 0.0, 1e300], ids=repr)
def test_a_bad_heartbeat_interval_later_ends_the_node_naming_it(interval: float) -> None:
    link = FakeLink(activate_interval=1.0, heartbeat_intervals=[1.0, interval])
    with fake_link(link) as client:
        error = serve_until_done(NodeAgent(client, retry=RetryPolicy(max_retries=0)), 15)
    assert type(error) is BadAnswer, error
    assert "HeartbeatResponse.heartbeat_interval must be a number of seconds from 1" in str(error)
    assert link.heartbeats == 2  # the good answer was kept to; the bad one ended it


def test_a_good_heartbeat_interval_is_kept_to() -> None:
    link = FakeLink(activate_interval=1.0)
    with fake_link(link) as client:
        agent = NodeAgent(client, retry=RetryPolicy(max_retries=0))
        thread = threading.Thread(target=lambda: asyncio.run(agent.run()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while link.heartbeats < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        agent.request_stop()
        thread.join(30)
    assert link.heartbeats >= 2
    assert not thread.is_alive()


def test_a_node_process_facing_a_nan_heartbeat_interval_exits_with_one_line(
    tmp_path: Path,
) -> None:
    link = FakeLink(activate_interval=math.nan)
    with fake_link(link):
        node = NodeProcess(
            ["--superlink", f"127.0.0.1:{link.port}", "--insecure",
             "--state-dir", str(tmp_path / "state"), "--clientappio-api-address", "127.0.0.1:0"],
            tmp_path / "node.log", {"FLWRMTLS_HOME": str(tmp_path / "home")},
        )  # fmt: skip
        node.start()
        try:
            code = node.wait_exit(timeout=30)
        finally:
            node.stop()
    assert code == 1
    assert one_error_line(node.log).endswith(
        "ActivateNodeResponse.heartbeat_interval must be a number of seconds from 1 to 86400; "
        "got nan; this node cannot use that answer (is the link a compatible flwrmtls version?)"
    )
    assert link.heartbeats == 0


# --- an object's announced size --------------------------------------------------------------


def chunks(data: bytes, total: int, piece: int = 1 << 20) -> list[objects_pb2.ObjectChunk]:
    object_id = object_id_of(data)
    return [
        objects_pb2.ObjectChunk(
            object_id=object_id, total_size=total, offset=offset, data=data[offset : offset + piece]
        )
        for offset in range(0, len(data), piece)
    ]


def files_in(store: ObjectStore) -> list[Path]:
    return [path for path in store.directory.rglob("*") if path.is_file()]


SESSION = Session(node_id=7, session_id="s", identity="CN=n", heartbeat_interval=1.0)


def test_an_object_announced_past_the_largest_is_refused_before_a_byte_is_written(
    tmp_path: Path,
) -> None:
    data = b"w" * (20 << 20)
    object_id = object_id_of(data)
    store = ObjectStore(tmp_path / "objects")
    link = FakeLink(chunks=chunks(data, total=1 << 62))
    with fake_link(link) as client:
        with pytest.raises(BadAnswer, match=r"ObjectChunk.total_size must be a size in bytes "
                           r"from 0 to 8589934592; got 4611686018427387904"):  # fmt: skip
            client.fetch_object(SESSION, object_id, store)
        assert files_in(store) == []
        # Below the node's answer check, the transfer itself refuses the size before writing.
        with grpc.insecure_channel(f"127.0.0.1:{link.port}") as channel:
            stub = fleet_pb2_grpc.FleetStub(channel)
            with pytest.raises(ValueError, match="announced size 4611686018427387904 is over "
                               f"the limit of {MAX_OBJECT_BYTES} bytes"):  # fmt: skip
                pull_object_into(store, stub.PullObject, object_id)
        assert files_in(store) == []
        link.chunks = chunks(data, total=len(data))  # control: the same bytes, announced right
        client.fetch_object(SESSION, object_id, store)
    assert store.read_verified(object_id) == data


def test_an_object_over_the_nodes_storage_bound_is_refused_before_a_byte_is_written(
    tmp_path: Path,
) -> None:
    store = ObjectStore(tmp_path / "objects")
    storage = NodeStorage(store, max_bytes=3 << 20)
    small, large = b"s" * (2 << 20), b"L" * (2 << 20)
    with fake_link(FakeLink(chunks=chunks(small, len(small)))) as client:
        client.fetch_object(SESSION, object_id_of(small), store, reserve=storage.reserve)
    link = FakeLink(chunks=chunks(large, len(large)))
    with fake_link(link) as client, pytest.raises(QuotaExceeded) as refused:
        client.fetch_object(SESSION, object_id_of(large), store, reserve=storage.reserve)
    assert str(refused.value) == (
        f"object {object_id_of(large)[:16]} of {2 << 20} bytes would exceed "
        f"--max-object-storage of 3 MiB on this node ({2 << 20} bytes stored, 0 arriving): "
        "raise the flag, or run fewer or smaller runs on this node at once"
    )
    assert files_in(store) == [store.path(object_id_of(small))]
    store.delete([object_id_of(small)])  # control: once there is room, it fits
    with fake_link(FakeLink(chunks=chunks(large, len(large)))) as client:
        client.fetch_object(SESSION, object_id_of(large), store, reserve=storage.reserve)
    assert store.read_verified(object_id_of(large)) == large


def test_bytes_a_link_sends_under_another_id_never_reach_an_app(tmp_path: Path) -> None:
    """A node writes what it fetches with the size checked and leaves the hash to the one
    reader on its host (the ClientApp, or the node before serving over ClientAppIo): bytes
    that do not match their id are refused there and deleted, to be fetched again."""
    store = ObjectStore(tmp_path / "objects")
    honest = b"model" * 50_000
    forged = b"FORGE" * 50_000  # the same size, other bytes
    object_id = object_id_of(honest)
    forged_chunks = chunks(forged, len(forged))
    for chunk in forged_chunks:
        chunk.object_id = object_id
    with fake_link(FakeLink(chunks=forged_chunks)) as client:
        client.fetch_object(SESSION, object_id, store, verify=False)
    with pytest.raises(CorruptObject):
        store.read_verified(object_id, discard=True)  # what a ClientApp reads
    assert files_in(store) == []  # deleted: the next read has it fetched again
    # Control: the honest bytes are written the same way and read.
    with fake_link(FakeLink(chunks=chunks(honest, len(honest)))) as client:
        client.fetch_object(SESSION, object_id, store, verify=False)
    assert store.read_verified(object_id, discard=True) == honest
    # A receiver that keeps the hash (the default) refuses the forged bytes at once.
    store.delete([object_id])
    with (
        fake_link(FakeLink(chunks=forged_chunks)) as client,
        pytest.raises(ValueError, match="do not match"),
    ):
        client.fetch_object(SESSION, object_id, store)
    assert files_in(store) == []


# -- a download broken off on the way -----------------------------------------------------------


def test_a_download_broken_off_is_fetched_again_from_its_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen at 32 nodes x 50 MiB: one of a node's downloads ended CANCELLED and its round
    failed. Two breaks (a cancelled call after a chunk, a connection lost before any) are
    fetched again; the bytes are whole and verified, and each retry is one warning naming the
    object, the chunks that try received and the status."""
    data = bytes(range(256)) * (12 << 10)  # 3 chunks of 1 MiB
    object_id = object_id_of(data)
    store = ObjectStore(tmp_path / "objects")
    link = FakeLink(
        chunks=chunks(data, len(data)),
        break_off=[
            BreakOff(grpc.StatusCode.CANCELLED, "CANCELLED", before=1),
            BreakOff(grpc.StatusCode.UNAVAILABLE, "Stream removed", before=0),
        ],
    )
    with fake_link(link) as client, caplog.at_level("WARNING", "flwrmtls.node"):
        client.fetch_object(SESSION, object_id, store)
    assert store.read_verified(object_id) == data
    assert link.object_pulls == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "flwrmtls.node"]
    assert len(warnings) == 2
    assert f"fetching object {object_id[:16]}" in warnings[0]
    assert (
        "broken off after 1 chunk(s) (CANCELLED: CANCELLED); fetching it again in 0.5 s "
        "(try 2 of 3)"
    ) in warnings[0]
    assert (
        "broken off after 0 chunk(s) (UNAVAILABLE: Stream removed); fetching it again in 1.0 s "
        "(try 3 of 3)"
    ) in warnings[1]


def test_a_download_broken_off_every_time_fails_after_the_last_try(tmp_path: Path) -> None:
    data = b"d" * (3 << 20)
    store = ObjectStore(tmp_path / "objects")
    cancelled = BreakOff(grpc.StatusCode.CANCELLED, "CANCELLED")
    link = FakeLink(chunks=chunks(data, len(data)), break_off=[cancelled] * FETCH_ATTEMPTS)
    with fake_link(link) as client, pytest.raises(LinkUnreachable, match=r"\(CANCELLED\)"):
        client.fetch_object(SESSION, object_id_of(data), store)
    assert link.object_pulls == FETCH_ATTEMPTS
    assert files_in(store) == []  # nothing of the broken tries stays


class _Jumping:
    """The ``time`` module as fleet/client.py sees it, whose monotonic clock jumps ``ahead``
    seconds from its third reading on (the deadline is the first, the first try's timeout the
    second): the first try took nearly the whole transfer's time."""

    def __init__(self, ahead: float) -> None:
        self.ahead, self.readings = ahead, 0

    def monotonic(self) -> float:
        self.readings += 1
        return time.monotonic() + (self.ahead if self.readings > 2 else 0.0)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.mark.parametrize(("ahead", "tries"), [(596.0, 1), (0.0, 2)])
def test_the_tries_share_one_transfers_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ahead: float, tries: int
) -> None:
    """A first try that used 596 of the 600 s leaves under a pause and 5 s for another: the
    break stands and names itself (not a deadline). Control: the same break with the time
    left is fetched again."""
    data = b"t" * (3 << 20)
    store = ObjectStore(tmp_path / "objects")
    link = FakeLink(
        chunks=chunks(data, len(data)),
        break_off=[BreakOff(grpc.StatusCode.CANCELLED, "CANCELLED")],
    )
    monkeypatch.setattr("flwrmtls.fleet.client.time", _Jumping(ahead))
    with fake_link(link) as client:
        if tries == 1:
            with pytest.raises(LinkUnreachable, match=r"\(CANCELLED\)"):
                client.fetch_object(SESSION, object_id_of(data), store)
        else:
            client.fetch_object(SESSION, object_id_of(data), store)
            assert store.read_verified(object_id_of(data)) == data
    assert link.object_pulls == tries


@pytest.mark.parametrize(
    ("code", "refusal", "kind"),
    [
        # The link said why: its answer stands (an OCSP answer it lacks is the node's to wait
        # for, as a link that is down, not a stream to fetch again at once).
        (grpc.StatusCode.UNAVAILABLE, "ocsp-unavailable", LinkUnreachable),
        (grpc.StatusCode.PERMISSION_DENIED, "", Refused),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", LinkUnreachable),  # out of time: not again
        (grpc.StatusCode.INTERNAL, "", FlwrmtlsError),
    ],
)
@pytest.mark.parametrize("before", [0, 1])
def test_a_download_ended_otherwise_is_not_fetched_again(
    tmp_path: Path,
    code: grpc.StatusCode,
    refusal: str,
    kind: type[FlwrmtlsError],
    before: int,
) -> None:
    data = b"e" * (3 << 20)
    store = ObjectStore(tmp_path / "objects")
    link = FakeLink(
        chunks=chunks(data, len(data)), break_off=[BreakOff(code, "no", refusal, before)]
    )
    with fake_link(link) as client, pytest.raises(kind):
        client.fetch_object(SESSION, object_id_of(data), store)
    assert link.object_pulls == 1
    assert files_in(store) == []


_TOO_MANY = (
    "too many calls in progress from 127.0.0.1 (64; the link allows 64 per address): retry "
    "when some have ended"
)
_OCSP_PENDING = (
    "the link is asking the OCSP responder about serial 0x1f of CN=Issuing CA: try again in "
    "a few seconds"
)


@pytest.mark.parametrize(
    ("code", "refused", "details", "arrived", "again"),
    [
        (grpc.StatusCode.CANCELLED, False, "CANCELLED", 0, True),
        (grpc.StatusCode.CANCELLED, False, "CANCELLED", 3, True),
        (grpc.StatusCode.CANCELLED, True, "CANCELLED", 3, False),
        # grpc's words for a call cut on a live connection, as grpcio 1.85 writes them.
        (grpc.StatusCode.UNAVAILABLE, False, "Stream removed (Socket closed)", 0, True),
        (grpc.StatusCode.UNAVAILABLE, False, "Stream removed", 0, True),
        (grpc.StatusCode.UNAVAILABLE, False, "Cancelling all calls", 0, True),
        (grpc.StatusCode.UNAVAILABLE, True, "Stream removed", 0, False),
        # The link's own try-later answers (no refusal trailer): asked again after a pause.
        (grpc.StatusCode.UNAVAILABLE, False, _TOO_MANY, 0, True),
        (grpc.StatusCode.UNAVAILABLE, False, _OCSP_PENDING, 0, True),
        # After a chunk the connection was made, whatever the words.
        (grpc.StatusCode.UNAVAILABLE, False, "Socket closed", 2, True),
        (grpc.StatusCode.UNAVAILABLE, True, "Socket closed", 2, False),
        # Before any chunk, no connection made: the agent's reconnect, not a retry here.
        (grpc.StatusCode.UNAVAILABLE, False, "Socket closed", 0, False),
        (grpc.StatusCode.UNAVAILABLE, False, "failed to connect to all addresses; last "
         "error: UNKNOWN: ipv4:127.0.0.1:9: Failed to connect to remote host: Connection "
         "refused", 0, False),
        (grpc.StatusCode.UNAVAILABLE, False, "DNS resolution failed for nowhere:9092", 0, False),
        (grpc.StatusCode.UNAVAILABLE, False, "CERTIFICATE_VERIFY_FAILED", 0, False),
        (grpc.StatusCode.UNAVAILABLE, False, "WRONG_VERSION_NUMBER", 0, False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, False, "Deadline Exceeded", 3, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False, "too big", 3, False),
        (grpc.StatusCode.UNKNOWN, False, "?", 3, False),
    ],
)  # fmt: skip
def test_which_failed_downloads_are_fetched_again(
    code: grpc.StatusCode, refused: bool, details: str, arrived: int, again: bool
) -> None:
    assert fetch_again(code, refused, details, arrived) is again


def test_a_busy_link_is_asked_again_after_a_pause(tmp_path: Path) -> None:
    """The link's try-later answer before any chunk (too many calls at once) is asked again
    after the pause, and the arrays arrive: the round is not lost to a moment's load. A link
    that stays busy is asked at most FETCH_ATTEMPTS times."""
    data = b"b" * (3 << 20)
    store = ObjectStore(tmp_path / "objects")
    busy = BreakOff(grpc.StatusCode.UNAVAILABLE, _TOO_MANY, before=0)
    link = FakeLink(chunks=chunks(data, len(data)), break_off=[busy])
    with fake_link(link) as client:
        client.fetch_object(SESSION, object_id_of(data), store)
        assert link.object_pulls == 2
        assert store.read_verified(object_id_of(data)) == data
        store.delete([object_id_of(data)])
        link.break_off = [busy] * FETCH_ATTEMPTS
        with pytest.raises(LinkUnreachable, match="too many calls"):
            client.fetch_object(SESSION, object_id_of(data), store)
    assert link.object_pulls == 2 + FETCH_ATTEMPTS


def test_a_link_that_cannot_be_reached_is_not_fetched_from_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listening: the connection is never made, so the failure is the agent's (its
    reconnect backoff), not three tries here: no try is announced."""
    port = free_port()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = FleetClient(channel, ConnectionContext(f"127.0.0.1:{port}", False, False, ""))
        with (
            caplog.at_level("WARNING", "flwrmtls.node"),
            pytest.raises(LinkUnreachable, match="connection refused"),
        ):
            client.fetch_object(SESSION, object_id_of(b"x"), ObjectStore(tmp_path / "objects"))
    assert not [r for r in caplog.records if "fetching it again" in r.getMessage()]
