"""Parse ``'key=value key2="text"'`` flags (``--node-config``, ``--run-config``).

Values are TOML values when they parse as one (``3``, ``0.5``, ``true``, ``"text"``) and plain
strings otherwise, as Flower reads them.
"""

from __future__ import annotations

import shlex
import tomllib

from flwrmtls.errors import InputError

__all__ = ["Value", "parse_key_values"]

Value = bool | int | float | str


def _value(text: str) -> Value:
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(parsed, bool | int | float | str):
        return parsed
    return text


def parse_key_values(text: str, flag: str) -> dict[str, Value]:
    try:
        words = shlex.split(text, posix=False)
    except ValueError as error:
        raise InputError(f"{flag}: cannot parse {text!r}: {error}") from None
    result: dict[str, Value] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep or not key:
            raise InputError(f"{flag}: {word!r} is not key=value")
        result[key] = _value(raw)
    return result
