"""The weighted average folded in reply by reply (flwrmtls.app.strategy.aggregate).

The streamed average equals the batch one computed in float64 (and beats a float32 batch on
an adversarial case); a reply it cannot use (NaN, infinity, another shape, a weight of 0,
below 0 or past 2^53) is refused with the reason and leaves the sum as it was; folding a
reply allocates nothing of the model's size; a reply mapped from a file (what a ServerApp
reads from its link's store) is not kept resident, while a private mapping's own writes are
never let go of; FedAvg holds one reply at a time.
"""

from __future__ import annotations

import gc
import math
import mmap
import tracemalloc
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flwrmtls.app import ArrayRecord, ClientApp, Context, FedAvg, Message, MetricRecord, RecordDict
from flwrmtls.app.records import NDArray
from flwrmtls.app.strategy.aggregate import (
    MAX_WEIGHT,
    WeightedArrays,
    WeightedMetrics,
    weight_problem,
)
from flwrmtls.testing.grid import InProcessGrid


def model() -> dict[str, NDArray]:
    return {
        "w": np.zeros((3, 4), dtype=np.float32),
        "b": np.zeros(5, dtype=np.float64),
        "count": np.zeros(2, dtype=np.int64),
        "z": np.zeros(3, dtype=np.complex64),
    }


def reply_arrays(rng: np.random.Generator) -> dict[str, NDArray]:
    return {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(5),
        "count": rng.integers(0, 100, 2),
        "z": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
    }


def batch_average(
    replies: Sequence[Mapping[str, NDArray]], weights: Sequence[float]
) -> dict[str, NDArray]:
    """The batch average over every reply at once, float64 throughout, cast back."""
    averaged = {}
    for name, reference in model().items():
        wide = np.complex128 if reference.dtype.kind == "c" else np.float64
        total = sum(
            (np.asarray(r[name], dtype=wide) * w for r, w in zip(replies, weights, strict=True)),
            start=np.zeros(reference.shape, dtype=wide),
        )
        mean = total / sum(weights)
        if reference.dtype.kind in "biu":
            mean = np.rint(mean)
        averaged[name] = mean.astype(reference.dtype)
    return averaged


def test_the_streamed_average_equals_the_batch_average() -> None:
    rng = np.random.default_rng(7)
    replies = [reply_arrays(rng) for _ in range(9)]
    weights = [float(w) for w in rng.integers(1, 1000, len(replies))]
    average = WeightedArrays(model())
    for arrays, weight in zip(replies, weights, strict=True):
        assert average.add(arrays, weight) == ""
    streamed = average.result()
    expected = batch_average(replies, weights)
    assert list(streamed) == list(expected)
    for name, array in streamed.items():
        assert array.dtype == expected[name].dtype
        np.testing.assert_array_equal(array, expected[name])
    assert average.count == 9
    assert average.total_weight == sum(weights)


def test_the_streamed_average_beats_a_float32_batch_on_an_adversarial_case() -> None:
    """1e8, a thousand 1.0s and -1e8: float32 loses every 1.0 next to 1e8 (its spacing there
    is 8). The exact mean is 1000/1002."""
    values = [1e8] + [1.0] * 1000 + [-1e8]
    replies = [{"w": np.full(4, v, dtype=np.float32)} for v in values]
    average = WeightedArrays({"w": np.zeros(4, dtype=np.float32)})
    for arrays in replies:
        assert average.add(arrays, 1.0) == ""
    streamed = average.result()["w"]
    float32_batch = np.zeros(4, dtype=np.float32)
    for arrays in replies:
        float32_batch += arrays["w"] * np.float32(1.0)
    float32_batch /= np.float32(len(replies))
    exact = math.fsum(values) / len(values)
    assert streamed.dtype == np.float32
    np.testing.assert_array_equal(streamed, np.float32(exact))  # exact to float32's precision
    assert abs(float(float32_batch[0]) - exact) > 0.9  # the float32 batch lost the 1.0s


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda a: a["w"].__setitem__((1, 2), np.nan), "array 'w' holds NaN or infinite"),
        (lambda a: a["b"].__setitem__(0, -np.inf), "array 'b' holds NaN or infinite"),
        (lambda a: a["z"].__setitem__(2, complex(0, np.inf)), "array 'z' holds NaN or infinite"),
        (lambda a: a.__setitem__("w", np.zeros((4, 3), np.float32)), "has shape (4, 3)"),
        (lambda a: a.pop("count"), "missing 'count'"),
        (lambda a: a.__setitem__("extra", np.zeros(1)), "unexpected 'extra'"),
        (lambda a: a.__setitem__("b", np.full(5, 1e300)), "too large to average"),
    ],
)
def test_a_reply_it_cannot_use_is_refused_and_the_sum_is_unchanged(spoil: Any, reason: str) -> None:
    rng = np.random.default_rng(3)
    good = [reply_arrays(rng) for _ in range(2)]
    bad = reply_arrays(rng)
    spoil(bad)
    average = WeightedArrays(model())
    assert average.add(good[0], 2.0) == ""
    problem = average.add(bad, 5.0)
    assert reason in problem
    assert (average.count, average.total_weight) == (1, 2.0)
    assert average.add(good[1], 3.0) == ""  # control: a good reply after it still counts
    for name, array in average.result().items():
        np.testing.assert_array_equal(array, batch_average(good, [2.0, 3.0])[name])


