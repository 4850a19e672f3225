"""Objects are scoped to runs: who may read, ask about and store which, through the real link.

Each attack (as a node, as a ServerApp, as a ClientApp) fails beside the control where the
legitimate caller passes. An object outside the caller's scope gets exactly the answer a
missing object gets, so no answer tells a caller that it exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from flwrmtls.auth.tokens import TOKEN_METADATA_KEY, new_token, token_hash
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.server import Link
from flwrmtls.node.clientapps import ClientApps, NodeRun
from flwrmtls.objects.scope import QuotaExceeded
from flwrmtls.objects.store import ObjectStore, object_id_of
from flwrmtls.objects.transfer import pull_object_bytes, push_objects
from flwrmtls.proto import (
    appio_pb2,
    appio_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    objects_pb2,
)
from flwrmtls.runs.linkobjects import LinkObjects, StorageLimits
from flwrmtls.state.linkstate import LinkState
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.node import serving_clientapps
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.errors import ConnectionContext

KIB = 1024


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


def distinct(size: int) -> bytes:
    return os.urandom(size)


@contextmanager
def scoped_link(
    pki: TestPki,
    tmp_path: Path,
    *,
    share_objects: bool = True,
    storage: StorageLimits | None = None,
) -> Iterator[Link]:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    config = dataclasses.replace(
        config, share_objects=share_objects, storage=storage or StorageLimits()
    )
    with running_link(config) as link:
        yield link


@dataclass
class ServerApp:
    """A run's ServerApp, as its process talks to ServerAppIo with the run's token."""

    run_id: int
    stub: appio_pb2_grpc.ServerAppIoStub
    metadata: tuple[tuple[str, str], ...]

    def push(self, data: bytes) -> str:
        push_objects(self.stub, {object_id_of(data): data}, metadata=self.metadata)
        return object_id_of(data)

    def pull(self, object_id: str) -> bytes:
        return bytes(pull_object_bytes(self.stub, object_id, metadata=self.metadata))

    def missing(self, object_ids: Sequence[str]) -> list[str]:
        request = objects_pb2.MissingObjectsRequest(object_ids=object_ids)
        return list(self.stub.MissingObjects(request, metadata=self.metadata).object_ids)

    def send(self, node_id: int, message_id: str, object_ids: Sequence[str] = ()) -> None:
        message = common_pb2.Message(
            message_id=message_id, dst_node_id=node_id, message_type="train",
            object_ids=object_ids,
        )  # fmt: skip
        request = appio_pb2.PushAppMessagesRequest(messages=[message])
        self.stub.PushMessages(request, metadata=self.metadata)

    def probe(self, object_id: str, size: int) -> object:
        """A push of one chunk of made-up bytes under ``object_id``."""
        return self.stub.PushObject(iter([_made_up(object_id, size, "")]), metadata=self.metadata)


def _made_up(object_id: str, size: int, session_id: str) -> objects_pb2.ObjectChunk:
    return objects_pb2.ObjectChunk(
        object_id=object_id, total_size=size, offset=0, data=b"?" * size, session_id=session_id
    )


def start_run(link: Link, channel: grpc.Channel) -> ServerApp:
    runs = link.state.runs
    run_id = runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}", owner="t",
        now=1.0,
    )  # fmt: skip
    runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
    token = new_token()
    runs.add_token(token_hash(token), run_id, "serverapp")
    return ServerApp(
        run_id, appio_pb2_grpc.ServerAppIoStub(channel), ((TOKEN_METADATA_KEY, token),)
    )


@dataclass
class Node:
    """A node as its agent talks to the Fleet API, with its certificate."""

    client: FleetClient
    stub: fleet_pb2_grpc.FleetStub
    session: Session

    @property
    def node_id(self) -> int:
        return self.session.node_id

    def pull(self, object_id: str) -> bytes:
        return bytes(pull_object_bytes(self.stub, object_id, session_id=self.session.session_id))

    def missing(self, object_ids: Sequence[str]) -> list[str]:
        request = objects_pb2.MissingObjectsRequest(
            object_ids=object_ids, session_id=self.session.session_id
        )
        return list(self.stub.MissingObjects(request).object_ids)

    def push(self, data: bytes) -> str:
        """Push ``data`` whole, without asking first whether the link lacks it."""
        chunk = objects_pb2.ObjectChunk(
            object_id=object_id_of(data), total_size=len(data), offset=0, data=data,
            session_id=self.session.session_id,
        )  # fmt: skip
        self.stub.PushObject(iter([chunk]))
        return object_id_of(data)

    def probe(self, object_id: str, size: int) -> object:
        """A push of one chunk of made-up bytes under ``object_id``."""
        return self.stub.PushObject(iter([_made_up(object_id, size, self.session.session_id)]))

    def reply(self, message_id: str, object_ids: Sequence[str] = ()) -> None:
        reply = common_pb2.Message(
            message_id=f"reply-to-{message_id}", src_node_id=self.node_id,
            reply_to_message_id=message_id, message_type="train", object_ids=object_ids,
        )  # fmt: skip
        request = fleet_pb2.PushMessagesRequest(
            session_id=self.session.session_id, messages=[reply]
        )
        self.stub.PushMessages(request)


@contextmanager
def nodes(link: Link, pki: TestPki, *names: str) -> Iterator[list[Node]]:
    channels = []
    activated = []
    for name in names:
        chain, key = pki.paths(name)
        client, channel = node_client(
            link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
        )
        channels.append(channel)
        activated.append(Node(client, fleet_pb2_grpc.FleetStub(channel), client.activate()))
    try:
        yield activated
    finally:
        for channel in channels:
            channel.close()


@contextmanager
def serverappio(link: Link) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{link.serverappio_port}") as channel:
        yield channel


def test_a_node_reads_only_the_objects_of_messages_addressed_to_it(
    link: Link, pki: TestPki
) -> None:
    with serverappio(link) as channel, nodes(link, pki, "node-1", "node-2") as (one, two):
        run_1, run_2 = start_run(link, channel), start_run(link, channel)
        for_one = run_1.push(b"run 1's model for node 1" * 100)
        for_two = run_1.push(b"run 1's model for node 2" * 100)  # same run, another node
        secret = run_2.push(b"run 2's model" * 100)  # run 2 sends work to node 2 only
        run_1.send(one.node_id, "m1", [for_one])
        run_1.send(two.node_id, "m2", [for_two])
        run_2.send(two.node_id, "m3", [secret])
        never_stored = object_id_of(b"never stored")
        assert one.pull(for_one) == b"run 1's model for node 1" * 100  # control
        assert two.pull(secret) == b"run 2's model" * 100  # control: node 2 works for run 2
        for other in (for_two, secret, never_stored):  # the same answer for each
            assert refusal(lambda: one.pull(other)) == (  # noqa: B023
                grpc.StatusCode.NOT_FOUND, f"no object {other}",
            )  # fmt: skip
        assert one.missing([for_one, for_two, secret, never_stored]) == [
            for_two, secret, never_stored,
        ]  # fmt: skip
        assert two.missing([for_one, for_two, secret]) == [for_one]


def test_a_node_can_neither_probe_for_nor_claim_an_object_it_was_not_sent(
    link: Link, pki: TestPki
) -> None:
    secret_bytes = b"run 2's weights" * 100
    with serverappio(link) as channel, nodes(link, pki, "node-1") as (node,):
        run_1, run_2 = start_run(link, channel), start_run(link, channel)
        secret = run_2.push(secret_bytes)
        run_1.send(node.node_id, "m1")
        # Probing: one chunk of made-up bytes under a stored id used to be answered "stored"
        # at once, unread. It is read and refused exactly as for an id nothing holds.
        never_stored = object_id_of(b"never stored")
        for object_id in (secret, never_stored):
            code, details = refusal(lambda: node.probe(object_id, len(secret_bytes)))  # noqa: B023
            assert (code, details) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"object {object_id}: bytes do not match their SHA-256",
            )
        # Claiming: a reply may name only objects the node may read.
        code, details = refusal(lambda: node.reply("m1", [secret]))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == f"a reply names objects this node did not push: {secret}"
        assert refusal(lambda: run_1.pull(secret))[0] is grpc.StatusCode.NOT_FOUND
        update = node.push(b"node 1's update")
        node.reply("m1", [update])  # control: its own upload
        assert run_1.pull(update) == b"node 1's update"  # and its run's ServerApp reads it
        # A node that really holds the bytes proves it by sending them whole: then they are
        # its to name (the same content in two runs, stored once).
        assert node.push(secret_bytes) == secret
        assert node.missing([secret]) == []
        assert link.objects.store.object_ids().count(secret) == 1


def test_a_serverapp_reads_and_names_only_its_own_runs_objects(
    pki: TestPki, tmp_path: Path
) -> None:
    with (
        scoped_link(pki, tmp_path, share_objects=False) as link,
        serverappio(link) as channel,
        nodes(link, pki, "node-1") as (node,),
    ):
        run_1, run_2 = start_run(link, channel), start_run(link, channel)
        weights = run_1.push(b"run 1's weights" * 100)
        assert run_1.pull(weights) == b"run 1's weights" * 100  # control
        assert run_1.missing([weights]) == []
        run_1.send(node.node_id, "m1", [weights])
        assert refusal(lambda: run_2.pull(weights)) == (
            grpc.StatusCode.NOT_FOUND, f"no object {weights}",
        )  # fmt: skip
        assert run_2.missing([weights]) == [weights]
        code, details = refusal(lambda: run_2.send(node.node_id, "m2", [weights]))
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT, f"messages reference objects not pushed: {weights}",
        )  # fmt: skip
        code, details = refusal(lambda: run_2.probe(weights, 1500))
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT, f"object {weights}: bytes do not match their SHA-256",
        )  # fmt: skip
        assert node.pull(weights) == b"run 1's weights" * 100  # control: its node reads it


def test_a_run_stores_no_more_than_max_run_storage(pki: TestPki, tmp_path: Path) -> None:
    storage = StorageLimits(max_run_bytes=100 * KIB)
    with (
        scoped_link(pki, tmp_path, storage=storage) as link,
        serverappio(link) as channel,
        nodes(link, pki, "node-1") as (node,),
    ):
        run_1, run_2 = start_run(link, channel), start_run(link, channel)
        model = run_1.push(distinct(60 * KIB))  # control: within the quota
        second = distinct(60 * KIB)
        code, details = refusal(lambda: run_1.push(second))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details == (
            f"run {run_1.run_id} would hold {120 * KIB} bytes of objects, over the link's "
            f"--max-run-storage of {100 * KIB} bytes"
        )
        assert run_2.push(second) == object_id_of(second)  # each run has its own quota
        # A node's reply counts against the run it answers.
        run_1.send(node.node_id, "m1", [model])
        update = node.push(distinct(60 * KIB))  # within the node's own (pending) budget
        code, details = refusal(lambda: node.reply("m1", [update]))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"over the link's --max-run-storage of {100 * KIB} bytes" in details
        node.reply("m1", [model])  # control: the run's own object adds nothing
        assert link.objects.run_bytes(run_1.run_id) == 60 * KIB


def test_an_ended_runs_objects_are_deleted_unless_another_run_holds_them(
    link: Link, pki: TestPki
) -> None:
    with serverappio(link) as channel:
        run_1, run_2 = start_run(link, channel), start_run(link, channel)
        only_run_1 = run_1.push(b"only run 1" * 100)
        shared = run_1.push(b"both runs" * 100)
        assert run_2.push(b"both runs" * 100) == shared
        chain, key = pki.paths("cli-operator")
        identity = load_tls_identity(chain, key, cert_flag="chain", key_flag="key")
        credentials = channel_credentials(pki.trust_bundle_path.read_bytes(), identity)
        with grpc.secure_channel(
            f"127.0.0.1:{link.control_port}", credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        ) as control:  # fmt: skip
            stub = control_pb2_grpc.ControlStub(control)
            stub.StopRun(control_pb2.StopRunRequest(run_id=run_1.run_id))
        store = link.objects.store
        assert not store.has(only_run_1)
        assert store.has(shared)  # control: run 2 still holds it
        assert link.objects.run_bytes(run_1.run_id) == 0
        assert run_2.pull(shared) == b"both runs" * 100


def test_a_node_stores_no_more_than_its_pending_budget_until_a_reply_names_it(
    pki: TestPki, tmp_path: Path
) -> None:
    storage = StorageLimits(max_node_pending_bytes=100 * KIB)
    with (
        scoped_link(pki, tmp_path, storage=storage) as link,
        serverappio(link) as channel,
        nodes(link, pki, "node-1", "node-2") as (one, two),
    ):
        run = start_run(link, channel)
        run.send(one.node_id, "m1")
        first = one.push(distinct(60 * KIB))  # control
        bad = object_id_of(b"not these bytes")
        assert refusal(lambda: one.probe(bad, 30 * KIB))[0] is grpc.StatusCode.INVALID_ARGUMENT
        assert link.objects.pending_bytes(one.node_id) == 60 * KIB  # a failed push holds none
        second = distinct(60 * KIB)
        code, details = refusal(lambda: one.push(second))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.startswith(
            f"node {one.node_id}'s uploads that no reply names yet would take {120 * KIB} "
            f"bytes, over the link's --max-node-pending-storage of {100 * KIB} bytes"
        )
        assert two.push(second) == object_id_of(second)  # each node has its own budget
        one.reply("m1", [first])  # naming an upload moves it to the run's account
        assert one.push(second) == object_id_of(second)


@contextmanager
def ledger(tmp_path: Path, limits: StorageLimits) -> Iterator[tuple[LinkObjects, FakeClock, int]]:
    """The link's object ledger over a real database and store, with a clock that jumps;
    and a run in it."""
    clock = FakeClock()
    state = LinkState(tmp_path / "link.db")
    run_id = state.runs.create(
        app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}", owner="t",
        now=1.0,
    )  # fmt: skip
    try:
        yield LinkObjects(ObjectStore(tmp_path / "objects"), state, clock, limits), clock, run_id
    finally:
        state.close()


def upload(objects: LinkObjects, node_id: int, data: bytes) -> str:
    """What a verified Fleet PushObject does: reserve, store, commit."""
    reservation = objects.node_scope(node_id).reserve(object_id_of(data), len(data))
    objects.store.put(data)
    reservation.commit()
    return object_id_of(data)


def test_pending_node_uploads_expire_after_their_ttl(tmp_path: Path) -> None:
    limits = StorageLimits(max_node_pending_bytes=10 * KIB, pending_ttl=60.0)
    with ledger(tmp_path, limits) as (objects, clock, run_id):
        unnamed = upload(objects, 7, b"a" * 40)  # counted as CHARGE_UNIT (4 KiB)
        named = upload(objects, 7, b"b" * 40)
        objects.accept_run_messages(run_id, [(7, [named])], bundle_hash="0" * 64, shared=True)
        with pytest.raises(QuotaExceeded, match=f"--max-node-pending-storage of {10 * KIB} "):
            upload(objects, 7, b"c" * 40)  # 3 x 4 KiB
        clock.advance(59)
        objects.expire_pending()
        assert objects.store.has(unnamed)  # not yet
        clock.advance(2)
        objects.expire_pending()
        assert not objects.store.has(unnamed)
        assert objects.store.has(named)  # a run holds it
        assert objects.pending_bytes(7) == 0
        upload(objects, 7, b"c" * 40)  # the budget is free again


def test_a_node_holds_at_most_so_many_pending_uploads_however_small(tmp_path: Path) -> None:
    with ledger(tmp_path, StorageLimits(max_node_pending_objects=2)) as (objects, _, _):
        upload(objects, 7, b"a")
        upload(objects, 7, b"b")  # control
        with pytest.raises(QuotaExceeded, match="node 7 has 2 uploads that no reply names yet"):
            upload(objects, 7, b"c")
        upload(objects, 8, b"c")  # another node's count is its own


def test_objects_that_belong_to_no_run_are_deleted_when_the_link_starts(
    pki: TestPki, tmp_path: Path
) -> None:
    orphan = ObjectStore(tmp_path / "link.db.objects").put(b"left from before")
    with scoped_link(pki, tmp_path) as link, serverappio(link) as channel:
        assert not link.objects.store.has(orphan)
        kept = start_run(link, channel).push(b"a run's model")
        assert link.objects.store.has(kept)  # control


def test_a_clientapp_reads_only_its_own_runs_objects_on_the_node(tmp_path: Path) -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")  # the link: never reached here
    client = FleetClient(channel, ConnectionContext("127.0.0.1:1", False, False, ""))
    store = ObjectStore(tmp_path / "objects")
    apps = ClientApps(client, store, node_config={}, share_objects=False)
    apps.session = Session(node_id=5, session_id="s", identity="CN=n", heartbeat_interval=1)
    run_1 = apps.adopt(NodeRun(1, "0" * 64, {}))
    run_2 = apps.adopt(NodeRun(2, "1" * 64, {}))
    theirs = store.put(b"run 2's model")  # the node fetched it for run 2's message
    apps.enqueue(run_2, common_pb2.Message(message_id="m2", run_id=2, object_ids=[theirs]))
    apps.enqueue(run_1, common_pb2.Message(message_id="m1", run_id=1))
    token_1 = ((TOKEN_METADATA_KEY, apps.tokens.issue(1, "clientapp")),)
    token_2 = ((TOKEN_METADATA_KEY, apps.tokens.issue(2, "clientapp")),)
    try:
        with (
            serving_clientapps(apps),
            grpc.insecure_channel(apps.clientappio_address) as io,
        ):
            stub = appio_pb2_grpc.ClientAppIoStub(io)
            assert bytes(pull_object_bytes(stub, theirs, metadata=token_2)) == b"run 2's model"
            never_stored = hashlib.sha256(b"never stored").hexdigest()
            for object_id in (theirs, never_stored):  # the same answer; the link is not asked
                assert refusal(lambda: pull_object_bytes(stub, object_id, metadata=token_1)) == (  # noqa: B023
                    grpc.StatusCode.NOT_FOUND, f"object unavailable: no object {object_id}",
                )  # fmt: skip
            prepare = appio_pb2.PrepareObjectsRequest(object_ids=[theirs])
            assert refusal(lambda: stub.PrepareObjects(prepare, metadata=token_1))[0] is (
                grpc.StatusCode.NOT_FOUND
            )
            ask = objects_pb2.MissingObjectsRequest(object_ids=[theirs])
            assert list(stub.MissingObjects(ask, metadata=token_1).object_ids) == [theirs]
            assert list(stub.MissingObjects(ask, metadata=token_2).object_ids) == []
            reply = common_pb2.Message(
                message_id="r1", reply_to_message_id="m1", object_ids=[theirs]
            )
            push = appio_pb2.PushReplyRequest(reply=reply)
            assert refusal(lambda: stub.PushReply(push, metadata=token_1))[0] is (
                grpc.StatusCode.PERMISSION_DENIED
            )
            # Its own reply's bytes, pushed whole, are its to name (then on to the link,
            # unreachable here: UNAVAILABLE is the control).
            own = b"run 1's update"
            push_objects(stub, {object_id_of(own): own}, metadata=token_1)
            reply.object_ids[:] = [object_id_of(own)]
            push = appio_pb2.PushReplyRequest(reply=reply)
            assert refusal(lambda: stub.PushReply(push, metadata=token_1))[0] is (
                grpc.StatusCode.UNAVAILABLE
            )
            assert object_id_of(own) in run_1.objects
    finally:
        channel.close()
