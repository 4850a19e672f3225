"""Weighted averages folded in as replies arrive: one accumulator, never N replies.

A strategy feeds each reply to :class:`WeightedArrays` and :class:`WeightedMetrics` as it
arrives and then lets it go, so a ServerApp holds the model, one accumulator and the reply
being read, whatever the number of nodes. Rules:

* **Checked before it counts.** :meth:`WeightedArrays.add` refuses a reply, with the reason
  and changing nothing, when its arrays are not the model's (a name missing or unexpected,
  another shape), when an array holds NaN or an infinity, or when its weight is not a number
  in ``(0, MAX_WEIGHT]`` (zero examples say it trained on nothing; a claim past 2^53 examples
  is no count a float64 holds exactly). A refused reply never reaches the sum, so it cannot
  poison it. The checks read each array once, without a temporary of its size.
* **Sound arithmetic.** The accumulator is float64 (complex128 for complex arrays) whatever
  the arrays' dtype, each product ``weight * value`` is formed in it (never in float32), and
  the average is ``sum / total weight`` cast back to each model array's dtype, integers and
  bools rounded. Float64 arrays whose largest value times its weight could overflow are
  refused, so the sum stays finite.
* **No array-sized temporaries.** A reply is folded block by block (``BLOCK`` elements)
  through one small scratch buffer, reading the reply's bytes where they are (a view over
  the received object is never copied whole).
* **A mapped reply stays out of memory.** A reply whose arrays are views of a mapped file
  that nothing writes through (what a ServerApp reads from its link's store) has each
  stretch of pages let go of once it has been read, by the checks and by the fold
  (``madvise(MADV_DONTNEED)``; they stay in the page cache): the ServerApp's resident memory
  holds one array of the reply at a time while checking it and a block while folding it,
  not the whole reply.
* Scalar metrics are averaged with the same weights over the replies that have them (a plain
  mean when their weights add up to 0); the weight key itself is summed (an ``int`` when
  every reply's is one); list metrics are not aggregated.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flwrmtls.app.records import ArrayRecord, MetricRecord, NDArray

__all__ = ["BLOCK", "MAX_WEIGHT", "WeightedArrays", "WeightedMetrics", "weight_problem"]

MAX_WEIGHT = float(2**53)
"""The largest weight (e.g. ``num-examples``) a reply may claim."""

BLOCK = 1 << 16
"""Elements folded at a time: a 512 KiB float64 scratch buffer, whatever the model's size."""

_LARGEST_PRODUCT = float(np.finfo(np.float64).max) / 2**32
"""Above this, ``weight * value`` of a float64 array could overflow the sum of many replies."""


def weight_problem(key: str, weight: object) -> str:
    """Why ``weight`` cannot weigh a reply, or "" when it can."""
    if not isinstance(weight, int | float) or isinstance(weight, bool):
        return f"the reply's {key!r} must be a number, not {weight!r}"
    if not math.isfinite(weight) or weight <= 0 or weight > MAX_WEIGHT:
        return f"the reply's {key!r} must be a number above 0 and at most 2^53, not {weight!r}"
    return ""


def _accumulator_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return np.dtype(np.complex128 if dtype.kind == "c" else np.float64)


def _finite(array: NDArray) -> bool:
    """Whether every value is finite, reading the array once without an array-sized temporary.

    The float64 sum of finite float16/float32 values cannot overflow, and NaN or an infinity
    makes it non-finite: so a finite sum proves them all finite. Only when the sum is not
    finite (a bad value, or a float64 array whose sum overflowed) are the values checked one
    by one, block by block."""
    if array.dtype.kind == "c":
        return _finite(array.real) and _finite(array.imag)
    if array.dtype.kind != "f":
        return True
    flat = array.reshape(-1)
    if math.isfinite(float(np.add.reduce(flat, dtype=np.float64))):
        return True
    return all(
        bool(np.isfinite(flat[start : start + BLOCK]).all()) for start in range(0, flat.size, BLOCK)
    )


