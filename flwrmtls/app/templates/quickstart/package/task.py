"""The learning task: softmax (multinomial logistic) regression on scikit-learn's digits.

8x8 images of handwritten digits (1797 of them, shipped with scikit-learn: no download).
Each node takes its partition from its node config (``partition-id``, ``num-partitions``):
a fixed shuffle split into equal parts, then 80% of its part to train on and 20% to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

from flwrmtls.app import ArrayRecord

FloatArray = npt.NDArray[np.float64]
NUM_FEATURES = 64
NUM_CLASSES = 10
SPLIT_SEED = 42


@dataclass(frozen=True)
class Partition:
    x_train: FloatArray
    y_train: npt.NDArray[np.int64]
    x_test: FloatArray
    y_test: npt.NDArray[np.int64]


@lru_cache(maxsize=1)
def _digits() -> tuple[FloatArray, npt.NDArray[np.int64]]:
    data: Any = load_digits()
    features = np.asarray(data.data, dtype=np.float64) / 16.0  # pixels are 0..16
    labels = np.asarray(data.target, dtype=np.int64)
    return features, labels


def load_partition(node_config: dict[str, bool | int | float | str]) -> Partition:
    """This node's share of the data, from ``partition-id`` and ``num-partitions``."""
    try:
        partition_id = int(node_config["partition-id"])
        num_partitions = int(node_config["num-partitions"])
    except (KeyError, ValueError) as error:
        raise ValueError(
            "this app needs the node config keys partition-id and num-partitions, e.g. "
            "flwrmtls-supernode --node-config 'partition-id=0 num-partitions=2'"
        ) from error
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is not in 0..{num_partitions - 1}")
    features, labels = _digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    part = np.array_split(order, num_partitions)[partition_id]
    cut = int(0.8 * len(part))
    train, test = part[:cut], part[cut:]
    return Partition(features[train], labels[train], features[test], labels[test])


def initial_arrays() -> ArrayRecord:
    """Zero weights and biases: every node starts from the same model."""
    return ArrayRecord(
        {
            "weights": np.zeros((NUM_FEATURES, NUM_CLASSES), dtype=np.float32),
            "bias": np.zeros(NUM_CLASSES, dtype=np.float32),
        }
    )


def _probabilities(arrays: ArrayRecord, features: FloatArray) -> FloatArray:
    logits = features @ arrays["weights"].astype(np.float64) + arrays["bias"]
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    result: FloatArray = exp / exp.sum(axis=1, keepdims=True)
    return result


def evaluate(
    arrays: ArrayRecord, features: FloatArray, labels: npt.NDArray[np.int64]
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy."""
    probabilities = _probabilities(arrays, features)
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    return loss, accuracy


def train(
    arrays: ArrayRecord,
    features: FloatArray,
    labels: npt.NDArray[np.int64],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> ArrayRecord:
    """Minibatch SGD on the cross-entropy loss; returns new arrays (the input is unchanged)."""
    weights = arrays["weights"].astype(np.float64)  # a copy: received arrays are read-only
    bias = arrays["bias"].astype(np.float64)
    rng = np.random.default_rng(seed)
    one_hot = np.eye(NUM_CLASSES)[labels]
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            logits = features[batch] @ weights + bias
            logits -= logits.max(axis=1, keepdims=True)
            probabilities = np.exp(logits)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            error = (probabilities - one_hot[batch]) / len(batch)
            weights -= lr * features[batch].T @ error
            bias -= lr * error.sum(axis=0)
    return ArrayRecord({"weights": weights.astype(np.float32), "bias": bias.astype(np.float32)})
