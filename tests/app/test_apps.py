"""ServerApp and ClientApp: registration, dispatch, and what happens when a handler misbehaves."""

from __future__ import annotations

import time

import pytest

from flwrmtls.app import (
    ClientApp,
    ConfigRecord,
    Context,
    ErrorCode,
    Grid,
    Message,
    MessageType,
    Metadata,
    RecordDict,
    ServerApp,
)
from flwrmtls.testing.grid import InProcessGrid


def a_message(message_type: str) -> Message:
    metadata = Metadata(7, "m-1", 0, 1, "", "1", message_type, 60.0, time.time())
    return Message(RecordDict(), metadata=metadata)


def a_context() -> Context:
    return Context(run_id=7, node_id=1, node_config={}, run_config={})


def test_server_app_runs_its_main_with_grid_and_context() -> None:
    app = ServerApp()
    seen: list[tuple[Grid, Context]] = []

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        seen.append((grid, context))

    grid = InProcessGrid(ClientApp(), [{}], {"k": 1})
    context = grid.run_server_app(app)
    assert seen == [(grid, context)]
    assert context.node_id == 0
    assert context.run_config == {"k": 1}
    main(grid, context)  # the decorator returns the function itself
    assert len(seen) == 2


def test_server_app_without_main_says_so() -> None:
    grid = InProcessGrid(ClientApp(), [{}], {})
    with pytest.raises(RuntimeError, match=r"no main function: decorate one with @app.main\(\)"):
        ServerApp()(grid, a_context())


def test_server_app_takes_one_main() -> None:
    app = ServerApp()
    app.main()(lambda grid, context: None)
    with pytest.raises(ValueError, match="already has a main function"):
        app.main()(lambda grid, context: None)


def test_client_app_dispatches_by_message_type() -> None:
    app = ClientApp()
    calls: list[str] = []

    def handler(name: str):  # type: ignore[no-untyped-def]
        def handle(msg: Message, context: Context) -> Message:
            calls.append(name)
            return Message(RecordDict({"c": ConfigRecord({"by": name})}), reply_to=msg)

        return handle

    app.train()(handler("train"))
    app.evaluate()(handler("evaluate"))
    app.query()(handler("query"))
    assert app.message_types == ["train", "evaluate", "query"]
    for message_type in [MessageType.QUERY, MessageType.TRAIN, MessageType.EVALUATE]:
        reply = app.handle(a_message(message_type), a_context())
        assert reply.content.config_records["c"]["by"] == message_type
    assert calls == ["query", "train", "evaluate"]


def test_unknown_message_type_gets_an_error_reply() -> None:
    app = ClientApp()
    app.train()(lambda msg, context: Message(RecordDict(), reply_to=msg))
    reply = app.handle(a_message("evaluate"), a_context())
    assert reply.error is not None
    assert reply.error.code == ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert "does not handle 'evaluate'" in reply.error.reason
    assert "it handles: train" in reply.error.reason
    assert reply.metadata.reply_to_message_id == "m-1"


def test_handler_exceptions_propagate() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        raise KeyError("partition-id")

    with pytest.raises(KeyError, match="partition-id"):
        app.handle(a_message("train"), a_context())


def test_a_handler_must_return_a_reply_to_its_message() -> None:
    app = ClientApp()
    other = a_message("train")

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return "done"  # type: ignore[return-value]

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return other  # not a reply

    with pytest.raises(TypeError, match="returned str, not a Message"):
        app.handle(a_message("train"), a_context())
    with pytest.raises(ValueError, match="not a reply to the one it was given"):
        app.handle(a_message("evaluate"), a_context())


def test_one_handler_per_message_type() -> None:
    app = ClientApp()
    app.train()(lambda msg, context: msg)
    with pytest.raises(ValueError, match="already handles 'train'"):
        app.train()(lambda msg, context: msg)
    app.evaluate()(lambda msg, context: msg)  # the control: another type is fine