class _Pages:
    """The pages of a mapped file that an array is a view of, let go of once read.

    Only a mapping nothing can write through (its buffer is read-only: ``ACCESS_READ``, or
    ``PROT_READ``): each of its pages holds what the file holds, so letting one go loses
    nothing; it is read again from the page cache when touched again. A writable mapping
    (a copy-on-write one holds writes its file lacks), an array not mapped, one that is not
    C-contiguous, or a mapping closed meanwhile: nothing is done. Letting go is advice: where
    the kernel refuses it (memory locked with ``mlockall``, a hugetlbfs file), the pages
    simply stay.
    """

    def __init__(self, array: NDArray) -> None:
        self._mapping: mmap.mmap | None = None
        self._offset = 0
        self._size = array.nbytes
        self._advice = 0
        base: object = array
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, memoryview):
            base = base.obj
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if not isinstance(base, mmap.mmap) or advice is None or base.closed:
            return
        if not array.flags.c_contiguous:
            return
        with memoryview(base) as whole:
            if not whole.readonly:
                return
            start = int(np.frombuffer(whole, dtype=np.uint8).ctypes.data)
        self._mapping, self._advice = base, advice
        self._offset = int(array.ctypes.data) - start

    def read(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` of the array have been read (blocks in order): let go of the
        pages they are on. The page that holds ``end`` stays for the next block, unless
        ``end`` is the array's end; the first page may hold bytes before the array (a file's
        header, another array): letting it go costs at most a read of it again."""
        if self._mapping is None:
            return
        page = mmap.PAGESIZE
        first = (self._offset + start) // page * page
        stop = self._offset + end
        last = -(-stop // page) * page if end >= self._size else stop // page * page
        try:
            last = min(last, len(self._mapping))
            if last > first:
                self._mapping.madvise(self._advice, first, last - first)
        except (OSError, ValueError):  # refused, or the mapping was closed: keep the pages
            self._mapping = None


def _largest_magnitude(array: NDArray) -> float:
    """max |value| of a float array, without a temporary of its size."""
    if array.size == 0:
        return 0.0
    if array.dtype.kind == "c":
        return max(_largest_magnitude(array.real), _largest_magnitude(array.imag))
    return max(abs(float(array.max())), abs(float(array.min())))


def _value_problem(name: str, array: NDArray, weight: float) -> str:
    """Why the values of the reply's array ``name`` cannot join the average, or ""."""
    if not _finite(array):
        return f"the reply's array {name!r} holds NaN or infinite values"
    wide = array.dtype.itemsize >= 8 and array.dtype.kind in "fc"
    if wide and _largest_magnitude(array) * weight > _LARGEST_PRODUCT:
        return f"the reply's array {name!r} times its weight is too large to average"
    return ""


@dataclass(frozen=True)
class _Spec:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


class WeightedArrays:
    """The running weighted sum of the replies' arrays, shaped like ``model``: only its names,
    shapes and dtypes are kept, not its arrays (a caller may let the model go)."""

    def __init__(self, model: Mapping[str, NDArray]) -> None:
        self._model = {name: _Spec(array.shape, array.dtype) for name, array in model.items()}
        self._sums: dict[str, NDArray] | None = None
        self._scratch: dict[np.dtype[Any], NDArray] = {}
        self.total_weight = 0.0
        self.count = 0

    def problem(self, arrays: Mapping[str, NDArray], weight: float) -> str:
        """Why ``arrays`` (weighing ``weight``) cannot join the average, or "" when they can."""
        missing = [name for name in self._model if name not in arrays]
        unexpected = [name for name in arrays if name not in self._model]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(map(repr, missing[:5]))}")
            if unexpected:
                parts.append(f"unexpected {', '.join(map(repr, unexpected[:5]))}")
            return "the reply's arrays do not match the model: " + "; ".join(parts)
        for name, reference in self._model.items():
            array = arrays[name]
            if array.shape != reference.shape:
                return (
                    f"the reply's array {name!r} has shape {array.shape}, "
                    f"expected {reference.shape}"
                )
        for name in self._model:
            array = arrays[name]
            try:
                problem = _value_problem(name, array, weight)
            finally:  # read whole: its mapped pages go until the fold reads them again
                _Pages(array).read(0, array.nbytes)
            if problem:
                return problem
        return ""

    def add(self, arrays: Mapping[str, NDArray], weight: float) -> str:
        """Fold ``arrays`` in with ``weight``; returns why not (and changes nothing), or ""."""
        problem = self.problem(arrays, weight)
        if problem:
            return problem
        if self._sums is None:
            self._sums = {
                name: np.zeros(ref.shape, dtype=_accumulator_dtype(ref.dtype))
                for name, ref in self._model.items()
            }
        for name, total in self._sums.items():
            self._fold(total, arrays[name], weight)
        self.total_weight += weight
        self.count += 1
        return ""

    def _fold(self, total: NDArray, array: NDArray, weight: float) -> None:
        scratch = self._scratch.get(total.dtype)
        if scratch is None:
            scratch = self._scratch[total.dtype] = np.empty(BLOCK, dtype=total.dtype)
        sums, values = total.reshape(-1), np.asarray(array).reshape(-1)
        pages = _Pages(values)
        for start in range(0, sums.size, BLOCK):
            end = min(start + BLOCK, sums.size)
            product = scratch[: end - start]
            np.multiply(values[start:end], weight, out=product, dtype=total.dtype)
            np.add(sums[start:end], product, out=sums[start:end])
            pages.read(start * values.itemsize, end * values.itemsize)

    def result(self) -> ArrayRecord:
        """The weighted average, in the model's dtypes (ValueError when nothing was added)."""
        if self._sums is None or self.total_weight <= 0:
            raise ValueError("no reply was added")
        # The accumulator goes (one result per average), each array as soon as its average
        # is made: the ServerApp never holds the whole accumulator and the whole new model.
        sums, self._sums = self._sums, None
        averaged = ArrayRecord()
        for name in list(sums):
            total = sums.pop(name)
            total /= self.total_weight
            reference = self._model[name]
            if reference.dtype.kind in "biu":
                np.rint(total, out=total)
            averaged[name] = total.astype(reference.dtype)
        return averaged


class WeightedMetrics:
    """The replies' scalar metrics, averaged with their weights as they arrive."""

    def __init__(self, weight_key: str) -> None:
        self._key = weight_key
        self._weights: list[int | float] = []
        self._sums: dict[str, list[float]] = {}
        """key -> [weight sum, weighted value sum, value sum, count], in order of first use."""

    def add(self, metrics: Mapping[str, object], weight: float) -> None:
        claimed = metrics.get(self._key)
        self._weights.append(claimed if isinstance(claimed, int | float) else weight)
        for key, value in metrics.items():
            if key == self._key or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            sums = self._sums.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            sums[0] += weight
            sums[1] += weight * float(value)
            sums[2] += float(value)
            sums[3] += 1

    def result(self) -> MetricRecord:
        ints = all(isinstance(weight, int) for weight in self._weights)
        total: int | float = (
            sum(int(w) for w in self._weights) if ints else float(sum(self._weights))
        )
        averaged = MetricRecord({self._key: total})
        for key, (weights, weighted, plain, count) in self._sums.items():
            averaged[key] = weighted / weights if weights > 0 else plain / count
        return averaged