@pytest.mark.parametrize(
    "weight", [0, 0.0, -3, -0.5, MAX_WEIGHT * 2, 2**60, math.nan, math.inf, True, "10", None]
)
def test_a_weight_that_is_no_count_of_examples_is_refused(weight: object) -> None:
    problem = weight_problem("num-examples", weight)
    assert problem.startswith("the reply's 'num-examples' must be a number")
    assert repr(weight) in problem


@pytest.mark.parametrize("weight", [1, 0.25, 100, MAX_WEIGHT, 2**53])
def test_a_count_of_examples_weighs_a_reply(weight: float) -> None:
    assert weight_problem("num-examples", weight) == ""  # control


def test_folding_a_reply_allocates_nothing_of_the_models_size() -> None:
    size = 1 << 21  # 8 MiB of float32; its float64 accumulator is 16 MiB
    reference = {"w": np.zeros(size, dtype=np.float32)}
    replies = [{"w": np.full(size, float(k), dtype=np.float32)} for k in range(3)]
    average = WeightedArrays(reference)
    assert average.add(replies[0], 1.0) == ""  # allocates the accumulator
    tracemalloc.start()
    try:
        for arrays in replies[1:]:
            assert average.add(arrays, 2.0) == ""
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"folding allocated {peak} bytes at its peak"
    np.testing.assert_array_equal(average.result()["w"], np.full(size, 1.2, dtype=np.float32))


def test_the_average_lets_each_accumulator_array_go_as_its_result_is_made() -> None:
    """The result never sits beside the whole accumulator: while the average of one array is
    made, the sums of those already made are gone. 4 arrays of 2 MiB float32: the whole new
    model is 8 MiB, the accumulator 16 MiB."""
    size = 1 << 19
    names = [f"layer-{i}" for i in range(4)]
    reference = {name: np.zeros(size, dtype=np.float32) for name in names}
    average = WeightedArrays(reference)
    tracemalloc.start()  # before the accumulator is made, so that its release counts
    try:
        for k in range(2):
            replied = {name: np.full(size, float(k), np.float32) for name in names}
            assert average.add(replied, 1) == ""
        del replied
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = average.result()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_array = size * 4
    # At most one array's result above the accumulator it came from (was: the whole model).
    assert peak - before < 1.5 * one_array, f"{peak - before} bytes above the start"
    assert before - after > 3 * one_array  # the accumulator (16 MiB) went, the result (8) came
    for name in names:
        np.testing.assert_array_equal(result[name], np.full(size, 0.5, dtype=np.float32))


def test_metrics_are_averaged_with_the_weights_and_the_weight_summed() -> None:
    metrics = WeightedMetrics("num-examples")
    metrics.add({"num-examples": 10, "loss": 1.0, "history": [1.0]}, 10.0)
    metrics.add({"num-examples": 30, "loss": 3.0, "accuracy": 0.5}, 30.0)
    averaged = metrics.result()
    assert averaged["num-examples"] == 40
    assert averaged["loss"] == pytest.approx(2.5)
    assert averaged["accuracy"] == pytest.approx(0.5)
    assert "history" not in averaged


