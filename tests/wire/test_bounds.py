"""Every numeric field of every request has a range, and a value outside it is refused.

The table is checked against the generated descriptors (like the policy table against the
generated methods); each range refuses NaN, infinities and values past its edges beside its
edges, which pass. Through the real link: a NaN ttl, an id SQLite cannot hold and an object
offset past the largest object are refused with one line, beside the same call in range.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.link.server import Link
from flwrmtls.proto import (
    appio_pb2,
    appio_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    enrollment_pb2,
    fleet_pb2,
    fleet_pb2_grpc,
    objects_pb2,
)
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.link import node_client
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.bounds import FIELD_BOUNDS, NESTED, Range, long_poll_seconds, request_problem
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity

_NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64,
}  # fmt: skip
_APP_DATA_FILE = "flwrmtls/proto/records.proto"
"""Records (metrics, configs, arrays' metadata) are app data: not control fields."""


def request_types() -> Iterator[Descriptor]:
    """Every message type a server receives, and the types nested in them (not app data)."""
    seen: set[str] = set()
    pending = [
        method.input_type
        for module in (fleet_pb2, control_pb2, appio_pb2, enrollment_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in seen or descriptor.file.name == _APP_DATA_FILE:
            continue
        seen.add(descriptor.full_name)
        yield descriptor
        pending.extend(f.message_type for f in descriptor.fields if f.message_type is not None)


def test_every_numeric_request_field_has_a_range_and_every_row_a_field() -> None:
    wanted = {
        (descriptor.full_name, field.name)
        for descriptor in request_types()
        for field in descriptor.fields
        if field.type in _NUMERIC
        or (field.message_type is not None and field.message_type.file.name != _APP_DATA_FILE)
    }
    listed = {(message, name) for message, rows in FIELD_BOUNDS.items() for name in rows}
    assert wanted - listed == set(), "numeric request fields without a range"
    assert listed - wanted == set(), "rows naming no numeric request field"
    assert ("flwrmtls.proto.PullMessagesRequest", "wait_seconds") in wanted  # the walk works


def ranges() -> list[tuple[str, str, Range]]:
    return [
        (message, name, allowed)
        for message, rows in FIELD_BOUNDS.items()
        for name, allowed in rows.items()
        if allowed is not NESTED
    ]


@pytest.mark.parametrize(("message", "name", "allowed"), ranges(), ids=lambda v: str(v))
def test_each_range_refuses_what_is_past_its_edges_and_keeps_its_edges(
    message: str, name: str, allowed: Range
) -> None:
    assert allowed.allows(allowed.low)
    assert allowed.allows(allowed.high)
    for outside in (math.nan, math.inf, -math.inf):
        assert not allowed.allows(outside)
    if allowed.low > -(1 << 63):
        assert not allowed.allows(allowed.low - 1)
    if allowed.high < (1 << 63) - 1:
        assert not allowed.allows(allowed.high + 1)


def test_nested_messages_are_checked_and_app_data_is_not() -> None:
    good = common_pb2.Message(message_id="m", ttl=60.0, created_at=1.0)
    request = appio_pb2.PushAppMessagesRequest(messages=[good, good])
    assert request_problem(request) is None
    request.messages[1].ttl = math.nan
    assert request_problem(request) == (
        "Message.ttl must be a number of seconds from 0 to 3.1536e+07; got nan"
    )
    reply = common_pb2.Message(error=common_pb2.Error(code=-5))
    assert request_problem(appio_pb2.PushReplyRequest(reply=reply)) is None
    # A NaN metric is app data: a run's config is not looked at.
    config = control_pb2.StartRunRequest()
    config.run_config.data["lr"].double = math.nan
    assert request_problem(config) is None


def test_long_poll_seconds_never_returns_what_is_not_a_wait() -> None:
    assert long_poll_seconds(math.nan) == 0.0
    assert long_poll_seconds(-1.0) == 0.0
    assert long_poll_seconds(math.inf) == 30.0
    assert long_poll_seconds(12.5) == 12.5


# --- through the real link -------------------------------------------------------------------


def serverapp_token(link: Link) -> tuple[int, tuple[tuple[str, str]]]:
    runs = link.state.runs
    run_id = runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}", owner="t",
        now=1.0,
    )  # fmt: skip
    runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
    token = new_token()
    runs.add_token(token_hash(token), run_id, "serverapp")
    return run_id, ((TOKEN_METADATA_KEY, token),)


def refusal(call: object) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return str(caught.value.details())


def test_a_nan_ttl_is_refused_from_a_serverapp_and_from_a_node(link: Link, pki: TestPki) -> None:
    """A NaN ttl made a NaN expires_at, which SQLite stores as NULL: the NOT NULL column
    refused it with UNKNOWN and a traceback in the link's log."""
    run_id, metadata = serverapp_token(link)
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=pki.paths("node-1")[0],
        key=pki.paths("node-1")[1],
    )  # fmt: skip
    session = client.activate()
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as app_channel:
        serverappio = appio_pb2_grpc.ServerAppIoStub(app_channel)

        def push(message_id: str, ttl: float) -> object:
            message = common_pb2.Message(
                message_id=message_id, dst_node_id=session.node_id, ttl=ttl
            )
            return serverappio.PushMessages(
                appio_pb2.PushAppMessagesRequest(messages=[message]), metadata=metadata
            )

        assert refusal(lambda: push("nan", math.nan)) == (
            "Message.ttl must be a number of seconds from 0 to 3.1536e+07; got nan"
        )
        push("good", 60.0)  # control
        pulled = client.pull(session, wait=5, active_run_ids=[])
        assert pulled is not None
        [delivered] = pulled.messages
        assert delivered.message_id == "good"  # the refused one was never stored
        assert delivered.ttl == 60.0
        fleet = fleet_pb2_grpc.FleetStub(channel)

        def reply(ttl: float) -> object:
            message = common_pb2.Message(
                message_id="r", src_node_id=session.node_id, reply_to_message_id="good", ttl=ttl
            )
            return fleet.PushMessages(
                fleet_pb2.PushMessagesRequest(session_id=session.session_id, messages=[message])
            )

        assert "Message.ttl must be" in refusal(lambda: reply(math.nan))
        reply(60.0)  # control
        [stored] = serverappio.PullReplies(
            appio_pb2.PullRepliesRequest(), metadata=metadata
        ).replies
        assert (stored.message_id, stored.run_id) == ("r", run_id)
    channel.close()


