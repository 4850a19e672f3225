"""Records: what a message carries. Ordered, mutable mappings that check every value on set.

Rules:

- Keys are ``str``. A value of the wrong type raises ``TypeError`` when it is set, naming the
  key and the type, so a bad value fails where it was written, not later on the wire.
- :class:`ArrayRecord` holds numpy arrays of a numeric or bool dtype (kinds ``b i u f c``);
  object, string, structured and datetime arrays are refused. Arrays are stored as given
  (no copy); arrays that arrive in a message are read-only views of the received bytes.
- :class:`MetricRecord` holds ``int``, ``float``, ``list[int]`` or ``list[float]``. ``bool`` is
  refused (use 0/1) so that a value comes back from the wire exactly as it went in.
- :class:`ConfigRecord` holds ``int``, ``float``, ``bool``, ``str``, ``bytes`` and lists of one
  of those. A list must not mix types; ``[]`` is allowed.
- numpy scalars (``np.float32(0.5)``, ``np.int64(3)``, ``np.bool_(True)``) are stored as the
  Python value; tuples are stored as lists; integers must fit in 64 bits (``ValueError``).
- :class:`RecordDict` maps names to records and keeps insertion order. Every record keeps
  insertion order in memory; on the wire only :class:`ArrayRecord` and :class:`RecordDict`
  keep it (metric and config keys come back sorted).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "ArrayRecord",
    "ConfigRecord",
    "ConfigValue",
    "MetricRecord",
    "MetricValue",
    "NDArray",
    "Record",
    "RecordDict",
]

NDArray: TypeAlias = npt.NDArray[Any]
MetricValue: TypeAlias = int | float | list[int] | list[float]
ConfigValue: TypeAlias = (
    int
    | float
    | bool
    | str
    | bytes
    | list[int]
    | list[float]
    | list[bool]
    | list[str]
    | list[bytes]
)

ARRAY_DTYPE_KINDS = "biufc"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

V = TypeVar("V")


class _Record(MutableMapping[str, V]):
    """An insertion-ordered dict whose values pass :meth:`_check` on the way in."""

    __slots__ = ("_data",)
    _kind = "record"

    def __init__(self, items: Mapping[str, V] | None = None) -> None:
        self._data: dict[str, V] = {}
        if items is not None:
            if not isinstance(items, Mapping):
                raise TypeError(f"{self._kind} takes a mapping, not {type(items).__name__}")
            for key, value in items.items():
                self[key] = value

    def _check(self, key: str, value: object) -> V:
        raise NotImplementedError

    def __setitem__(self, key: str, value: V) -> None:
        if not isinstance(key, str):
            raise TypeError(f"{self._kind} keys are str, not {type(key).__name__}: {key!r}")
        self._data[key] = self._check(key, value)

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


class ArrayRecord(_Record[NDArray]):
    """Named numpy arrays, in insertion order: a model's parameters, for example.

    ``ArrayRecord({"w": w, "b": b})`` names them; ``ArrayRecord([w, b])`` names them
    ``"0"``, ``"1"``, ... as Flower does. :meth:`to_numpy_ndarrays` gives the list back.
    """

    __slots__ = ()
    _kind = "ArrayRecord"

    def __init__(self, arrays: Mapping[str, NDArray] | Sequence[NDArray] | None = None) -> None:
        if arrays is not None and not isinstance(arrays, Mapping):
            if isinstance(arrays, np.ndarray):
                raise TypeError("ArrayRecord takes a mapping or a list of arrays, not one array")
            arrays = {str(index): array for index, array in enumerate(arrays)}
        super().__init__(arrays)

    def _check(self, key: str, value: object) -> NDArray:
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"ArrayRecord[{key!r}]: a numpy array is needed, not {type(value).__name__} "
                "(wrap it with np.asarray)"
            )
        if value.dtype.kind not in ARRAY_DTYPE_KINDS:
            raise TypeError(
                f"ArrayRecord[{key!r}]: dtype {value.dtype} is not numeric or bool "
                "(object, string, structured and datetime arrays cannot travel)"
            )
        return value

    def to_numpy_ndarrays(self) -> list[NDArray]:
        """The arrays, in order."""
        return list(self._data.values())

    def __eq__(self, other: object) -> bool:
        """Same names in the same order, and arrays of equal dtype, shape and values."""
        if not isinstance(other, ArrayRecord):
            return NotImplemented
        if list(self) != list(other):
            return False
        return all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            for a, b in zip(self.values(), other.values(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k!r}: {v.dtype.str}{list(v.shape)}" for k, v in self.items())
        return f"ArrayRecord({{{shown}}})"


def _plain_scalar(value: object) -> object:
    """numpy scalars become Python values; anything else is returned unchanged."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    return value


