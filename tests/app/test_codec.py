"""The codec: arrays as content-addressed objects, records through protobuf, errors named."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from flwrmtls.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwrmtls.app.codec import (
    EncodedContent,
    decode_record_dict,
    encode_record_dict,
    object_id,
    object_ids_of,
)
from flwrmtls.proto import records_pb2


def round_trip(records: RecordDict) -> tuple[RecordDict, EncodedContent]:
    encoded = encode_record_dict(records)
    # what crosses a network: bytes, not views of the sender's arrays
    objects = {oid: bytes(data) for oid, data in encoded.objects.items()}
    return decode_record_dict(encoded.content, objects), encoded


def arrays_only(**arrays: Any) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord(arrays)})


@pytest.mark.parametrize(
    "dtype",
    [
        *["<f4", "<f8", "<f2", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8"],
        *["|b1", "<c8", "<c16", ">f4", ">i8", ">c8"],
    ],
)
def test_every_numeric_dtype_round_trips_with_its_byte_order(dtype: str) -> None:
    rng = np.random.default_rng(7)
    array = (rng.random((3, 4)) * 100).astype(dtype)
    decoded, encoded = round_trip(arrays_only(a=array))
    result = decoded.array_records["arrays"]["a"]
    assert result.dtype.str == dtype
    assert result.shape == (3, 4)
    np.testing.assert_array_equal(result, array)
    proto = records_pb2.RecordDict.FromString(encoded.content)
    assert proto.entries[0].arrays.arrays[0].dtype == dtype


@pytest.mark.parametrize(
    "array",
    [
        np.array(3.5, dtype=np.float32),
        np.zeros((0,), dtype=np.float64),
        np.zeros((3, 0, 2), dtype=np.int16),
        np.arange(512 * 300, dtype=np.float32).reshape(512, 300),
        np.arange(60, dtype=np.int32).reshape(6, 10)[:, ::3],
        np.arange(12, dtype=">f8").reshape(3, 4).T,
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)[::-1, 1:, ::2],
    ],
    ids=["0-d", "empty", "empty-3d", "large", "strided", "fortran", "reversed"],
)
def test_shapes_round_trip(array: Any) -> None:
    decoded, encoded = round_trip(arrays_only(a=array))
    result = decoded.array_records["arrays"]["a"]
    assert result.shape == array.shape
    assert result.dtype == array.dtype
    np.testing.assert_array_equal(result, array)
    (data,) = encoded.objects.values()
    assert bytes(data) == np.ascontiguousarray(array).tobytes()  # C order


def test_contiguous_arrays_are_not_copied_and_others_are() -> None:
    contiguous = np.arange(1000, dtype=np.float64)
    strided = np.arange(2000, dtype=np.float64)[::2]
    encoded = encode_record_dict(arrays_only(c=contiguous, s=strided))
    views = {oid: np.frombuffer(data, dtype=np.uint8) for oid, data in encoded.objects.items()}
    proto = records_pb2.RecordDict.FromString(encoded.content)
    ids = {
        name: a.object_id
        for name, a in zip(
            proto.entries[0].arrays.names, proto.entries[0].arrays.arrays, strict=True
        )
    }
    assert np.shares_memory(views[ids["c"]], contiguous)
    assert not np.shares_memory(views[ids["s"]], strided)


def test_an_object_id_is_the_sha256_of_the_bytes() -> None:
    array = np.arange(10, dtype=np.int64)
    encoded = encode_record_dict(arrays_only(a=array))
    expected = hashlib.sha256(array.tobytes()).hexdigest()
    assert list(encoded.objects) == [expected]
    assert object_id(array.tobytes()) == expected
    assert object_id(memoryview(array.tobytes())) == expected
    assert object_ids_of(encoded.content) == [expected]


def test_identical_arrays_are_stored_once() -> None:
    weights = np.ones((50, 50), dtype=np.float32)
    records = RecordDict(
        {
            "model": ArrayRecord({"w": weights, "w-copy": weights.copy(), "b": np.zeros(3)}),
            "snapshot": ArrayRecord({"w": weights.copy()}),
        }
    )
    decoded, encoded = round_trip(records)
    assert len(encoded.objects) == 2  # the three (50, 50) arrays share one object
    assert len(object_ids_of(encoded.content)) == 2
    assert decoded.array_records["snapshot"] == ArrayRecord({"w": weights})
    different = RecordDict({"m": ArrayRecord({"w": weights, "v": weights + 1})})
    assert len(encode_record_dict(different).objects) == 2  # the control: different bytes


def test_order_is_kept_for_records_and_arrays() -> None:
    records = RecordDict(
        {
            "z": ArrayRecord({"second": np.zeros(1), "first": np.ones(1)}),
            "a": MetricRecord({"m": 1}),
            "k": ConfigRecord({"c": "x"}),
        }
    )
    decoded, _ = round_trip(records)
    assert list(decoded) == ["z", "a", "k"]
    assert list(decoded.array_records["z"]) == ["second", "first"]


def test_metric_and_config_values_of_every_type_round_trip() -> None:
    metrics = MetricRecord(
        {"i": -(2**63), "big": 2**63 - 1, "f": 0.125, "li": [1, -2], "lf": [0.5, 2.0], "e": []}
    )
    config = ConfigRecord(
        {
            "i": 3,
            "f": -1.5,
            "b": False,
            "s": "héllo",
            "by": b"\x00\xff",
            "li": [1, 2],
            "lf": [1.5],
            "lb": [True, False],
            "ls": ["a", ""],
            "lby": [b"", b"x"],
            "e": [],
        }
    )
    decoded, encoded = round_trip(RecordDict({"metrics": metrics, "config": config}))
    assert encoded.objects == {}
    assert decoded == RecordDict({"metrics": metrics, "config": config})
    pairs: list[tuple[Mapping[str, object], Mapping[str, object]]] = [
        (metrics, decoded.metric_records["metrics"]),
        (config, decoded.config_records["config"]),
    ]
    for original, result in pairs:
        for key, value in original.items():
            assert type(result[key]) is type(value), key
    assert list(decoded.metric_records["metrics"]) == sorted(metrics)  # maps come back sorted


def test_empty_records_keep_their_kind() -> None:
    records = RecordDict({"a": ArrayRecord(), "m": MetricRecord(), "c": ConfigRecord()})
    decoded, _ = round_trip(records)
    assert isinstance(decoded["a"], ArrayRecord)
    assert isinstance(decoded["m"], MetricRecord)
    assert isinstance(decoded["c"], ConfigRecord)
    assert round_trip(RecordDict())[0] == RecordDict()


def test_content_is_deterministic() -> None:
    keys = [f"key-{i}" for i in range(50)]
    first = ConfigRecord({key: 1 for key in keys})
    second = ConfigRecord({key: 1 for key in reversed(keys)})
    one = encode_record_dict(RecordDict({"c": first}))
    other = encode_record_dict(RecordDict({"c": second}))
    assert one.content == other.content


def test_decoded_arrays_are_read_only_views() -> None:
    decoded, _ = round_trip(arrays_only(a=np.zeros(3)))
    array = decoded.array_records["arrays"]["a"]
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1.0
    writable = array.copy()
    writable[0] = 1.0  # the documented way


def test_a_missing_object_is_named() -> None:
    encoded = encode_record_dict(arrays_only(a=np.arange(3)))
    (oid,) = encoded.objects
    with pytest.raises(ValueError, match=f"record 'arrays', array 'a': object {oid} is missing"):
        decode_record_dict(encoded.content, {})
    decode_record_dict(encoded.content, {oid: bytes(encoded.objects[oid])})  # the control


def test_an_object_of_the_wrong_size_is_refused() -> None:
    encoded = encode_record_dict(arrays_only(a=np.arange(4, dtype=np.int32)))
    (oid,) = encoded.objects
    for wrong in [b"\x00" * 15, b"\x00" * 17, b""]:
        with pytest.raises(ValueError, match=rf"object {oid} has {len(wrong)} bytes"):
            decode_record_dict(encoded.content, {oid: wrong})


def _crafted(
    dtype: str, shape: list[int], nbytes: int, data: bytes
) -> tuple[bytes, dict[str, bytes]]:
    proto = records_pb2.RecordDict()
    entry = proto.entries.add(name="r")
    entry.arrays.names.append("a")
    oid = object_id(data)
    entry.arrays.arrays.add(dtype=dtype, shape=shape, object_id=oid, nbytes=nbytes)
    return proto.SerializeToString(), {oid: data}


@pytest.mark.parametrize(
    ("dtype", "shape", "nbytes", "data", "message"),
    [
        ("|O", [1], 8, b"\x00" * 8, "not numeric or bool"),
        ("<M8[s]", [1], 8, b"\x00" * 8, "not numeric or bool"),
        ("nonsense", [1], 8, b"\x00" * 8, "is not a numpy dtype"),
        ("<f8", [2], 8, b"\x00" * 16, r"declared 8"),
        ("<f8", [-1], 8, b"\x00" * 8, "negative size"),
    ],
)
def test_a_malformed_array_is_refused(
    dtype: str, shape: list[int], nbytes: int, data: bytes, message: str
) -> None:
    content, objects = _crafted(dtype, shape, nbytes, data)
    with pytest.raises(ValueError, match=message):
        decode_record_dict(content, objects)


def test_the_crafted_control_decodes() -> None:
    content, objects = _crafted("<f8", [2], 16, np.array([1.0, 2.0]).tobytes())
    decoded = decode_record_dict(content, objects).array_records["r"]["a"]
    np.testing.assert_array_equal(decoded, [1.0, 2.0])


def test_garbage_content_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a serialized RecordDict"):
        decode_record_dict(b"\xff\xff\xff", {})
    with pytest.raises(ValueError, match="not a serialized RecordDict"):
        object_ids_of(b"\xff\xff\xff")
    proto = records_pb2.RecordDict()
    proto.entries.add(name="hollow")
    with pytest.raises(ValueError, match="record 'hollow' has no content"):
        decode_record_dict(proto.SerializeToString(), {})


def test_a_shared_cache_hashes_arrays_shared_by_several_messages_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flwrmtls.app.codec as codec

    hashed: list[int] = []
    real = codec.object_id

    def counting(data: bytes | memoryview) -> str:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(codec, "object_id", counting)
    model = ArrayRecord({"w": np.arange(1000, dtype=np.float32), "b": np.ones(10)})
    broadcast = [RecordDict({"arrays": model, "config": ConfigRecord({"r": i})}) for i in range(5)]
    cache: codec.EncodingCache = {}
    encoded = [codec.encode_record_dict(content, cache) for content in broadcast]
    assert len(hashed) == 2  # two arrays, five messages
    assert all(e.objects.keys() == encoded[0].objects.keys() for e in encoded)
    hashed.clear()
    uncached = [codec.encode_record_dict(content) for content in broadcast]
    assert len(hashed) == 10  # control: without the cache every message hashes again
    assert [e.content for e in uncached] == [e.content for e in encoded]


def test_a_large_message_s_arrays_are_hashed_on_several_threads_each_under_its_own_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    import flwrmtls.app.codec as codec

    threads: set[int] = set()
    together = threading.Event()  # set once two threads hash at once
    real = codec.object_id

    def recording(data: bytes | memoryview) -> str:
        threads.add(threading.get_ident())
        if len(threads) > 1:
            together.set()
        together.wait(5)  # the first hash waits for a second thread (one after another: none)
        return real(data)

    monkeypatch.setattr(codec, "object_id", recording)
    monkeypatch.setattr(codec, "HASH_THREADS", 4)
    size = codec.PARALLEL_HASH_BYTES // 4 // 4 + 1  # float32: the arrays just over the bound
    rng = np.random.default_rng(7)
    arrays = {f"a{i}": rng.random(size, dtype=np.float32) for i in range(6)}
    arrays["view"] = arrays["a0"][::2]  # not contiguous: copied, then hashed like the others
    arrays["again"] = arrays["a1"]  # one array under two names: one object
    encoded = codec.encode_record_dict(RecordDict({"m": ArrayRecord(arrays)}))
    assert len(threads) > 1
    decoded = decode_record_dict(encoded.content, encoded.objects)["m"]
    assert isinstance(decoded, ArrayRecord)
    for name, array in arrays.items():
        assert np.array_equal(decoded[name], array)
    for oid, data in encoded.objects.items():
        assert hashlib.sha256(data).hexdigest() == oid
    assert len(encoded.objects) == 7

    threads.clear()  # control: the same arrays under the bound are hashed on this thread alone
    together.set()
    small = {name: array[:1000] for name, array in arrays.items()}
    codec.encode_record_dict(RecordDict({"m": ArrayRecord(small)}))
    assert threads == {threading.get_ident()}


def test_hash_views_keeps_the_order_of_the_views() -> None:
    from flwrmtls.app.codec import PARALLEL_HASH_BYTES, hash_views

    views = [bytes([i]) * (PARALLEL_HASH_BYTES // 3 + i) for i in range(5)]
    expected = [hashlib.sha256(view).hexdigest() for view in views]
    assert hash_views(views, threads=3) == expected
    assert hash_views(views, threads=1) == expected
    assert hash_views([]) == []
