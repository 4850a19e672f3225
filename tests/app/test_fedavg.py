"""FedAvg over InProcessGrid: the template app learns; averaging is exact; failures are handled."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flwrmtls.app import (
    ArrayRecord,
    ClientApp,
    ConfigRecord,
    Context,
    FedAvg,
    Message,
    MetricRecord,
    RecordDict,
    ServerApp,
    StrategyError,
)
from flwrmtls.app.bundle import load_component, read_app_config
from flwrmtls.app.templates import write_app
from flwrmtls.testing.grid import InProcessGrid, NodeFailure

STRATEGY_LOG = "flwrmtls.app.strategy"


# -- the template app -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    written = write_app(tmp_path_factory.mktemp("apps") / "fedavg-quickstart")
    config = read_app_config(written.app_dir)
    path, modules = list(sys.path), set(sys.modules)
    yield {
        "server": load_component(written.app_dir, config.serverapp, ServerApp),
        "client": load_component(written.app_dir, config.clientapp, ClientApp),
        "task": sys.modules[f"{written.package}.task"],
        "run_config": config.default_config,
    }
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def partitions(count: int) -> list[dict[str, Any]]:
    return [{"partition-id": i, "num-partitions": count} for i in range(count)]


def scalar(metrics: MetricRecord, key: str) -> float:
    value = metrics[key]
    assert isinstance(value, int | float)
    return float(value)


def test_the_template_learns_over_three_rounds(template_app: dict[str, Any]) -> None:
    grid = InProcessGrid(template_app["client"], partitions(2), template_app["run_config"])
    result = FedAvg(rng=np.random.default_rng(0)).start(
        grid, template_app["task"].initial_arrays(), num_rounds=3
    )
    for metrics in (result.train_metrics, result.evaluate_metrics):
        assert list(metrics) == [1, 2, 3]
        losses = [scalar(metrics[r], "loss") for r in (1, 2, 3)]
        accuracies = [scalar(metrics[r], "accuracy") for r in (1, 2, 3)]
        assert losses[0] > losses[1] > losses[2], losses
        assert accuracies[0] < accuracies[1] < accuracies[2], accuracies
    evaluated = result.evaluate_metrics
    assert scalar(evaluated[1], "loss") - scalar(evaluated[3], "loss") > 0.15
    assert scalar(evaluated[3], "accuracy") > 0.9
    assert result.evaluate_metrics[3]["num-examples"] == 360  # 20% of 1797, over two nodes
    assert result.train_metrics[3]["num-examples"] == 1437
    assert result.arrays["weights"].shape == (64, 10)
    assert result.arrays["weights"].dtype == np.float32


def test_the_template_server_app_runs_and_reports(
    template_app: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    grid = InProcessGrid(template_app["client"], partitions(2), template_app["run_config"])
    with caplog.at_level(logging.INFO):
        grid.run_server_app(template_app["server"])
    rounds = [r.getMessage() for r in caplog.records if r.name == STRATEGY_LOG]
    assert [line.split(":")[0] for line in rounds[1:]] == ["round 1/3", "round 2/3", "round 3/3"]
    final = caplog.records[-1].getMessage()
    assert re.match(r"done: after 3 rounds the model's test loss is 0\.\d+ .*accuracy 0\.9", final)
    assert len([m for m in grid.delivered if m.metadata.message_type == "train"]) == 6


def test_the_template_explains_a_missing_partition(template_app: dict[str, Any]) -> None:
    grid = InProcessGrid(template_app["client"], [{}, {}], template_app["run_config"])
    with pytest.raises(StrategyError, match="needs the node config keys partition-id"):
        FedAvg().start(grid, template_app["task"].initial_arrays(), num_rounds=1)


# -- exact averaging on a hand-made app -----------------------------------------------------


def adder_app() -> ClientApp:
    """Adds its node config ``value`` to the arrays; weight ``n``; loss ``value / 2``.

    ``bad`` in the node config breaks the reply in one way."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        value, n = float(context.node_config["value"]), int(context.node_config["n"])
        received = msg.content.array_records["arrays"]
        arrays = ArrayRecord(
            {
                "w": (received["w"] + value).astype(np.float32),
                "count": received["count"] + int(value),
            }
        )
        metrics = MetricRecord({"num-examples": n, "loss": value / 2, "tags": [1, 2]})
        bad = context.node_config.get("bad")
        if bad == "shape":
            arrays["w"] = np.zeros(4, dtype=np.float32)
        elif bad == "names":
            arrays = ArrayRecord({"w": arrays["w"], "other": arrays["count"]})
        elif bad == "nan":
            arrays["w"] = np.full(3, np.nan, dtype=np.float32)
        elif bad == "no-weight":
            del metrics["num-examples"]
        elif bad == "negative-weight":
            metrics["num-examples"] = -n
        elif bad == "zero-weight":
            metrics["num-examples"] = 0
        elif bad == "huge-weight":
            metrics["num-examples"] = 2**62
        elif bad == "inf":
            arrays["w"] = np.array([1.0, np.inf, 2.0], dtype=np.float32)
        elif bad == "no-arrays":
            return Message(RecordDict({"metrics": metrics}), reply_to=msg)
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        value, n = float(context.node_config["value"]), int(context.node_config["n"])
        if context.node_config.get("bad") == "evaluate":
            raise ValueError("cannot evaluate here")
        metrics = MetricRecord({"num-examples": n, "accuracy": value / 10})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def start_arrays() -> ArrayRecord:
    return ArrayRecord(
        {"w": np.array([0.0, 1.0, 2.0], dtype=np.float32), "count": np.array([0], dtype=np.int32)}
    )


