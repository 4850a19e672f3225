"""The node's storage bound on every receive path, and what goes when a run ends.

A ClientApp pushing over ClientAppIo past ``--max-object-storage`` is refused before a byte is
written, beside a push that fits; an ended run's objects go unless another run holds them or
a receive is writing them; a ClientApp that finds an object corrupt in the shared directory
deletes it and asks again, once: a second mismatch is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from flwrmtls.appio.clientapp_process import _read_shared
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.node.clientapps import ClientApps, NodeRun
from flwrmtls.node.storage import NodeStorage
from flwrmtls.objects.scope import QuotaExceeded
from flwrmtls.objects.store import CorruptObject, ObjectStore, object_id_of
from flwrmtls.objects.transfer import push_objects
from flwrmtls.proto import appio_pb2, appio_pb2_grpc
from flwrmtls.testing.node import NodeLoop, serving_clientapps
from flwrmtls.wire.errors import ConnectionContext

KIB = 1024


@contextmanager
def clientappio(
    tmp_path: Path, max_object_bytes: int
) -> Iterator[
    tuple[ClientApps, appio_pb2_grpc.ClientAppIoStub, tuple[tuple[str, str], ...], NodeLoop]
]:
    """A node's ClientApps and ClientAppIo (the link unreachable: never asked here), run 1
    adopted, its ClientApp's token, and the node's event loop."""
    channel = grpc.insecure_channel("127.0.0.1:1")
    client = FleetClient(channel, ConnectionContext("127.0.0.1:1", False, False, ""))
    apps = ClientApps(
        client, ObjectStore(tmp_path / "objects"), node_config={}, share_objects=False,
        max_object_bytes=max_object_bytes,
    )  # fmt: skip
    apps.session = Session(node_id=5, session_id="s", identity="CN=n", heartbeat_interval=1)
    apps.adopt(NodeRun(1, "0" * 64, {}))
    token = ((TOKEN_METADATA_KEY, apps.tokens.issue(1, "clientapp")),)
    try:
        with (
            serving_clientapps(apps) as node,
            grpc.insecure_channel(apps.clientappio_address) as io,
        ):
            yield apps, appio_pb2_grpc.ClientAppIoStub(io), token, node
    finally:
        channel.close()


def test_a_clientapp_push_past_max_object_storage_is_refused_before_a_byte_is_written(
    tmp_path: Path,
) -> None:
    with clientappio(tmp_path, max_object_bytes=64 * KIB) as (apps, stub, token, _):
        fits = b"f" * (40 * KIB)
        push_objects(stub, {object_id_of(fits): fits}, metadata=token)  # control
        assert apps.objects.read_verified(object_id_of(fits)) == fits
        too_much = b"t" * (40 * KIB)
        with pytest.raises(grpc.RpcError) as refused:
            push_objects(stub, {object_id_of(too_much): too_much}, metadata=token)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            f"object {object_id_of(too_much)[:16]} of {40 * KIB} bytes would exceed "
            f"--max-object-storage of 64 KiB on this node ({40 * KIB} bytes stored, 0 arriving): "
            "raise the flag, or run fewer or smaller runs on this node at once"
        )
        stored = [path for path in apps.objects.directory.rglob("*") if path.is_file()]
        assert stored == [apps.objects.path(object_id_of(fits))]  # no partial file either
        run = apps.run(1)
        assert run is not None
        assert object_id_of(too_much) not in run.objects


def test_an_ended_runs_objects_go_unless_another_run_or_a_receive_holds_them(
    tmp_path: Path,
) -> None:
    with clientappio(tmp_path, max_object_bytes=1 << 20) as (apps, _, _, node):
        store = apps.objects
        run_1 = node.call(apps.run, 1)
        run_2 = node.call(apps.adopt, NodeRun(2, "1" * 64, {}))
        assert run_1 is not None
        own, shared, arriving = (store.put(b"run 1 only"), store.put(b"both"), "a" * 64)
        run_1.objects.update({own, shared, arriving})
        run_2.objects.add(shared)
        receive = apps.storage.reserve(arriving, 10)  # run 1's ClientApp is pushing it
        node.call(apps.end_runs, [1])
        assert not store.has(own)
        assert store.has(shared)  # run 2 holds it
        store.put_hashed(b"arrived", arriving)  # what the receive then stores...
        receive.commit()
        assert store.has(arriving)  # ...was not deleted under it
        node.call(apps.end_runs, [2])  # control: no run left, the store is emptied
        assert store.object_ids() == []


def test_storage_counts_what_is_on_disk_and_what_is_arriving(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    storage = NodeStorage(store, max_bytes=100)
    store.put(b"x" * 60)  # e.g. written by a ClientApp straight into the shared directory
    first = storage.reserve("b" * 64, 30)
    with pytest.raises(QuotaExceeded, match="60 bytes stored, 30 arriving"):
        storage.reserve("c" * 64, 20)
    first.cancel()
    storage.reserve("c" * 64, 20).commit()  # control: the room is back


class _PreparingStub:
    """What ClientAppIo's PrepareObjects does to the shared directory: (re)write the bytes
    a test says (the node's fetch from the link), counting the calls."""

    def __init__(self, store: ObjectStore, write: Callable[[int], bytes], object_id: str) -> None:
        self._store, self._write, self._object_id = store, write, object_id
        self.calls = 0

    def PrepareObjects(
        self, request: appio_pb2.PrepareObjectsRequest, **_: object
    ) -> appio_pb2.PrepareObjectsResponse:
        self.calls += 1
        if not self._store.has(self._object_id):
            self._store.put_hashed(self._write(self.calls), self._object_id)
        return appio_pb2.PrepareObjectsResponse()


def test_a_clientapp_deletes_a_corrupt_shared_object_and_asks_again_once(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    good = b"model" * 1000
    object_id = object_id_of(good)
    store.put_hashed(b"rotten" * 1000, object_id)  # corrupt on disk before the message
    healing = _PreparingStub(store, lambda call: good, object_id)
    assert _read_shared(healing, store, [object_id], ()) == {object_id: good}  # type: ignore[arg-type]
    assert healing.calls == 2  # once for the message, once after deleting the corrupt copy
    store.delete([object_id])
    store.put_hashed(b"rotten" * 1000, object_id)
    rotten = _PreparingStub(store, lambda call: b"rotten again" * 500, object_id)
    with pytest.raises(CorruptObject):  # the second mismatch is an error (an error reply)
        _read_shared(rotten, store, [object_id], ())  # type: ignore[arg-type]
    assert rotten.calls == 2  # asked again once, not in a loop