# -- FedAvg holds one reply at a time ---------------------------------------------------------


class WatchedGrid(InProcessGrid):
    """Records, as it yields each reply, how many replies it yielded are still alive (their
    arrays: a reply's arrays live as long as anything holds the reply)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alive_at_yield: list[int] = []
        self.model_alive_at_yield: list[bool] = []
        """Per reply: whether the model sent with its message was still held by anyone."""

    def send_and_stream(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        sent = list(messages)
        model = weakref.ref(sent[0].content.array_records["arrays"]["w"])
        replies = super().send_and_stream(sent, timeout=timeout)
        del sent
        return self._watch(replies, model)

    def _watch(self, replies: Iterator[Message], model: weakref.ref[NDArray]) -> Iterator[Message]:
        yielded: list[weakref.ref[NDArray]] = []
        for reply in replies:
            gc.collect()
            self.alive_at_yield.append(sum(ref() is not None for ref in yielded))
            self.model_alive_at_yield.append(model() is not None)
            yielded.append(weakref.ref(reply.content.array_records["arrays"]["w"]))
            yield reply
            del reply


def adder() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        step = float(context.node_id)
        new = ArrayRecord({name: array + step for name, array in arrays.items()})
        metrics = MetricRecord({"num-examples": 1})
        return msg.create_reply(RecordDict({"arrays": new, "metrics": metrics}))

    return app


def test_fedavg_folds_each_reply_in_and_lets_it_go() -> None:
    grid = WatchedGrid(adder(), [{}] * 6, {})
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=6, min_available_nodes=6)
    result = strategy.start(grid, ArrayRecord({"w": np.zeros(8, dtype=np.float32)}), 2)
    np.testing.assert_array_equal(result.arrays["w"], np.full(8, 7.0, dtype=np.float32))
    assert grid.alive_at_yield == [0] * 12  # no earlier reply was alive when the next came
    # FedAvg holds no model while it folds, the first one included: the caller did not keep it.
    assert grid.model_alive_at_yield == [False] * 12


def test_a_first_model_the_caller_keeps_is_the_callers_to_hold() -> None:
    grid = WatchedGrid(adder(), [{}] * 3, {})
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3)
    first = ArrayRecord({"w": np.zeros(8, dtype=np.float32)})
    result = strategy.start(grid, first, 2)
    np.testing.assert_array_equal(result.arrays["w"], np.full(8, 4.0, dtype=np.float32))
    assert grid.model_alive_at_yield == [True] * 3 + [False] * 3
    np.testing.assert_array_equal(first["w"], np.zeros(8, dtype=np.float32))  # never written


def fixed_reply_app() -> ClientApp:
    """Replies ``value`` in every element, weighing ``n`` (both from the node config)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        value, n = context.node_config["value"], context.node_config["n"]
        assert isinstance(value, float)
        assert isinstance(n, int)
        arrays = ArrayRecord({"w": np.full(4, value, dtype=np.float32)})
        metrics = MetricRecord({"num-examples": n})
        return msg.create_reply(RecordDict({"arrays": arrays, "metrics": metrics}))

    return app


def test_fedavg_weighs_float32_replies_in_float64() -> None:
    """Weights near 2^30 times float32 values: a product formed in float32 (numpy's choice for
    a float32 array times a Python float) is off by an ulp or more. The average is exact to
    float32's precision."""
    nodes: list[dict[str, Any]] = [
        {"value": 446.37457275390625, "n": 335548069},
        {"value": -536.9531860351562, "n": 691679594},
        {"value": 581.1181030273438, "n": 590594013},
    ]
    grid = InProcessGrid(fixed_reply_app(), nodes, {})
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3)
    result = strategy.start(grid, ArrayRecord({"w": np.zeros(4, dtype=np.float32)}), 1)
    exact = sum(Fraction(node["value"]) * node["n"] for node in nodes) / sum(
        node["n"] for node in nodes
    )
    np.testing.assert_array_equal(result.arrays["w"], np.float32(float(exact)))


HEADER = 128
"""Bytes before the first array in a mapped reply (as a ``.npy`` file has): no array starts
on a page boundary, so a page straddling two blocks must not be skipped."""