def test_weighted_averaging_is_exact() -> None:
    grid = InProcessGrid(adder_app(), [{"value": 1.0, "n": 1}, {"value": 5.0, "n": 3}], {})
    strategy = FedAvg(rng=np.random.default_rng(0))
    result = strategy.start(
        grid, start_arrays(), num_rounds=2, train_config=ConfigRecord({"lr": 0.5})
    )
    # round 1: [1, 2, 3] weighted 1 and [5, 6, 7] weighted 3 -> [4, 5, 6]; round 2 -> [8, 9, 10]
    np.testing.assert_array_equal(result.arrays["w"], [8.0, 9.0, 10.0])
    assert result.arrays["w"].dtype == np.float32
    # counts: round 1: (1 * 1 + 5 * 3) / 4 = 4; round 2: (5 + 9 * 3) / 4 = 8
    np.testing.assert_array_equal(result.arrays["count"], [8])
    assert result.arrays["count"].dtype == np.int32
    assert dict(result.train_metrics[1]) == {"num-examples": 4, "loss": (0.5 + 2.5 * 3) / 4}
    assert dict(result.evaluate_metrics[2]) == {"num-examples": 4, "accuracy": (0.1 + 1.5) / 4}
    train_messages = [m for m in grid.delivered if m.metadata.message_type == "train"]
    assert [m.metadata.group_id for m in train_messages] == ["1", "1", "2", "2"]
    for message in train_messages:
        config = message.content.config_records["config"]
        assert dict(config) == {"lr": 0.5, "server-round": int(message.metadata.group_id)}
    evaluate_round_1 = [
        m
        for m in grid.delivered
        if m.metadata.message_type == "evaluate" and m.metadata.group_id == "1"
    ]
    for message in evaluate_round_1:  # evaluation sees the round's new arrays
        np.testing.assert_array_equal(message.content.array_records["arrays"]["w"], [4, 5, 6])


def test_integer_arrays_are_rounded_back() -> None:
    grid = InProcessGrid(adder_app(), [{"value": 1.0, "n": 1}, {"value": 2.0, "n": 2}], {})
    result = FedAvg(fraction_evaluate=0.0).start(grid, start_arrays(), num_rounds=1)
    np.testing.assert_array_equal(result.arrays["count"], [2])  # (1 + 4) / 3 = 1.67 -> 2
    np.testing.assert_allclose(result.arrays["w"], [5 / 3, 8 / 3, 11 / 3], rtol=1e-6)


def test_one_log_line_per_round(caplog: pytest.LogCaptureFixture) -> None:
    grid = InProcessGrid(adder_app(), [{"value": 1.0, "n": 1}, {"value": 5.0, "n": 3}], {})
    with caplog.at_level(logging.INFO, logger=STRATEGY_LOG):
        FedAvg().start(grid, start_arrays(), num_rounds=2)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines[1:] == [
        "round 1/2: train loss 2.000 (2 nodes) | evaluate accuracy 0.400 (2 nodes)",
        "round 2/2: train loss 2.000 (2 nodes) | evaluate accuracy 0.400 (2 nodes)",
    ]


