"""RecordDict <-> bytes. Array bytes travel as separate objects, named by their SHA-256.

Rules:

- ``encode_record_dict`` gives the content (a serialized ``records_pb2.RecordDict``, written
  deterministically) and the objects it references: object id -> the array's raw C-order bytes.
  A C-contiguous array is not copied (its object is a view of the array's memory); any other
  array is copied once into C order.
- An object id is the hex SHA-256 of the bytes. Identical bytes in one message are one object.
  A message's new arrays are hashed on up to :data:`HASH_THREADS` threads at once when they
  hold :data:`PARALLEL_HASH_BYTES` together (hashlib lets go of the GIL while it hashes; what
  it saves is in docs/performance.md). One array is one hash, on one thread.
- An array is described by its dtype string (byte order kept: ``"<f4"``, ``">f4"``, ``"|b1"``),
  its shape (0-d and empty arrays included), its object id and its size in bytes.
- ``decode_record_dict`` raises ``ValueError`` naming the record and array when an object is
  missing, when its size does not match the dtype and shape, or when the dtype is not numeric
  or bool. Decoded arrays are read-only views of the objects (``np.frombuffer``): copy one
  before changing it in place. Decoding does not re-hash objects: whoever receives objects from
  a peer checks them against their ids with :func:`object_id` first.
- Metric and config keys are a protobuf map: they come back sorted.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from flwrmtls.app.records import (
    ARRAY_DTYPE_KINDS,
    ArrayRecord,
    ConfigRecord,
    ConfigValue,
    MetricRecord,
    MetricValue,
    NDArray,
    RecordDict,
)
from flwrmtls.proto import records_pb2

__all__ = [
    "HASH_THREADS",
    "PARALLEL_HASH_BYTES",
    "EncodedContent",
    "decode_record_dict",
    "encode_record_dict",
    "hash_views",
    "object_id",
    "object_ids_of",
]


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's cpuset), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


HASH_THREADS = min(8, _usable_cpus())
"""Threads that hash one message's arrays at once (the CPUs this process may use, at most 8)."""
PARALLEL_HASH_BYTES = 8 * 1024 * 1024
"""Below this many bytes in all, a message's arrays are hashed one after the other: starting
threads would cost more than it saves."""


def object_id(data: bytes | memoryview) -> str:
    """The id of an object: the hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def hash_views(views: Sequence[bytes | memoryview], threads: int | None = None) -> list[str]:
    """The id of each of ``views``, in order: on up to ``threads`` (:data:`HASH_THREADS`)
    threads at once when there are several and they hold :data:`PARALLEL_HASH_BYTES`
    together, else one after another."""
    workers = min(HASH_THREADS if threads is None else threads, len(views))
    if workers < 2 or sum(memoryview(v).nbytes for v in views) < PARALLEL_HASH_BYTES:
        return [object_id(view) for view in views]
    with ThreadPoolExecutor(workers, "hash") as pool:
        return list(pool.map(object_id, views))


@dataclass(frozen=True)
class EncodedContent:
    content: bytes
    """A serialized ``records_pb2.RecordDict``."""
    objects: dict[str, memoryview]
    """Object id -> raw C-order array bytes, each id once."""


def _raw_bytes(array: NDArray) -> memoryview:
    """The array's bytes in C order, as a byte view; zero-copy when already C-contiguous."""
    if not array.flags.c_contiguous:
        array = np.array(array, order="C")
    return array.reshape(-1).view(np.uint8).data


EncodingCache = dict[int, tuple[str, memoryview]]
"""``id(array)`` -> (object id, bytes): lets several messages built around the same arrays
(a model broadcast to N nodes) hash each array once. Valid only while those arrays are alive
and unchanged, e.g. for one ``send_and_receive``."""


def _name_arrays(records: RecordDict, cache: EncodingCache | None) -> EncodingCache:
    """``id(array)`` -> (object id, bytes) for every array of ``records``: from ``cache`` when
    it has the array, else hashed (the message's new arrays together: :func:`hash_views`) and
    added to it."""
    named: EncodingCache = {}
    new: dict[int, memoryview] = {}
    for record in records.values():
        if isinstance(record, ArrayRecord):
            for array in record.values():
                known = cache.get(id(array)) if cache is not None else None
                if known is not None:
                    named[id(array)] = known
                elif id(array) not in new:
                    new[id(array)] = _raw_bytes(array)
    for (key, data), oid in zip(new.items(), hash_views(list(new.values())), strict=True):
        named[key] = (oid, data)
        if cache is not None:
            cache[key] = (oid, data)
    return named