def _check_int(where: str, value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{where}: {value} does not fit in a signed 64-bit integer")
    return value


def _check_scalar(where: str, value: object, allowed: tuple[type, ...]) -> object:
    value = _plain_scalar(value)
    if isinstance(value, bool):  # before int: bool is an int subclass
        if bool in allowed:
            return value
        raise TypeError(f"{where}: bool is not allowed here (use 0 or 1)")
    if isinstance(value, int) and int in allowed:
        return _check_int(where, int(value))
    if isinstance(value, float) and float in allowed:
        return float(value)
    if isinstance(value, str) and str in allowed:
        return str(value)
    if isinstance(value, bytes | bytearray) and bytes in allowed:
        return bytes(value)
    names = ", ".join(t.__name__ for t in allowed)
    raise TypeError(f"{where}: {type(value).__name__} is not allowed (allowed: {names} or lists)")


def _check_value(kind: str, key: str, value: object, allowed: tuple[type, ...]) -> Any:
    where = f"{kind}[{key!r}]"
    if isinstance(value, list | tuple):
        items = [_check_scalar(f"{where}[{i}]", item, allowed) for i, item in enumerate(value)]
        types = {type(item) for item in items}
        if len(types) > 1:
            found = ", ".join(sorted(t.__name__ for t in types))
            raise TypeError(f"{where}: a list must hold one type, not a mix of {found}")
        return items
    return _check_scalar(where, value, allowed)


class MetricRecord(_Record[MetricValue]):
    """Named numbers a node or the server measured: ``{"loss": 0.3, "num-examples": 640}``."""

    __slots__ = ()
    _kind = "MetricRecord"

    def _check(self, key: str, value: object) -> MetricValue:
        checked: MetricValue = _check_value(self._kind, key, value, (int, float))
        return checked


class ConfigRecord(_Record[ConfigValue]):
    """Named settings: ``{"lr": 0.1, "server-round": 2, "optimizer": "sgd"}``."""

    __slots__ = ()
    _kind = "ConfigRecord"

    def _check(self, key: str, value: object) -> ConfigValue:
        checked: ConfigValue = _check_value(self._kind, key, value, (int, float, bool, str, bytes))
        return checked


Record: TypeAlias = ArrayRecord | MetricRecord | ConfigRecord


class RecordDict(_Record[Record]):
    """A message's content: named records, in insertion order.

    ``RecordDict({"arrays": ArrayRecord(...), "config": ConfigRecord({"lr": 0.1})})``.
    ``array_records``, ``metric_records`` and ``config_records`` are typed views (new dicts).
    """

    __slots__ = ()
    _kind = "RecordDict"

    def _check(self, key: str, value: object) -> Record:
        if not isinstance(value, ArrayRecord | MetricRecord | ConfigRecord):
            raise TypeError(
                f"RecordDict[{key!r}]: an ArrayRecord, MetricRecord or ConfigRecord is needed, "
                f"not {type(value).__name__}"
            )
        return value

    @property
    def array_records(self) -> dict[str, ArrayRecord]:
        return {k: v for k, v in self.items() if isinstance(v, ArrayRecord)}

    @property
    def metric_records(self) -> dict[str, MetricRecord]:
        return {k: v for k, v in self.items() if isinstance(v, MetricRecord)}

    @property
    def config_records(self) -> dict[str, ConfigRecord]:
        return {k: v for k, v in self.items() if isinstance(v, ConfigRecord)}
