"""FedAvg: federated averaging, round by round, over a :class:`Grid`.

Each round:

1. **Train.** Wait (up to ``wait_timeout``) for at least ``max(min_available_nodes,
   min_train_nodes)`` nodes; sample ``ceil(fraction_train * online)`` of them, but at least
   ``min_train_nodes``. Each gets ``{arrayrecord_key: arrays, configrecord_key:
   train_config + {"server-round": r}}`` as a ``train`` message, group id ``str(r)``.
2. A train reply must carry ``{arrayrecord_key: ArrayRecord, "metrics": MetricRecord}``: the
   same array names and shapes as sent, finite values, and under ``weighted_by_key`` a number
   above 0 and at most 2^53. A reply that does not, and every error reply, is logged
   (warning: node id, certificate identity, reason) and left out. Fewer than
   ``min_train_nodes`` good replies end the run with :class:`StrategyError`, naming why the
   others failed.
3. **Aggregate as replies arrive** (:mod:`flwrmtls.app.strategy.aggregate`): each good reply
   is folded into a running weighted sum as soon as the Grid yields it
   (``send_and_stream``) and then dropped, so the ServerApp holds the model and one
   accumulator, never N replies. Arrays: the average weighted by ``weighted_by_key``,
   accumulated in float64 (complex128 for complex arrays) and cast back to each array's
   dtype (integers rounded). Metrics: each scalar metric averaged with the same weights over
   the replies that have it; ``weighted_by_key`` itself is summed; list metrics are not
   aggregated.
4. **Evaluate** the new arrays likewise with ``evaluate`` messages and
   ``fraction_evaluate`` / ``min_evaluate_nodes`` (replies need only the metrics); skipped
   when ``fraction_evaluate`` is 0.
5. Log one INFO line: ``round 2/3: train loss 0.812 (2 nodes) | evaluate loss 0.701,
   accuracy 0.843 (2 nodes)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from flwrmtls.app.grid import Grid, NotEnoughNodes
from flwrmtls.app.message import Message, MessageType
from flwrmtls.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwrmtls.app.strategy.aggregate import WeightedArrays, WeightedMetrics, weight_problem

__all__ = ["METRICS_KEY", "FedAvg", "Result", "StrategyError"]

log = logging.getLogger("flwrmtls.app.strategy")

METRICS_KEY = "metrics"
"""Where a reply's MetricRecord lives in its content."""

Phase = Literal["train", "evaluate"]


class StrategyError(Exception):
    """Why the strategy had to end the run, in one sentence."""


@dataclass
class Result:
    arrays: ArrayRecord
    """The arrays after the last round."""
    train_metrics: dict[int, MetricRecord] = field(default_factory=dict)
    """Aggregated train metrics, by round."""
    evaluate_metrics: dict[int, MetricRecord] = field(default_factory=dict)
    """Aggregated evaluate metrics, by round (empty when evaluation is off)."""


@dataclass
class _Sent:
    """One phase of one round, sent: what its replies are folded into, and the replies."""

    phase: Phase
    server_round: int
    count: int
    """Messages sent."""
    destinations: dict[str, int]
    """Message id -> node id, for those not answered yet."""
    folded: _Folded
    replies: Iterator[Message]


@dataclass
class _Folded:
    """One phase of one round, folded in reply by reply."""

    arrays: WeightedArrays | None
    """The running weighted sum of the train replies' arrays (None: evaluate)."""
    metrics: WeightedMetrics
    count: int = 0
    """Good replies folded in."""


def _node_label(node_id: int, identity: str) -> str:
    return f"node {node_id} ({identity})" if identity else f"node {node_id}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def _format_metrics(metrics: MetricRecord, skip: str) -> str:
    """``"loss 0.812, accuracy 0.843"``: scalars only, loss first, then in record order."""
    keys = sorted(metrics, key=lambda key: key != "loss")
    shown = [
        f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
        for key in keys
        if key != skip and isinstance(value := metrics[key], int | float)
    ]
    return ", ".join(shown)