def encode_record_dict(records: RecordDict, cache: EncodingCache | None = None) -> EncodedContent:
    proto = records_pb2.RecordDict()
    objects: dict[str, memoryview] = {}
    named = _name_arrays(records, cache)
    for name, record in records.items():
        entry = proto.entries.add(name=name)
        if isinstance(record, ArrayRecord):
            entry.arrays.SetInParent()
            for array_name, array in record.items():
                oid, data = named[id(array)]
                objects.setdefault(oid, data)
                entry.arrays.names.append(array_name)
                entry.arrays.arrays.add(
                    dtype=array.dtype.str, shape=array.shape, object_id=oid, nbytes=data.nbytes
                )
        elif isinstance(record, MetricRecord):
            entry.metrics.SetInParent()
            for key, metric in record.items():
                _set_value(entry.metrics.data[key], metric)
        else:
            entry.configs.SetInParent()
            for key, config in record.items():
                _set_value(entry.configs.data[key], config)
    return EncodedContent(proto.SerializeToString(deterministic=True), objects)


# The proto field for each Python type a record holds (records store exact types: a value of
# an int subclass, a numpy scalar or a tuple has already become an int, a Python scalar, a list).
_SCALAR_FIELDS = {bool: "bool", int: "sint64", float: "double", str: "string", bytes: "bytes"}
_LIST_FIELDS = {
    bool: "bool_list",
    int: "sint_list",
    float: "double_list",
    str: "string_list",
    bytes: "bytes_list",
}


def _set_value(
    target: records_pb2.MetricValue | records_pb2.ConfigValue, value: MetricValue | ConfigValue
) -> None:
    if not isinstance(value, list):
        setattr(target, _SCALAR_FIELDS[type(value)], value)
    elif not value:  # an empty list: any list field decodes to []
        target.double_list.SetInParent()
    else:
        getattr(target, _LIST_FIELDS[type(value[0])]).values.extend(value)


def _parse(content: bytes) -> records_pb2.RecordDict:
    proto = records_pb2.RecordDict()
    try:
        proto.ParseFromString(content)
    except DecodeError as error:
        raise ValueError(f"content is not a serialized RecordDict: {error}") from error
    return proto


def object_ids_of(content: bytes) -> list[str]:
    """The object ids a content references, each once, in order of first use."""
    ids: dict[str, None] = {}
    for entry in _parse(content).entries:
        if entry.WhichOneof("record") == "arrays":
            for array in entry.arrays.arrays:
                ids[array.object_id] = None
    return list(ids)


def decode_record_dict(content: bytes, objects: Mapping[str, bytes | memoryview]) -> RecordDict:
    records = RecordDict()
    for entry in _parse(content).entries:
        kind = entry.WhichOneof("record")
        if kind == "arrays":
            records[entry.name] = _decode_arrays(entry.name, entry.arrays, objects)
        elif kind == "metrics":
            records[entry.name] = MetricRecord(
                {key: _metric_value(entry.metrics.data[key]) for key in sorted(entry.metrics.data)}
            )
        elif kind == "configs":
            records[entry.name] = ConfigRecord(
                {key: _config_value(entry.configs.data[key]) for key in sorted(entry.configs.data)}
            )
        else:
            raise ValueError(f"record {entry.name!r} has no content")
    return records


def _decode_arrays(
    record_name: str,
    proto: records_pb2.ArrayRecord,
    objects: Mapping[str, bytes | memoryview],
) -> ArrayRecord:
    if len(proto.names) != len(proto.arrays):
        raise ValueError(
            f"record {record_name!r}: {len(proto.names)} names for {len(proto.arrays)} arrays"
        )
    record = ArrayRecord()
    for name, array in zip(proto.names, proto.arrays, strict=True):
        where = f"record {record_name!r}, array {name!r}"
        try:
            dtype = np.dtype(array.dtype)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {array.dtype!r} is not a numpy dtype") from error
        if dtype.kind not in ARRAY_DTYPE_KINDS:
            raise ValueError(f"{where}: dtype {array.dtype!r} is not numeric or bool")
        shape = tuple(array.shape)
        if any(size < 0 for size in shape):
            raise ValueError(f"{where}: negative size in shape {shape}")
        expected = math.prod(shape) * dtype.itemsize
        if array.object_id not in objects:
            raise ValueError(f"{where}: object {array.object_id} is missing")
        data = memoryview(objects[array.object_id])
        if data.nbytes != expected or array.nbytes != expected:
            raise ValueError(
                f"{where}: object {array.object_id} has {data.nbytes} bytes "
                f"(declared {array.nbytes}), but dtype {dtype.str} and shape {shape} "
                f"need {expected}"
            )
        record[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return record


def _metric_value(proto: records_pb2.MetricValue) -> MetricValue:
    kind = proto.WhichOneof("value")
    if kind == "sint64":
        return proto.sint64
    if kind == "double":
        return proto.double
    if kind == "sint_list":
        return list(proto.sint_list.values)
    if kind == "double_list":
        return list(proto.double_list.values)
    raise ValueError("a metric value has no value")


def _config_value(proto: records_pb2.ConfigValue) -> ConfigValue:
    kind = proto.WhichOneof("value")
    if kind is None:
        raise ValueError("a config value has no value")
    value = getattr(proto, kind)
    return list(value.values) if kind.endswith("_list") else value
