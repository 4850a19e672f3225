"""FedAvg over M MiB of float32 in 4 arrays; prints its own monotonic stamps at the end.

Flower's ``Strategy.start`` logs ``[ROUND r/N]`` when round r begins and ``Strategy execution
finished`` at the end; a logging handler stamps both. The ``BENCH-SERVER`` line (JSON) holds
``start`` (before ``strategy.start``), ``round_starts``, ``strategy_finished``, ``finished``
and ``probe`` (first and last element of the first array before and after the rounds).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class RoundLines(logging.Handler):
    """Stamps time.monotonic() when Strategy.start logs "[ROUND r/N]" and "...finished"."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rounds: list[float] = []
        self.finished: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("[ROUND "):
            self.rounds.append(time.monotonic())
        elif message.startswith("Strategy execution finished"):
            self.finished.append(time.monotonic())


def _ends(array: Any) -> list[float]:
    return [float(array[0]), float(array[-1])]


def _first_model(model_mb: float, probe: list[float]) -> ArrayRecord:
    """``model_mb`` MiB of float32 in 4 arrays; the first array's ends go to ``probe``. As the
    flwrmtls app does, the app keeps no name for it once handed to the strategy."""
    per_array = max(1, int(model_mb * (1 << 20) / 4 / 4))
    rng = np.random.default_rng()
    layers = [rng.random(per_array, dtype=np.float32) for _ in range(4)]
    probe.extend(_ends(layers[0]))
    return ArrayRecord(layers)


@app.main()
def main(grid: Grid, context: Context) -> None:
    entered = time.monotonic()
    config = context.run_config
    initial: list[float] = []
    nodes = int(config["min-nodes"])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    lines = RoundLines()
    logging.getLogger("flwr").addHandler(lines)
    # Made before the clock starts, and handed over without a name that would keep it.
    handed = [_first_model(float(config["model-mb"]), initial)]
    start = time.monotonic()
    result = strategy.start(
        grid=grid, initial_arrays=handed.pop(), num_rounds=int(config["rounds"])
    )
    finished = time.monotonic()
    final = result.arrays.to_numpy_ndarrays()
    stamps = {
        "entered": entered,
        "start": start,
        "round_starts": lines.rounds,
        "strategy_finished": lines.finished,
        "finished": finished,
        "model_bytes": sum(int(a.nbytes) for a in final),
        "probe": {"initial": initial, "final": _ends(final[0])},
    }
    print("BENCH-SERVER " + json.dumps(stamps), flush=True)
