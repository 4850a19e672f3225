"""The ClientApp: what each node does with the ServerApp's messages."""

from __future__ import annotations

from flwrmtls.app import ClientApp, Context, Message, MetricRecord, RecordDict

from . import task

app = ClientApp()


def _server_round(msg: Message) -> int:
    value = msg.content.config_records["config"]["server-round"]
    return value if isinstance(value, int) else 0


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's data; send back the new model and metrics."""
    data = task.load_partition(context.node_config)
    arrays = task.train(
        msg.content.array_records["arrays"],
        data.x_train,
        data.y_train,
        epochs=int(context.run_config["local-epochs"]),
        lr=float(context.run_config["lr"]),
        batch_size=int(context.run_config["batch-size"]),
        seed=_server_round(msg) * 1_000_003 + context.node_id,
    )
    loss, accuracy = task.evaluate(arrays, data.x_train, data.y_train)
    metrics = MetricRecord({"num-examples": len(data.y_train), "loss": loss, "accuracy": accuracy})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Measure the received model on this node's test split."""
    data = task.load_partition(context.node_config)
    loss, accuracy = task.evaluate(msg.content.array_records["arrays"], data.x_test, data.y_test)
    metrics = MetricRecord({"num-examples": len(data.y_test), "loss": loss, "accuracy": accuracy})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
