"""The model's source and sink on the FLARE server, and the benchmark's stamps.

:class:`BenchPersistor` makes 4 random float32 arrays of M MiB in all (``load_model``), saves
the global model after each round into the job's result directory as FLARE's
``NPModelPersistor`` does (``save_model``, ``np.savez``), and writes
``<stamps_dir>/<job id>.json``: ``round_starts`` (FLARE's ``ROUND_STARTED`` event),
``round_ends`` (each round's model saved: FedAvg saves at the end of every round),
``probe`` (first and last element of the first array, initial and after the last save) and
the model's bytes before and after (float32 stays float32).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_event_type import AppEventType

ARRAYS = 4


def _ends(array: Any) -> list[float]:
    return [float(array[0]), float(array[-1])]


class BenchPersistor(ModelPersistor):
    def __init__(self, model_mb: float = 1.0, stamps_dir: str = "") -> None:
        super().__init__()
        self.model_mb = model_mb
        self.stamps_dir = stamps_dir
        self._stamps: dict[str, Any] = {"round_starts": [], "round_ends": [], "probe": {}}

    def load_model(self, fl_ctx: Any) -> Any:
        per_array = max(1, int(self.model_mb * (1 << 20) / 4 / ARRAYS))
        rng = np.random.default_rng()
        weights = {f"layer-{i}": rng.random(per_array, dtype=np.float32) for i in range(ARRAYS)}
        self._stamps["probe"]["initial"] = _ends(weights["layer-0"])
        self._stamps["model_bytes"] = sum(int(a.nbytes) for a in weights.values())
        return make_model_learnable(weights=weights, meta_props={})

    def handle_event(self, event_type: str, fl_ctx: Any) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == AppEventType.ROUND_STARTED:
            self._stamps["round_starts"].append(time.monotonic())
            self._write(fl_ctx)

    def save_model(self, model_learnable: Any, fl_ctx: Any) -> None:
        weights = model_learnable["weights"]
        workspace = fl_ctx.get_workspace()
        path = os.path.join(workspace.get_result_root(fl_ctx.get_job_id()), "models", "server")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path, **weights)
        self._stamps["round_ends"].append(time.monotonic())
        self._stamps["probe"]["final"] = _ends(weights["layer-0"])
        self._stamps["final_model_bytes"] = sum(int(a.nbytes) for a in weights.values())
        self._write(fl_ctx)

    def _write(self, fl_ctx: Any) -> None:
        path = os.path.join(self.stamps_dir, f"{fl_ctx.get_job_id()}.json")
        with open(path + ".partial", "w", encoding="utf-8") as out:
            json.dump(self._stamps, out)
        os.replace(path + ".partial", path)
