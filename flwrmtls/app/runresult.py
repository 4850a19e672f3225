"""A run's result: what a ServerApp's main returned, as the JSON the link keeps and
``flwrmtls ls --format json`` shows. The ServerApp process writes it (:func:`encode_result`),
the link accepts only this shape (:func:`check_result`), and the CLI reads stored results
through the same check, so one bad result cannot break listings for anyone.

Rules:

- The shape is fixed::

      {"train_metrics":    {"<round>": {"<metric>": VALUE, ...}, ...},
       "evaluate_metrics": {"<round>": {"<metric>": VALUE, ...}, ...}}

  Both keys are optional and no other key is allowed; a round is a decimal integer
  0-1,000,000,000; a metric name is a non-empty string of at most 256 characters; a VALUE is
  an integer within 64 bits, a finite number, or a list of up to 100,000 of these.
- JSON has no NaN or infinity: the app library writes a non-finite metric as the string
  ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (what Python's json would have written bare),
  and those strings are accepted as VALUEs. The bare tokens are refused.
- At most :data:`MAX_RESULT_BYTES` (UTF-8). The shape bounds the nesting (four levels), and
  nesting beyond that is refused while parsing.
- The link keeps the canonical form (sorted keys, no spaces): what it stores always parses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

__all__ = ["MAX_RESULT_BYTES", "ResultError", "check_result", "encode_result"]

MAX_RESULT_BYTES = 1 << 20
"""1 MiB: ten metrics a round for thousands of rounds."""
_SECTIONS = ("train_metrics", "evaluate_metrics")
_ROUND = re.compile(r"(0|[1-9][0-9]{0,8}|1000000000)")
_MAX_NAME = 256
_MAX_LIST = 100_000
_INT64 = (-(2**63), 2**63 - 1)
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_NAMES = {math.inf: "Infinity", -math.inf: "-Infinity"}


class ResultError(ValueError):
    """A run result the link does not keep; the message says why, on one line."""


def _refuse_constant(token: str) -> None:
    raise ResultError(f"bare {token} is not JSON: write non-finite metrics as the string {token!r}")


def _check_number(where: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ResultError(f"{where}: must be a number, not {type(value).__name__}")
    if isinstance(value, str):
        if value not in _NON_FINITE:
            raise ResultError(f"{where}: a string value must be one of NaN, Infinity, -Infinity")
    elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise ResultError(f"{where}: integer out of the signed 64-bit range")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ResultError(f"{where}: a number must be finite")  # 1e999 parses as inf


def _check_metrics(where: str, metrics: object) -> None:
    if not isinstance(metrics, dict):
        raise ResultError(f"{where}: must be an object of metrics")
    for name, value in metrics.items():
        if not name or len(name) > _MAX_NAME:
            raise ResultError(f"{where}: a metric name must have 1 to {_MAX_NAME} characters")
        if isinstance(value, list):
            if len(value) > _MAX_LIST:
                raise ResultError(f"{where}.{name}: a list holds at most {_MAX_LIST} values")
            for index, item in enumerate(value):
                _check_number(f"{where}.{name}[{index}]", item)
        else:
            _check_number(f"{where}.{name}", value)


def check_result(text: str) -> str:
    """The canonical form of a run result, or ``ResultError`` saying what is wrong."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RESULT_BYTES:
        raise ResultError(f"the result is over {MAX_RESULT_BYTES} bytes")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ResultError("the result nests too deeply") from None
    except ResultError:
        raise
    except ValueError as error:
        raise ResultError(f"the result is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ResultError("the result must be a JSON object")
    for section, rounds in data.items():
        if section not in _SECTIONS:
            raise ResultError(f"unknown key {section!r} (known: {', '.join(_SECTIONS)})")
        if not isinstance(rounds, dict):
            raise ResultError(f"{section}: must be an object of rounds")
        for server_round, metrics in rounds.items():
            if not _ROUND.fullmatch(server_round):
                raise ResultError(f"{section}: round {server_round[:20]!r} is not a round number")
            _check_metrics(f"{section}.{server_round}", metrics)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _encode_value(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _NAMES[value]
    if isinstance(value, list | tuple):
        return [_encode_value(item) for item in value]
    return value


def encode_result(outcome: object) -> str:
    """The result JSON of what a ServerApp's main returned: the per-round metrics of a
    strategy Result (any dataclass with ``train_metrics``/``evaluate_metrics`` mappings of
    round -> metrics); ``""`` for anything else."""
    if not is_dataclass(outcome) or isinstance(outcome, type):
        return ""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    names = {f.name for f in fields(outcome)}
    for section in _SECTIONS:
        rounds = getattr(outcome, section, None) if section in names else None
        if not isinstance(rounds, Mapping):
            continue
        summary[section] = {
            str(server_round): {str(k): _encode_value(v) for k, v in dict(metrics).items()}
            for server_round, metrics in rounds.items()
            if isinstance(metrics, Mapping)
        }
    if not summary:
        return ""
    return json.dumps(summary, sort_keys=True, separators=(",", ":"), allow_nan=False)
