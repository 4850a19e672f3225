"""Run results: the shape the app library writes is the only one the link keeps; every bad
result beside the good one it resembles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flwrmtls.app import ArrayRecord, MetricRecord
from flwrmtls.app.runresult import MAX_RESULT_BYTES, ResultError, check_result, encode_result
from flwrmtls.app.strategy.fedavg import Result

GOOD = '{"train_metrics": {"1": {"loss": 0.5, "acc": [1, 2.5]}}, "evaluate_metrics": {}}'


def test_a_strategy_result_is_encoded_and_accepted() -> None:
    result = Result(
        ArrayRecord({"w": np.zeros(2)}),
        train_metrics={1: MetricRecord({"loss": 0.25, "num-examples": 10})},
        evaluate_metrics={1: MetricRecord({"acc": [0.5, 1.0]})},
    )
    text = encode_result(result)
    assert json.loads(text) == {
        "evaluate_metrics": {"1": {"acc": [0.5, 1.0]}},
        "train_metrics": {"1": {"loss": 0.25, "num-examples": 10}},
    }
    assert check_result(text) == text  # already canonical


def test_non_finite_metrics_are_written_as_strings_and_accepted() -> None:
    result = Result(
        ArrayRecord({"w": np.zeros(2)}),
        train_metrics={2: MetricRecord({"loss": math.nan, "grad": [math.inf, -math.inf, 1.0]})},
    )
    text = encode_result(result)
    assert json.loads(text)["train_metrics"]["2"] == {
        "grad": ["Infinity", "-Infinity", 1.0],
        "loss": "NaN",
    }
    assert check_result(text) == text
    # The bare tokens Python's json would have written are refused (attack beside control).
    with pytest.raises(ResultError, match="bare NaN is not JSON"):
        check_result('{"train_metrics": {"1": {"loss": NaN}}}')
    with pytest.raises(ResultError, match="bare -Infinity is not JSON"):
        check_result('{"train_metrics": {"1": {"loss": -Infinity}}}')


def test_what_main_returns_besides_a_result_is_no_result() -> None:
    assert encode_result(None) == ""
    assert encode_result({"train_metrics": {}}) == ""  # not a dataclass
    assert encode_result(Result) == ""  # the class itself


def test_the_canonical_form_is_kept() -> None:
    assert check_result(GOOD) == (
        '{"evaluate_metrics":{},"train_metrics":{"1":{"acc":[1,2.5],"loss":0.5}}}'
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{bad", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"train_metrics": {"1": {"loss": 1e999}}}', "must be finite"),
        ('{"train_metrics": {"1": {"loss": "high"}}}', "one of NaN, Infinity"),
        ('{"train_metrics": {"1": {"loss": true}}}', "must be a number, not bool"),
        ('{"train_metrics": {"1": {"loss": {"nested": 1}}}}', "must be a number, not dict"),
        ('{"train_metrics": {"1": {"loss": [[1]]}}}', "must be a number, not list"),
        ('{"train_metrics": {"1": {"loss": 99999999999999999999}}}', "64-bit"),
        ('{"train_metrics": {"one": {"loss": 1}}}', "is not a round number"),
        ('{"train_metrics": {"\u00b2": {"loss": 1}}}', "is not a round number"),
        ('{"train_metrics": {"01": {"loss": 1}}}', "is not a round number"),
        ('{"train_metrics": {"1": {"": 1}}}', "metric name must have"),
        ('{"train_metrics": {"1": [1]}}', "must be an object of metrics"),
        ('{"train_metrics": [1]}', "must be an object of rounds"),
        ('{"owned": 1}', "unknown key 'owned'"),
        ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
        ('{"train_metrics": {"1": {"x": "' + "a" * MAX_RESULT_BYTES + '"}}}', "over"),
    ],
    ids=[
        "malformed", "empty", "array", "overflow-inf", "string", "bool", "object", "nested-list",
        "big-int", "round-name", "round-superscript", "round-leading-zero", "empty-name",
        "metrics-list", "rounds-list", "unknown-key", "deep", "huge",
    ],
)  # fmt: skip
def test_bad_results_are_refused(text: str, message: str) -> None:
    with pytest.raises(ResultError, match=message) as caught:
        check_result(text)
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 200