def test_ids_sqlite_cannot_hold_are_refused_naming_the_field(link: Link, pki: TestPki) -> None:
    """A uint64 above 2**63-1 raised OverflowError inside SQLite: UNKNOWN and a traceback."""
    operator = load_tls_identity(*pki.paths("cli-operator"), cert_flag="c", key_flag="k")
    with grpc.secure_channel(
        f"127.0.0.1:{link.control_port}",
        channel_credentials(pki.trust_bundle_path.read_bytes(), operator),
    ) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        too_big = (1 << 64) - 1
        assert refusal(lambda: control.ListRuns(control_pb2.ListRunsRequest(run_id=too_big))) == (
            f"ListRunsRequest.run_id must be an id from 0 to {(1 << 63) - 1}; got {too_big}"
        )
        assert "StopRunRequest.run_id" in refusal(
            lambda: control.StopRun(control_pb2.StopRunRequest(run_id=1 << 63))
        )
        stream = control.StreamLogs(control_pb2.StreamLogsRequest(run_id=1, after_seq=too_big))
        assert "StreamLogsRequest.after_seq" in refusal(lambda: list(stream))
        # Control: the largest id SQLite holds is a run that does not exist.
        with pytest.raises(grpc.RpcError) as caught:
            control.ListRuns(control_pb2.ListRunsRequest(run_id=(1 << 63) - 1))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_an_object_chunk_past_the_largest_object_is_refused(link: Link, pki: TestPki) -> None:
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=pki.paths("node-1")[0],
        key=pki.paths("node-1")[1],
    )  # fmt: skip
    session = client.activate()
    fleet = fleet_pb2_grpc.FleetStub(channel)
    data = b"weights"
    object_id = hashlib.sha256(data).hexdigest()

    def push(offset: int) -> objects_pb2.PushObjectResponse:
        chunk = objects_pb2.ObjectChunk(
            object_id=object_id, total_size=len(data), offset=offset, data=data,
            session_id=session.session_id,
        )  # fmt: skip
        response: objects_pb2.PushObjectResponse = fleet.PushObject(iter([chunk]))
        return response

    assert "ObjectChunk.offset must be a size in bytes" in refusal(lambda: push(1 << 40))
    assert push(0).size == len(data)  # control
    channel.close()
