"""Records check every value on set: what is refused, and the near miss that is accepted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flwrmtls.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict


@pytest.mark.parametrize(
    "dtype",
    ["f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?", "c8", ">f4", ">i8"],
)
def test_array_record_takes_numeric_and_bool_arrays(dtype: str) -> None:
    record = ArrayRecord({"a": np.zeros(3, dtype=dtype)})
    assert record["a"].dtype == np.dtype(dtype)


@pytest.mark.parametrize(
    "array",
    [
        np.array([{"x": 1}], dtype=object),
        np.array(["text"]),
        np.array([b"bytes"]),
        np.array(["2030-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]),
    ],
    ids=["object", "str", "bytes", "datetime", "structured"],
)
def test_array_record_refuses_other_dtypes(array: Any) -> None:
    record = ArrayRecord()
    with pytest.raises(TypeError, match=r"ArrayRecord\['a'\]: dtype .* is not numeric or bool"):
        record["a"] = array
    assert "a" not in record  # a refused value changes nothing
    record["a"] = np.zeros(2)  # the control: a numeric array under the same key is fine


@pytest.mark.parametrize("value", [[1.0, 2.0], 3.0, np.float32(1.0), None])
def test_array_record_needs_an_ndarray(value: Any) -> None:
    with pytest.raises(TypeError, match="a numpy array is needed"):
        ArrayRecord({"a": value})


def test_array_record_from_a_list_keeps_order_and_names_by_index() -> None:
    first, second = np.arange(3), np.ones((2, 2))
    record = ArrayRecord([first, second])
    assert list(record) == ["0", "1"]
    assert record.to_numpy_ndarrays()[1] is second  # stored as given, no copy
    with pytest.raises(TypeError, match="not one array"):
        ArrayRecord(np.arange(3))  # type: ignore[arg-type]


def test_array_record_keeps_insertion_order_and_compares_values() -> None:
    record = ArrayRecord()
    for name in ["z", "a", "m"]:
        record[name] = np.full(2, ord(name), dtype=np.int16)
    assert list(record) == ["z", "a", "m"]
    same = ArrayRecord({k: v.copy() for k, v in record.items()})
    assert record == same
    reordered = ArrayRecord({k: record[k] for k in ["a", "m", "z"]})
    assert record != reordered
    other_dtype = ArrayRecord({k: v.astype(np.int32) for k, v in record.items()})
    assert record != other_dtype
    changed = ArrayRecord({k: v + 1 for k, v in record.items()})
    assert record != changed


@pytest.mark.parametrize(
    "value", [0, -(2**63), 2**63 - 1, 0.5, float("inf"), [1, 2], [0.5, 1.5], []]
)
def test_metric_record_takes_numbers_and_lists_of_one_kind(value: Any) -> None:
    record = MetricRecord({"m": value})
    assert record["m"] == value
    assert type(record["m"]) is type(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "bool is not allowed"),
        ("0.5", "str is not allowed"),
        (b"x", "bytes is not allowed"),
        (None, "NoneType is not allowed"),
        ({"a": 1}, "dict is not allowed"),
        ([1, 2.5], "a list must hold one type"),
        ([[1]], "list is not allowed"),
        ([True], "bool is not allowed"),
        (1 + 2j, "complex is not allowed"),
    ],
)
def test_metric_record_refuses(value: Any, message: str) -> None:
    record = MetricRecord({"ok": 1})
    with pytest.raises(TypeError, match=message):
        record["m"] = value
    assert dict(record) == {"ok": 1}


def test_metric_record_integers_must_fit_64_bits() -> None:
    with pytest.raises(ValueError, match="signed 64-bit"):
        MetricRecord({"m": 2**63})
    with pytest.raises(ValueError, match="signed 64-bit"):
        MetricRecord({"m": [1, -(2**63) - 1]})


def test_numpy_scalars_and_tuples_become_python_values() -> None:
    metrics: dict[str, Any] = {"f": np.float32(0.5), "i": np.int64(3), "t": (1, 2)}
    record = MetricRecord(metrics)
    assert record["f"] == 0.5
    assert type(record["f"]) is float
    assert record["i"] == 3
    assert type(record["i"]) is int
    assert record["t"] == [1, 2]
    config: dict[str, Any] = {"b": np.bool_(True), "s": np.str_("x"), "ba": bytearray(b"y")}
    record_config = ConfigRecord(config)
    assert record_config["b"] is True
    assert type(record_config["s"]) is str
    assert record_config["ba"] == b"y"


def test_a_list_given_is_copied() -> None:
    values = [1, 2]
    record = MetricRecord({"m": values})
    values.append("sneaked in")  # type: ignore[arg-type]
    assert record["m"] == [1, 2]


@pytest.mark.parametrize(
    "value",
    [1, 0.5, True, "text", b"\x00\xff", [1, 2], [0.5], [True, False], ["a", "b"], [b"x"], []],
)
def test_config_record_takes_every_supported_type(value: Any) -> None:
    record = ConfigRecord({"c": value})
    assert record["c"] == value
    assert type(record["c"]) is type(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "NoneType is not allowed"),
        ({"a": 1}, "dict is not allowed"),
        ([1, "a"], "a list must hold one type"),
        ([True, 1], "a list must hold one type"),
        (1 + 2j, "complex is not allowed"),
        (np.zeros(2), "ndarray is not allowed"),
    ],
)
def test_config_record_refuses(value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        ConfigRecord({"c": value})


def test_records_are_built_from_mappings() -> None:
    with pytest.raises(TypeError, match="MetricRecord takes a mapping, not list"):
        MetricRecord([("m", 1)])  # type: ignore[arg-type]
    assert dict(MetricRecord({"m": 1})) == {"m": 1}


def test_keys_must_be_strings() -> None:
    with pytest.raises(TypeError, match="keys are str"):
        MetricRecord({1: 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys are str"):
        RecordDict({b"k": MetricRecord()})  # type: ignore[dict-item]


def test_record_dict_holds_records_only_and_gives_typed_views() -> None:
    arrays, metrics, config = ArrayRecord(), MetricRecord(), ConfigRecord()
    content = RecordDict({"config": config, "arrays": arrays, "metrics": metrics})
    assert list(content) == ["config", "arrays", "metrics"]
    assert content.array_records == {"arrays": arrays}
    assert content.metric_records == {"metrics": metrics}
    assert content.config_records == {"config": config}
    for value in [{"a": 1}, np.zeros(1), None, "text"]:
        with pytest.raises(TypeError, match="an ArrayRecord, MetricRecord or ConfigRecord"):
            content["bad"] = value  # type: ignore[assignment]
    assert "bad" not in content
    del content["config"]
    assert list(content) == ["arrays", "metrics"]