def test_evaluation_can_be_switched_off() -> None:
    grid = InProcessGrid(adder_app(), [{"value": 1.0, "n": 1}, {"value": 5.0, "n": 3}], {})
    result = FedAvg(fraction_evaluate=0.0).start(grid, start_arrays(), num_rounds=2)
    assert result.evaluate_metrics == {}
    assert {m.metadata.message_type for m in grid.delivered} == {"train"}


# -- sampling -------------------------------------------------------------------------------


def five_nodes() -> InProcessGrid:
    return InProcessGrid(adder_app(), [{"value": 1.0, "n": 1}] * 5, {})


def trained_nodes(grid: InProcessGrid) -> list[list[int]]:
    by_round: dict[str, list[int]] = {}
    for message in grid.delivered:
        if message.metadata.message_type == "train":
            by_round.setdefault(message.metadata.group_id, []).append(message.metadata.dst_node_id)
    return [sorted(nodes) for _, nodes in sorted(by_round.items())]


@pytest.mark.parametrize(
    ("fraction", "minimum", "expected"), [(0.4, 2, 2), (0.1, 3, 3), (0.5, 1, 3), (1.0, 2, 5)]
)
def test_sample_size(fraction: float, minimum: int, expected: int) -> None:
    grid = five_nodes()
    FedAvg(fraction_train=fraction, min_train_nodes=minimum, fraction_evaluate=0.0).start(
        grid, start_arrays(), num_rounds=2
    )
    assert [len(nodes) for nodes in trained_nodes(grid)] == [expected, expected]


def test_sampling_follows_the_given_generator() -> None:
    picks = []
    for seed in (11, 11, 12):
        grid = five_nodes()
        strategy = FedAvg(
            fraction_train=0.4, fraction_evaluate=0.0, rng=np.random.default_rng(seed)
        )
        strategy.start(grid, start_arrays(), num_rounds=4)
        picks.append(trained_nodes(grid))
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


# -- failures -------------------------------------------------------------------------------


def test_a_raising_node_is_dropped_when_enough_others_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = InProcessGrid(
        adder_app(),
        [{"value": 1.0, "n": 1}, {"value": 100.0, "n": 1}, {"value": 5.0, "n": 3}],
        {},
        failing={2: NodeFailure.RAISES},
    )
    with caplog.at_level(logging.WARNING, logger=STRATEGY_LOG):
        result = FedAvg(fraction_evaluate=0.0).start(grid, start_arrays(), num_rounds=1)
    np.testing.assert_array_equal(result.arrays["w"], [4.0, 5.0, 6.0])  # nodes 1 and 3 only
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("round 1 train: node 2 (CN=node-2) failed: CLIENT_APP_RAISED")
    assert "RuntimeError: injected failure on node 2" in warning


def test_too_few_replies_end_the_run_with_the_reasons() -> None:
    grid = InProcessGrid(
        adder_app(),
        [{"value": 1.0, "n": 1}, {"value": 5.0, "n": 3}],
        {},
        failing={2: NodeFailure.RAISES},
    )
    with pytest.raises(StrategyError) as caught:
        FedAvg().start(grid, start_arrays(), num_rounds=3)
    assert str(caught.value) == (
        "round 1: 1 of 2 nodes replied to train and at least 2 are needed; "
        "node 2 (CN=node-2): CLIENT_APP_RAISED: RuntimeError: injected failure on node 2"
    )


def test_offline_nodes_are_named_in_the_reason() -> None:
    grid = InProcessGrid(
        adder_app(),
        [{"value": 1.0, "n": 1}] * 3,
        {},
        failing={1: NodeFailure.OFFLINE, 3: NodeFailure.TIMEOUT},
    )
    with pytest.raises(StrategyError, match="1 of 3 nodes replied to train") as caught:
        FedAvg().start(grid, start_arrays(), num_rounds=1)
    assert "node 1 (CN=node-1): NODE_UNAVAILABLE: node 1 is offline" in str(caught.value)
    assert "node 3 (CN=node-3): TIMEOUT" in str(caught.value)


