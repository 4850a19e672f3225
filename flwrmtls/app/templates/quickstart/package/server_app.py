"""The ServerApp: runs on the link's side, drives the rounds with FedAvg."""

from __future__ import annotations

import logging

from flwrmtls.app import Context, FedAvg, Grid, Result, ServerApp

from . import task

app = ServerApp()
log = logging.getLogger(__name__)


@app.main()
def main(grid: Grid, context: Context) -> Result:
    """Train for num-server-rounds; the Result returned is kept as the run's result."""
    config = context.run_config
    num_rounds = int(config["num-server-rounds"])
    min_nodes = int(config["min-nodes"])
    strategy = FedAvg(
        fraction_train=float(config["fraction-train"]),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    result = strategy.start(grid=grid, initial_arrays=task.initial_arrays(), num_rounds=num_rounds)
    final = result.evaluate_metrics[num_rounds]
    log.info(
        "done: after %d rounds the model's test loss is %.3f and its accuracy %.3f (%s examples)",
        num_rounds,
        final["loss"],
        final["accuracy"],
        final["num-examples"],
    )
    return result
