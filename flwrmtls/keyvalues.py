"""Parse ``'key=value key2="text"'`` flags (``--node-config``, ``--run-config``).

Values are TOML values when they parse as one (``3``, ``0.5``, ``true``, ``"text"``) and plain
strings otherwise, as Flower reads them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping

from flwrmtls.errors import InputError
from flwrmtls.proto import records_pb2

__all__ = ["Value", "parse_key_values", "values_from_proto", "values_to_proto"]

Value = bool | int | float | str


def _value(text: str) -> Value:
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(parsed, bool | int | float | str):
        return parsed
    return text


_PAIR = re.compile(r"""\s*([^\s=]+)=("(?:[^"\\]|\\.)*"|'[^']*'|[^\s"']*)(?=\s|$)""")


def parse_key_values(text: str, flag: str) -> dict[str, Value]:
    """``'a=1 b="x y"'`` -> ``{"a": 1, "b": "x y"}``; quoted values stay strings."""
    result: dict[str, Value] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = _PAIR.match(text, position)
        if match is None:
            word = text[position:].split()[0]
            raise InputError(f"{flag}: {word!r} is not key=value (quote values with spaces)")
        key, raw = match.group(1), match.group(2)
        result[key] = _value(raw)
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    return result


def values_to_proto(values: Mapping[str, Value]) -> records_pb2.ConfigRecord:
    """Run or node config values as a ConfigRecord proto (how they travel)."""
    record = records_pb2.ConfigRecord()
    for key, value in values.items():
        slot = record.data[key]
        if isinstance(value, bool):
            slot.bool = value
        elif isinstance(value, int):
            slot.sint64 = value
        elif isinstance(value, float):
            slot.double = value
        else:
            slot.string = str(value)
    return record


def values_from_proto(record: records_pb2.ConfigRecord) -> dict[str, Value]:
    result: dict[str, Value] = {}
    for key, slot in record.data.items():
        kind = slot.WhichOneof("value")
        if kind in ("bool", "sint64", "double", "string"):
            result[key] = getattr(slot, kind)
    return result
