"""FedAvg over M MiB of float32 in 4 arrays; prints its own monotonic stamps at the end.

The ``BENCH-SERVER`` line (JSON) holds: ``start`` (before ``FedAvg.start``), ``round_ends``
(FedAvg's log line after each round), ``waits`` and ``exchanges`` (around the Grid calls),
``finished``, and ``probe``: the first and last element of the first array before and after
the rounds, so the benchmark can check the arithmetic of the updates.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator

import numpy as np

from flwrmtls.app import ArrayRecord, Context, FedAvg, Grid, Message, RecordDict, Result, ServerApp

app = ServerApp()
_ROUND_LINE = re.compile(r"round \d+/\d+: ")


class RoundEnds(logging.Handler):
    """Stamps time.monotonic() when FedAvg logs its line for a round."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ends: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if _ROUND_LINE.match(record.getMessage()):  # "round 2/3: train ...", not warnings
            self.ends.append(time.monotonic())


class TimedGrid:
    """The run's Grid, stamping the calls FedAvg makes on it."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.waits: list[float] = []
        self.exchanges: list[list[float]] = []

    @property
    def run_id(self) -> int:
        return self._grid.run_id

    def get_node_ids(self) -> list[int]:
        return self._grid.get_node_ids()

    def wait_for_nodes(self, minimum: int, timeout: float) -> list[int]:
        self.waits.append(time.monotonic())
        return self._grid.wait_for_nodes(minimum, timeout)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return list(self.send_and_stream(messages, timeout=timeout))

    def send_and_stream(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """FedAvg folds each reply in as it comes: the exchange ends with the last one. Sent
        here, not in the generator: a generator's frame would hold ``messages``, and with
        them the model FedAvg lets go while it folds the replies in."""
        start = time.monotonic()
        return self._stamped(self._grid.send_and_stream(messages, timeout=timeout), start)

    def _stamped(self, replies: Iterator[Message], start: float) -> Iterator[Message]:
        yield from replies
        self.exchanges.append([start, time.monotonic()])


def _ends(array: np.ndarray) -> list[float]:
    return [float(array[0]), float(array[-1])]


def _first_model(model_mb: float, probe: list[float]) -> ArrayRecord:
    """``model_mb`` MiB of float32 in 4 arrays; the first array's ends go to ``probe``. The app
    keeps no name for it: FedAvg lets the model go once sent, so no copy stays for the run."""
    per_array = max(1, int(model_mb * (1 << 20) / 4 / 4))
    rng = np.random.default_rng()
    arrays = ArrayRecord({f"layer-{i}": rng.random(per_array, dtype=np.float32) for i in range(4)})
    probe.extend(_ends(arrays["layer-0"]))
    return arrays


@app.main()
def main(grid: Grid, context: Context) -> Result:
    entered = time.monotonic()
    config = context.run_config
    initial: list[float] = []
    nodes = int(config["min-nodes"])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
        wait_timeout=float(config["wait-timeout"]),
    )
    ends = RoundEnds()
    logging.getLogger("flwrmtls.app.strategy").addHandler(ends)
    timed = TimedGrid(grid)
    # Made before the clock starts, and handed over without a name that would keep it.
    handed = [_first_model(float(config["model-mb"]), initial)]
    start = time.monotonic()
    result = strategy.start(
        grid=timed, initial_arrays=handed.pop(), num_rounds=int(config["rounds"])
    )
    finished = time.monotonic()
    stamps = {
        "entered": entered,
        "start": start,
        "round_ends": ends.ends,
        "waits": timed.waits,
        "exchanges": timed.exchanges,
        "finished": finished,
        "model_bytes": sum(a.nbytes for a in result.arrays.values()),
        "probe": {"initial": initial, "final": _ends(result.arrays["layer-0"])},
    }
    print("BENCH-SERVER " + json.dumps(stamps), flush=True)
    return result