def _resident_kib(mapping: mmap.mmap) -> int:
    """The resident pages of ``mapping`` (its own entry in /proc/self/smaps), in KiB: file
    pages or tmpfs (shmem) pages alike, and nothing another mapping or thread touched."""
    with memoryview(mapping) as view:
        address = int(np.frombuffer(view, dtype=np.uint8).ctypes.data)
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low <= address < high
        elif inside and head == "Rss:":
            return int(line.split()[1])
    raise AssertionError("the mapping is not in /proc/self/smaps")


def _mapped_reply(path: Path, values: Sequence[NDArray]) -> tuple[mmap.mmap, dict[str, NDArray]]:
    """The arrays written one after another to ``path`` after a header, then read back as
    views of a read-only mapping of it, as a ServerApp decodes a reply from its link's store."""
    path.write_bytes(b"h" * HEADER + b"".join(value.tobytes() for value in values))
    with path.open("rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    view, arrays, offset = memoryview(mapping), {}, HEADER
    for index, value in enumerate(values):
        arrays[f"a{index}"] = np.frombuffer(view[offset : offset + value.nbytes], value.dtype)
        offset += value.nbytes
    return mapping, arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_mapped_reply_is_checked_and_folded_without_being_kept_resident(
    tmp_path: Path, dtype: type[np.floating[Any]]
) -> None:
    """float64 arrays are read twice by the checks (finite, then their largest magnitude):
    their pages go after both."""
    size = (64 << 20) // np.dtype(dtype).itemsize // 4  # a 64 MiB reply in 4 arrays
    values = [np.full(size, float(k + 1), dtype=dtype) for k in range(4)]
    average = WeightedArrays({f"a{k}": values[k] for k in range(4)})
    mapping, arrays = _mapped_reply(tmp_path / "reply", values)
    assert average.problem(arrays, 2.0) == ""
    assert _resident_kib(mapping) < 256, "the checks kept pages of the reply"
    assert average.add(arrays, 2.0) == ""
    assert _resident_kib(mapping) < 256, "the checks or the fold kept pages of the reply"
    result = average.result()
    for k in range(4):
        np.testing.assert_array_equal(result[f"a{k}"], values[k])
    # Control: reading the same mapping whole keeps it resident (the measure sees it).
    assert sum(float(array.sum()) for array in arrays.values()) == 10.0 * size
    assert _resident_kib(mapping) > 60 << 10
    del arrays
    mapping.close()


def test_a_mapping_whose_pages_the_kernel_will_not_let_go_is_folded_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Letting pages go is advice: refused (memory locked, a hugetlbfs file; here an advice
    the kernel does not know), the reply is checked and folded as any other."""
    size = 1 << 20
    values = [np.full(size, 3.0, dtype=np.float32)]
    mapping, arrays = _mapped_reply(tmp_path / "reply", values)
    monkeypatch.setattr(mmap, "MADV_DONTNEED", 0x7FFF, raising=False)
    with pytest.raises(OSError, match="Invalid argument"):  # as for locked memory (EINVAL)
        mapping.madvise(mmap.MADV_DONTNEED, 0, mmap.PAGESIZE)
    average = WeightedArrays({"a0": values[0]})
    assert average.add(arrays, 1.0) == ""
    np.testing.assert_array_equal(average.result()["a0"], values[0])
    del arrays
    mapping.close()


def test_a_private_mappings_own_writes_are_folded_and_never_let_go(tmp_path: Path) -> None:
    """A copy-on-write mapping (``np.memmap`` mode "c", ``np.load(mmap_mode="c")``) holds
    writes its file lacks: letting its pages go would fold the file's values instead."""
    size = 1 << 20
    path = tmp_path / "reply.f32"
    np.full(size, 1.0, dtype=np.float32).tofile(path)
    written = np.memmap(path, dtype=np.float32, mode="c")
    written[:] = 7.0  # in this process only
    read_only = written.view()
    read_only.flags.writeable = False  # a read-only view of it: still its private pages
    for reply in (written, read_only):
        average = WeightedArrays({"w": np.zeros(size, dtype=np.float32)})
        assert average.add({"w": reply}, 1.0) == ""
        np.testing.assert_array_equal(average.result()["w"], np.full(size, 7.0, np.float32))
        np.testing.assert_array_equal(reply, np.full(size, 7.0, np.float32))
