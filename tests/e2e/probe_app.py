"""A small app whose behaviour the run config steers, for end-to-end tests of runs.

Run config keys: ``rounds``, ``min-train`` / ``min-available`` (FedAvg), ``wait-timeout``,
``round-timeout`` (0 = none), ``array-mb`` (size of the model, in 4 float32 arrays),
``raise-on`` / ``sleep-on`` (a node's ``name`` node-config value, or ``all``: its ClientApp
raises ZeroDivisionError / sleeps ``sleep-seconds``, after printing ``ClientApp of NAME
sleeps``), ``report-memory`` (each ClientApp prints ``ClientApp of NAME holds N KiB`` as a
message arrives: its anonymous resident memory, what it still holds of earlier messages).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_probe_app"]

_PYPROJECT = """\
[project]
name = "probe"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "probe.server_app:app"
clientapp = "probe.client_app:app"

[tool.flwrmtls.app.config]
rounds = 2
min-train = 2
min-available = 2
wait-timeout = 10.0
round-timeout = 0.0
array-mb = 0.001
raise-on = ""
sleep-on = ""
sleep-seconds = 60.0
report-memory = false
"""

_SERVER = """\
import numpy as np

from flwrmtls.app import ArrayRecord, FedAvg, ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    config = context.run_config
    per_array = max(1, int(float(config["array-mb"]) * (1 << 20) / 4 / 4))
    arrays = ArrayRecord(
        {f"layer-{i}": np.full(per_array, float(i), dtype=np.float32) for i in range(4)}
    )
    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_train_nodes=int(config["min-train"]),
        min_available_nodes=int(config["min-available"]),
        wait_timeout=float(config["wait-timeout"]),
        round_timeout=float(config["round-timeout"]) or None,
    )
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=int(config["rounds"]))
    total = sum(float(a.sum()) for a in result.arrays.values())
    print(f"final model sum {total:.1f}, {sum(a.nbytes for a in result.arrays.values())} bytes")
    return result
"""

_CLIENT = """\
import re
import time

from flwrmtls.app import ArrayRecord, ClientApp, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg, context):
    name = str(context.node_config.get("name", "-"))
    if context.run_config["report-memory"]:
        with open("/proc/self/status") as status_file:
            status = status_file.read()
        anon = re.search(r"^RssAnon:\\s+(\\d+)", status, re.MULTILINE).group(1)
        print(f"ClientApp of {name} holds {anon} KiB", flush=True)
    if context.run_config["raise-on"] in (name, "all"):
        1 / 0
    if context.run_config["sleep-on"] in (name, "all"):
        print(f"ClientApp of {name} sleeps", flush=True)
        time.sleep(float(context.run_config["sleep-seconds"]))
    arrays = ArrayRecord({key: value + 1 for key, value in msg.content["arrays"].items()})
    metrics = MetricRecord({"num-examples": 10, "loss": 1.0 / (1 + context.node_id % 5)})
    return msg.create_reply(RecordDict({"arrays": arrays, "metrics": metrics}))
"""


def write_probe_app(directory: Path) -> Path:
    package = directory / "probe"
    package.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(_PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server_app.py").write_text(_SERVER)
    (package / "client_app.py").write_text(_CLIENT)
    return directory
