"""``python -m flwrmtls.appio.clientapp_process``: one run's ClientApp, started by a node.

It reads its run token from standard input, fetches and verifies the app bundle over
ClientAppIo, then handles the run's messages one after another until the node says the run
ended. Array bytes go through the node's object directory when the node shares it (read
after ``PrepareObjects``, each verified against its SHA-256; replies written with the
store's temporary-file-and-rename), otherwise over ClientAppIo's object calls. A handler
that raises becomes an error reply carrying the traceback (the link logs it with this
node's identity); the process keeps serving the next message, as it does when the link
refuses a reply over a storage bound (the node sends an error reply in its place).

A message whose arrays cannot be had (over the node's ``--max-object-storage``, not
available from the link, or corrupt twice) gets an error reply (``LINK_ERROR``, the reason)
and the process goes on. An array read from the shared directory whose bytes do not match
its id is deleted there and asked for again (the node fetches it from the link), once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

import grpc

from flwrmtls.app.bundle import load_component
from flwrmtls.app.clientapp import ClientApp
from flwrmtls.app.context import Context
from flwrmtls.app.message import Error, ErrorCode, Message, message_from_proto, message_to_proto
from flwrmtls.appio.process import (
    configure_logging,
    open_channel,
    read_token,
    shared_store,
    token_metadata,
    unpack_app,
)
from flwrmtls.heap import limit_malloc_arenas, release_free_memory
from flwrmtls.keyvalues import values_from_proto
from flwrmtls.objects.store import CorruptObject, ObjectStore
from flwrmtls.objects.transfer import in_parallel, pull_objects, push_objects, store_shared
from flwrmtls.proto import appio_pb2, appio_pb2_grpc, common_pb2
from flwrmtls.wire.bounds import LONG_POLL_SECONDS
from flwrmtls.wire.refusals import Refusal, refusal_in

log = logging.getLogger("flwrmtls.clientapp")

_TRANSFER_TIMEOUT = 600.0


def _handle(client_app: ClientApp, message: Message, context: Context) -> Message:
    try:
        return client_app.handle(message, context)
    except Exception:
        log.error("handler for %r raised; replying with the error", message.metadata.message_type)
        return message.create_error_reply(
            Error(ErrorCode.CLIENT_APP_RAISED, traceback.format_exc())
        )


_UNAVAILABLE = (Refusal.NO_OBJECT, Refusal.OVER_QUOTA)
"""What the node answers for arrays it cannot provide: not available from the link, or over
its --max-object-storage. The message gets an error reply; any other failure ends the
process (the node is gone)."""


def _over_a_limit(error: grpc.RpcError) -> bool:
    """The node refused a reply as over its storage (``over-quota``), or grpc as over its
    message size (RESOURCE_EXHAUSTED from grpc itself, with no code): the next may fit."""
    refusal = refusal_in(error)
    return refusal is Refusal.OVER_QUOTA or (
        refusal is None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def _read_shared(
    stub: appio_pb2_grpc.ClientAppIoStub,
    shared: ObjectStore,
    object_ids: list[str],
    metadata: tuple[tuple[str, str], ...],
) -> dict[str, memoryview]:
    """Have the node fetch the objects, then read them from its directory, each checked
    against its SHA-256 here (the node wrote them unhashed: one hash on this host). One whose
    bytes do not match its id (or that went missing) is deleted and prepared again, once; a
    second mismatch raises :class:`CorruptObject`."""

    def prepare(ids: list[str]) -> None:
        stub.PrepareObjects(
            appio_pb2.PrepareObjectsRequest(object_ids=ids), metadata=metadata,
            timeout=_TRANSFER_TIMEOUT,
        )  # fmt: skip

    def read(object_id: str) -> memoryview:
        try:
            return shared.read_verified(object_id, discard=True)
        except (CorruptObject, FileNotFoundError) as error:
            log.warning("%s: asking the node to fetch it again", error)
            prepare([object_id])
            return shared.read_verified(object_id, discard=True)

    unique = list(dict.fromkeys(object_ids))
    if unique:
        prepare(unique)
    # Mapped, not copied; hashed several at a time (hashing releases the GIL).
    return dict(zip(unique, in_parallel(read, unique), strict=True))


def _undelivered(proto: common_pb2.Message, reason: str) -> Message:
    """An error reply to ``proto``, whose arrays could not be had."""
    bare = common_pb2.Message()
    bare.CopyFrom(proto)
    bare.ClearField("content")
    del bare.object_ids[:]
    return message_from_proto(bare, {}).create_error_reply(
        Error(ErrorCode.LINK_ERROR, f"node {proto.dst_node_id}: {reason}")
    )


def run(address: str) -> int:
    metadata = token_metadata(read_token())
    channel = open_channel(address)
    stub = appio_pb2_grpc.ClientAppIoStub(channel)
    info = stub.GetRun(appio_pb2.GetAppRunRequest(), metadata=metadata, timeout=30)
    unpacked = unpack_app(stub, info.bundle_hash, metadata)
    app_dir, app = unpacked.app_dir, unpacked.config
    shared = shared_store(info.object_directory)
    log.info(
        "arrays %s",
        "through the node's object directory" if shared else "over ClientAppIo's object calls",
    )
    try:
        client_app = load_component(app_dir, app.clientapp, ClientApp)
        context = Context(
            run_id=info.run_id, node_id=info.node_id,
            node_config=values_from_proto(info.node_config),
            run_config=values_from_proto(info.run_config),
        )  # fmt: skip
        while True:
            response = stub.PullMessage(
                appio_pb2.PullAppMessageRequest(wait_seconds=LONG_POLL_SECONDS),
                metadata=metadata, timeout=LONG_POLL_SECONDS + 30,
            )  # fmt: skip
            if response.run_ended:
                return 0
            if not response.HasField("message"):
                continue
            object_ids = list(response.message.object_ids)
            try:
                objects = (
                    _read_shared(stub, shared, object_ids, metadata)
                    if shared is not None
                    else pull_objects(
                        stub, object_ids, metadata=metadata, timeout=_TRANSFER_TIMEOUT
                    )
                )
            except grpc.RpcError as error:
                if refusal_in(error) not in _UNAVAILABLE:
                    raise
                log.error("the message's arrays are unavailable: %s", error.details())
                reply = _undelivered(response.message, error.details() or "arrays unavailable")
            except ValueError as error:  # corrupt twice, or bad bytes over ClientAppIo
                log.error("the message's arrays cannot be read: %s", error)
                reply = _undelivered(response.message, str(error))
            else:
                message = message_from_proto(response.message, objects)
                del objects
                reply = _handle(client_app, message, context)
                del message
            proto, reply_objects = message_to_proto(reply)
            del reply  # its arrays live on in reply_objects until they are stored
            if shared is not None:  # the node pushes them on
                store_shared(shared, reply_objects)
            else:
                push_objects(stub, reply_objects, metadata=metadata, timeout=_TRANSFER_TIMEOUT)
            del reply_objects  # nothing of this message is kept while the next one is read,
            release_free_memory()  # in this process's heap either
            try:
                stub.PushReply(
                    appio_pb2.PushReplyRequest(reply=proto), metadata=metadata,
                    timeout=_TRANSFER_TIMEOUT,
                )  # fmt: skip
            except grpc.RpcError as error:
                if not _over_a_limit(error):
                    raise
                log.error("reply refused: %s", error.details())  # the next message may fit
    finally:
        unpacked.remove()
        channel.close()


def main() -> None:
    limit_malloc_arenas()  # see flwrmtls.heap
    configure_logging()
    parser = argparse.ArgumentParser(prog="flwrmtls.appio.clientapp_process")
    parser.add_argument("--clientappio-api-address", required=True)
    args = parser.parse_args()
    try:
        code = run(args.clientappio_api_address)
    except grpc.RpcError as error:
        print(f"ClientApp lost its node: {error.code().name}: {error.details()}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
