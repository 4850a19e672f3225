"""Objects: a model broadcast to several nodes is uploaded and stored once; bytes are verified."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from flwrmtls.app.message import Message, message_from_proto, message_to_proto
from flwrmtls.app.records import ArrayRecord, MetricRecord, RecordDict
from flwrmtls.appio.grid import GrpcGrid
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.link.server import Link
from flwrmtls.objects.scope import SetScope
from flwrmtls.objects.store import ObjectStore, object_id_of
from flwrmtls.objects.transfer import (
    MAX_OBJECT_BYTES,
    fixed_scope,
    pull_object_bytes,
    pull_objects,
    receive_object,
)
from flwrmtls.proto import appio_pb2_grpc, fleet_pb2_grpc, objects_pb2
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.link import node_client
from flwrmtls.testing.pki import TestPki


def test_broadcast_is_stored_once_and_replies_come_back_with_identities(
    link: Link, pki: TestPki
) -> None:
    run_id = link.state.runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}", owner="t",
        now=1.0,
    )  # fmt: skip
    link.state.runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
    token = new_token()
    link.state.runs.add_token(token_hash(token), run_id, "serverapp")
    nodes = []
    for name in ("node-1", "node-2"):
        chain, key = pki.paths(name)
        client, channel = node_client(
            link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
        )
        nodes.append((client, channel, client.activate()))
    model = ArrayRecord({f"layer-{i}": np.full(1 << 18, i, dtype=np.float32) for i in range(4)})
    serverappio = grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}")
    grid = GrpcGrid(serverappio, ((TOKEN_METADATA_KEY, token),), run_id)
    messages = [
        grid.create_message(RecordDict({"arrays": model}), "train", session.node_id, "1")
        for _, _, session in nodes
    ]
    replies: list[Message] = []
    sender = threading.Thread(target=lambda: replies.extend(grid.send_and_receive(messages)))
    sender.start()
    try:
        for index, (client, channel, session) in enumerate(nodes):
            pulled = client.pull(session, wait=10, active_run_ids=[])
            assert pulled is not None
            [proto] = pulled.messages
            objects = pull_objects(
                fleet_pb2_grpc.FleetStub(channel), list(proto.object_ids),
                session_id=session.session_id,
            )  # fmt: skip
            message = message_from_proto(proto, objects)
            arrays = message.content["arrays"]
            assert isinstance(arrays, ArrayRecord)
            updated = ArrayRecord({k: v + 100 * (index + 1) for k, v in arrays.items()})
            reply = message.create_reply(
                RecordDict({"arrays": updated, "metrics": MetricRecord({"num-examples": 1})})
            )
            reply_proto, reply_objects = message_to_proto(reply)
            store = ObjectStore(Path(link.config.database).parent / f"node-{session.node_id}")
            for data in reply_objects.values():
                store.put(data)
            client.send_objects(session, store, list(reply_objects))
            client.push(session, [reply_proto])
    finally:
        sender.join(timeout=30)
    broadcast_ids = {object_id_of(array.tobytes()) for array in model.values()}
    for message in messages:
        proto, _ = message_to_proto(message)
        assert set(proto.object_ids) == broadcast_ids  # the same 4 objects for both nodes
    stored = set(link.objects.store.object_ids())
    assert broadcast_ids <= stored
    # 4 broadcast objects stored once, plus 4 distinct reply objects per node: 12, not 16.
    assert len(stored) == 12
    assert sorted(r.metadata.src_identity for r in replies) == [
        "CN=node-1,O=Hospital A", "CN=node-2,O=Hospital B",
    ]  # fmt: skip
    serverappio.close()
    for _, channel, _ in nodes:
        channel.close()


def test_an_object_whose_bytes_do_not_match_its_id_is_refused(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = b"model bytes" * 1000
    writer = store.writer(object_id_of(b"something else"), len(data))
    writer.write(0, data)
    with pytest.raises(ValueError, match="do not match their SHA-256"):
        writer.finish()
    assert store.object_ids() == []
    good = store.put(data)  # control
    assert store.object_ids() == [good]
    assert store.read(good) == data
    with pytest.raises(ValueError, match="not an object id"):
        store.path("../../etc/passwd")


def test_a_shared_directory_reader_checks_what_another_process_wrote(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    good = store.put(b"weights" * 1000)
    assert store.read_verified(good) == b"weights" * 1000  # control
    bad = store.put(b"other weights" * 1000)
    store.path(bad).write_bytes(b"tampered" * 1000)  # what a rogue writer could leave
    with pytest.raises(ValueError, match="do not match their SHA-256"):
        store.read_verified(bad)


def _pushed(
    data: bytes, object_id: str, gate: asyncio.Event, sent: list[int]
) -> AsyncIterator[objects_pb2.ObjectChunk]:
    """One object in 1 KiB chunks; pauses after the first until ``gate`` is set."""

    async def chunks() -> AsyncIterator[objects_pb2.ObjectChunk]:
        for offset in range(0, len(data), 1024):
            if offset:
                await gate.wait()
            sent.append(offset)
            yield objects_pb2.ObjectChunk(
                object_id=object_id, total_size=len(data), offset=offset,
                data=data[offset : offset + 1024],
            )  # fmt: skip

    return chunks()


def test_a_push_is_answered_unread_only_when_its_caller_may_already_read_the_object(
    tmp_path: Path,
) -> None:
    """Once stored for one caller, the same bytes pushed by a caller that may not read them
    are read and hashed in full (so a push cannot tell it that they exist) and bad bytes
    under the stored id are refused as for a new object; a caller that may read the object
    is answered at once. Two callers pushing it at the same moment each send it whole."""
    store = ObjectStore(tmp_path / "objects")
    data = b"identical reply arrays" * 500
    object_id = object_id_of(data)
    chunk_offsets = list(range(0, len(data), 1024))
    store.put(data)  # stored for someone else
    stranger: set[str] = set()
    owner = {object_id}

    async def push(scope: set[str], pushed: bytes, gate: asyncio.Event | None = None) -> list[int]:
        if gate is None:
            gate = asyncio.Event()
            gate.set()
        sent: list[int] = []
        await receive_object(
            store, _pushed(pushed, object_id, gate, sent), fixed_scope(SetScope(scope))
        )
        return sent

    assert asyncio.run(push(owner, data)) == [0]  # control: its own object, answered unread
    with pytest.raises(ValueError, match="do not match their SHA-256"):
        asyncio.run(push(stranger, b"tampered reply arrays!" * 500))
    assert object_id not in stranger
    assert store.read_verified(object_id) == data  # the stored bytes are untouched
    assert asyncio.run(push(stranger, data)) == chunk_offsets  # read whole, like a new object
    assert object_id in stranger  # it proved it has the bytes: now it may read them

    async def together() -> tuple[list[int], list[int]]:
        gate = asyncio.Event()
        first = asyncio.create_task(push(set(), data, gate))
        second = asyncio.create_task(push(set(), data, gate))
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await second

    assert asyncio.run(together()) == (chunk_offsets, chunk_offsets)
    assert store.object_ids() == [object_id]
    assert store.read_verified(object_id) == data


def test_bytes_stored_under_an_id_computed_by_their_writer_are_checked_by_readers(
    tmp_path: Path,
) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = np.arange(1000, dtype=np.float32)
    good = store.put_hashed(memoryview(bytearray(data.tobytes())), object_id_of(data.tobytes()))
    assert store.read_verified(good) == data.tobytes()  # control
    wrong = object_id_of(b"what the writer claims")  # a writer's bug: the wrong id
    store.put_hashed(b"other bytes", wrong)
    with pytest.raises(ValueError, match="do not match their SHA-256"):
        store.read_verified(wrong)
    with pytest.raises(ValueError, match="not an object id"):
        store.put_hashed(b"x", "../escape")


class _ChunkServer(appio_pb2_grpc.ClientAppIoServicer):
    """A real gRPC server whose PullObject streams whatever chunks a test sets."""

    def __init__(self) -> None:
        self.chunks: list[objects_pb2.ObjectChunk] = []

    def PullObject(
        self, request: objects_pb2.PullObjectRequest, context: grpc.ServicerContext
    ) -> Iterator[objects_pb2.ObjectChunk]:
        yield from self.chunks


def test_a_pulled_object_is_refused_unless_its_chunks_add_up_to_its_id() -> None:
    servicer = _ChunkServer()  # type: ignore[abstract]  # only PullObject is served
    server = grpc.server(ThreadPoolExecutor(2))
    appio_pb2_grpc.add_ClientAppIoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    data = b"w" * 3000
    object_id = object_id_of(data)

    def chunk(offset: int, piece: bytes, total: int = len(data)) -> objects_pb2.ObjectChunk:
        return objects_pb2.ObjectChunk(
            object_id=object_id, total_size=total, offset=offset, data=piece
        )

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = appio_pb2_grpc.ClientAppIoStub(channel)
            servicer.chunks = [chunk(0, data[:1000]), chunk(1000, data[1000:])]
            assert bytes(pull_object_bytes(stub, object_id)) == data  # control
            cases = {
                "do not match their SHA-256": [chunk(0, b"x" * 3000)],
                "announced size": [chunk(0, data, total=MAX_OBJECT_BYTES + 1)],
                "chunk at 2000, expected 1000": [chunk(0, data[:1000]), chunk(2000, data[:1000])],
                "more bytes than the 3000 announced": [chunk(0, data[:2000]), chunk(2000, data)],
                "incomplete": [chunk(0, data[:1000])],
                "incomplete \\(0 bytes\\)": [],
            }
            for reason, chunks in cases.items():
                servicer.chunks = chunks
                with pytest.raises(ValueError, match=reason):
                    pull_object_bytes(stub, object_id)
    finally:
        server.stop(None)