class FedAvg:
    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        wait_timeout: float = 60.0,
        round_timeout: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not 0.0 < fraction_train <= 1.0:
            raise ValueError(f"fraction_train must be in (0, 1], not {fraction_train}")
        if not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError(f"fraction_evaluate must be in [0, 1], not {fraction_evaluate}")
        for name, value in (
            ("min_train_nodes", min_train_nodes),
            ("min_evaluate_nodes", min_evaluate_nodes),
            ("min_available_nodes", min_available_nodes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if wait_timeout < 0 or (round_timeout is not None and round_timeout <= 0):
            raise ValueError("wait_timeout must be >= 0 and round_timeout > 0 (or None)")
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self.min_available_nodes = min_available_nodes
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.wait_timeout = wait_timeout
        self.round_timeout = round_timeout
        self._rng = rng if rng is not None else np.random.default_rng()

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds from ``initial_arrays``; :class:`StrategyError` ends it."""
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be at least 1, not {num_rounds}")
        if not isinstance(initial_arrays, ArrayRecord) or not initial_arrays:
            raise ValueError("initial_arrays must be a non-empty ArrayRecord")
        log.info(
            "FedAvg: %d rounds; train on >= %d nodes (fraction %g), evaluate %s",
            num_rounds,
            self.min_train_nodes,
            self.fraction_train,
            f"on >= {self.min_evaluate_nodes} nodes (fraction {self.fraction_evaluate:g})"
            if self.fraction_evaluate > 0
            else "off",
        )
        result = Result(arrays=initial_arrays)
        # The model lives in ``result`` from here, and goes once sent: a caller that handed it
        # over without keeping it has no copy of it held during the rounds.
        del initial_arrays
        for server_round in range(1, num_rounds + 1):
            sent = self._send(grid, "train", server_round, result.arrays, train_config)
            # Sent: the Grid has stored the arrays. FedAvg lets its model go while the replies
            # are folded in (a caller that kept the first one holds that one), so the ServerApp
            # holds the accumulator and a reply, and the new model only once the old is gone.
            result.arrays = ArrayRecord()
            trained = self._gather(sent)
            assert trained.arrays is not None
            result.arrays = trained.arrays.result()
            result.train_metrics[server_round] = trained.metrics.result()
            line = f"round {server_round}/{num_rounds}: train " + self._describe(
                result.train_metrics[server_round], trained.count
            )
            if self.fraction_evaluate > 0:
                evaluated = self._gather(
                    self._send(grid, "evaluate", server_round, result.arrays, evaluate_config)
                )
                result.evaluate_metrics[server_round] = evaluated.metrics.result()
                line += " | evaluate " + self._describe(
                    result.evaluate_metrics[server_round], evaluated.count
                )
            log.info(line)
        return result

    # -- one phase of one round ------------------------------------------------------------

    def _sample(self, grid: Grid, phase: Phase, server_round: int) -> list[int]:
        fraction, minimum = (
            (self.fraction_train, self.min_train_nodes)
            if phase == "train"
            else (self.fraction_evaluate, self.min_evaluate_nodes)
        )
        try:
            online = grid.wait_for_nodes(max(self.min_available_nodes, minimum), self.wait_timeout)
        except NotEnoughNodes as error:
            raise StrategyError(
                f"round {server_round}: not enough nodes to {phase}: {error}"
            ) from error
        size = min(len(online), max(minimum, math.ceil(fraction * len(online))))
        chosen = self._rng.choice(np.array(sorted(online)), size=size, replace=False)
        return sorted(int(node_id) for node_id in chosen)

    def _send(
        self,
        grid: Grid,
        phase: Phase,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord | None,
    ) -> _Sent:
        """Send the phase's messages; what comes back is :meth:`_gather`'s. Nothing returned
        here holds ``arrays``."""
        message_type = MessageType.TRAIN if phase == "train" else MessageType.EVALUATE
        messages: list[Message] = []
        for node_id in self._sample(grid, phase, server_round):
            round_config = ConfigRecord(config or {})
            round_config["server-round"] = server_round
            content = RecordDict(
                {self.arrayrecord_key: arrays, self.configrecord_key: round_config}
            )
            messages.append(
                grid.create_message(content, message_type, node_id, group_id=str(server_round))
            )
        destinations = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        folded = _Folded(
            WeightedArrays(arrays) if phase == "train" else None,
            WeightedMetrics(self.weighted_by_key),
        )
        replies = grid.send_and_stream(messages, timeout=self.round_timeout)
        return _Sent(phase, server_round, len(messages), destinations, folded, replies)

    def _gather(self, sent: _Sent) -> _Folded:
        """Fold each good reply in as it arrives, then let it go: the arrays' running weighted
        sum (train) and the metrics'."""
        phase, server_round, destinations, folded = (
            sent.phase, sent.server_round, sent.destinations, sent.folded
        )  # fmt: skip
        minimum = self.min_train_nodes if phase == "train" else self.min_evaluate_nodes
        failures: dict[int, str] = {}
        for reply in sent.replies:
            self._take(reply, phase, server_round, destinations, folded, failures)
            del reply  # folded in (or refused): the next one never meets it here
        for node_id in destinations.values():
            failures[node_id] = f"node {node_id}: no reply"
            log.warning("round %d %s: node %d sent no reply", server_round, phase, node_id)
        if folded.count < minimum:
            raise StrategyError(
                f"round {server_round}: {folded.count} of {sent.count} nodes replied to "
                f"{phase} and at least {minimum} are needed; "
                + "; ".join(failures[n] for n in sorted(failures))
            )
        return folded

    def _take(
        self,
        reply: Message,
        phase: Phase,
        server_round: int,
        destinations: dict[str, int],
        folded: _Folded,
        failures: dict[int, str],
    ) -> None:
        """Fold one reply in, or note (and log) why it fails."""
        reply_to = reply.metadata.reply_to_message_id
        if reply_to not in destinations:
            log.warning("round %d %s: ignoring an unexpected reply", server_round, phase)
            return
        node_id = destinations.pop(reply_to)
        label = _node_label(node_id, reply.metadata.src_identity)
        if reply.error is not None:
            reason = f"{reply.error.code_name}: {_last_line(reply.error.reason)}"
            log.warning(
                "round %d %s: %s failed: %s: %s",
                server_round,
                phase,
                label,
                reply.error.code_name,
                reply.error.reason,
            )
        else:
            reason = self._fold(reply, folded)
            if not reason:
                return
            log.warning("round %d %s: %s: %s", server_round, phase, label, reason)
        failures[node_id] = f"{label}: {reason}"

    def _fold(self, reply: Message, folded: _Folded) -> str:
        """Fold the reply's useful parts in; returns why it cannot be used, or ""."""
        metrics = reply.content.metric_records.get(METRICS_KEY)
        if metrics is None:
            return f"the reply has no MetricRecord {METRICS_KEY!r}"
        weight = metrics.get(self.weighted_by_key)
        if weight is None:
            return f"the reply's metrics have no {self.weighted_by_key!r} (its weight)"
        problem = weight_problem(self.weighted_by_key, weight)
        if problem:
            return problem
        assert isinstance(weight, int | float)
        if folded.arrays is not None:
            arrays = reply.content.array_records.get(self.arrayrecord_key)
            if arrays is None:
                return f"the reply has no ArrayRecord {self.arrayrecord_key!r}"
            problem = folded.arrays.add(arrays, float(weight))
            if problem:
                return problem
        folded.metrics.add(metrics, float(weight))
        folded.count += 1
        return ""

    def _describe(self, metrics: MetricRecord, nodes: int) -> str:
        text = _format_metrics(metrics, skip=self.weighted_by_key)
        counted = f"{nodes} node{'s' if nodes != 1 else ''}"
        return f"{text} ({counted})" if text else f"({counted})"