def test_a_failing_evaluation_also_ends_the_run() -> None:
    grid = InProcessGrid(
        adder_app(), [{"value": 1.0, "n": 1}, {"value": 5.0, "n": 3, "bad": "evaluate"}], {}
    )
    with pytest.raises(StrategyError, match=r"1 of 2 nodes replied to evaluate.*cannot evaluate"):
        FedAvg().start(grid, start_arrays(), num_rounds=1)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("shape", "the reply's array 'w' has shape (4,), expected (3,)"),
        ("names", "the reply's arrays do not match the model: missing 'count'; unexpected 'other'"),
        ("nan", "the reply's array 'w' holds NaN or infinite values"),
        ("no-weight", "the reply's metrics have no 'num-examples' (its weight)"),
        ("inf", "the reply's array 'w' holds NaN or infinite values"),
        (
            "negative-weight",
            "the reply's 'num-examples' must be a number above 0 and at most 2^53, not -3",
        ),
        (
            "zero-weight",
            "the reply's 'num-examples' must be a number above 0 and at most 2^53, not 0",
        ),
        (
            "huge-weight",
            f"the reply's 'num-examples' must be a number above 0 and at most 2^53, not {2**62}",
        ),
        ("no-arrays", "the reply has no ArrayRecord 'arrays'"),
    ],
)
def test_a_reply_with_the_wrong_arrays_is_a_failed_reply(
    bad: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    nodes: list[dict[str, Any]] = [{"value": 1.0, "n": 1}, {"value": 5.0, "n": 3, "bad": bad}]
    grid = InProcessGrid(adder_app(), nodes, {})
    strategy = FedAvg(min_train_nodes=1, fraction_evaluate=0.0)
    with caplog.at_level(logging.WARNING, logger=STRATEGY_LOG):
        result = strategy.start(grid, start_arrays(), num_rounds=1)
    np.testing.assert_array_equal(result.arrays["w"], [1.0, 2.0, 3.0])  # node 1's alone
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == f"round 1 train: node 2 (CN=node-2): {reason}"
    with pytest.raises(StrategyError, match=re.escape(reason)):
        FedAvg(fraction_evaluate=0.0).start(InProcessGrid(adder_app(), nodes, {}), start_arrays())


def test_not_enough_nodes_ends_the_run() -> None:
    grid = InProcessGrid(adder_app(), [{"value": 1.0, "n": 1}] * 2, {})
    with pytest.raises(StrategyError) as caught:
        FedAvg(min_available_nodes=3, wait_timeout=5).start(grid, start_arrays())
    assert str(caught.value) == (
        "round 1: not enough nodes to train: wanted 3 nodes, 2 online after waiting 5s"
    )
    with pytest.raises(StrategyError, match="wanted 3 nodes"):  # min_train_nodes counts too
        FedAvg(min_train_nodes=3, min_available_nodes=1).start(grid, start_arrays())


def test_replies_that_trained_on_nothing_end_the_run() -> None:
    grid = InProcessGrid(adder_app(), [{"value": 1.0, "n": 0}] * 2, {})
    with pytest.raises(StrategyError, match=r"0 of 2 nodes replied to train.*above 0"):
        FedAvg().start(grid, start_arrays())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction_train": 0.0}, "fraction_train"),
        ({"fraction_train": 1.5}, "fraction_train"),
        ({"fraction_evaluate": -0.1}, "fraction_evaluate"),
        ({"min_train_nodes": 0}, "min_train_nodes"),
        ({"min_available_nodes": 0}, "min_available_nodes"),
        ({"round_timeout": 0}, "round_timeout"),
    ],
)
def test_settings_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FedAvg(**kwargs)


def test_start_arguments_are_checked() -> None:
    grid = InProcessGrid(adder_app(), [{"value": 1.0, "n": 1}] * 2, {})
    with pytest.raises(ValueError, match="num_rounds"):
        FedAvg().start(grid, start_arrays(), num_rounds=0)
    with pytest.raises(ValueError, match="non-empty ArrayRecord"):
        FedAvg().start(grid, ArrayRecord())
    assert grid.delivered == []


def test_result_types(tmp_path: Path) -> None:
    grid = InProcessGrid(adder_app(), [{"value": 1.0, "n": 1}] * 2, {})
    result = FedAvg().start(grid, start_arrays(), num_rounds=1)
    assert isinstance(result.arrays, ArrayRecord)
    assert "tags" not in result.train_metrics[1]  # list metrics are not aggregated
