"""An app whose ServerApp sends one node a planned sequence of messages, for tests of what a
node stores.

Run config: ``sizes`` (the float32 count of each message's one array, space-separated: message
``i`` carries ``np.full(size, seed)``, so two messages of one size carry the same object),
``seed`` (the arrays' value), ``gate`` (a path: before message ``i > 0`` the ServerApp waits
for the file ``<gate>.<i>`` to exist; "" for none), ``timeout`` (seconds for each reply and
each gate). The ServerApp prints one line per reply: ``reply i: ok sum S`` or ``reply i:
CODE_NAME: reason``; then ``done``. The ClientApp adds 1 to every array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["array_bytes", "write_disk_app"]

_PYPROJECT = """\
[project]
name = "disk"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "disk.server_app:app"
clientapp = "disk.client_app:app"

[tool.flwrmtls.app.config]
sizes = "16"
seed = 1.0
gate = ""
timeout = 60.0
"""

_SERVER = """\
import time
from pathlib import Path

import numpy as np

from flwrmtls.app import ArrayRecord, RecordDict, ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    config = context.run_config
    timeout = float(config["timeout"])
    [node] = grid.wait_for_nodes(1, timeout)[:1]
    for i, size in enumerate(int(s) for s in str(config["sizes"]).split()):
        if i and config["gate"]:
            deadline = time.monotonic() + timeout
            while not Path(f"{config['gate']}.{i}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        arrays = ArrayRecord({"w": np.full(size, float(config["seed"]), dtype=np.float32)})
        message = grid.create_message(RecordDict({"arrays": arrays}), "train", node, str(i))
        [reply] = grid.send_and_receive([message], timeout=timeout)
        if reply.has_error():
            print(f"reply {i}: {reply.error.code_name}: {reply.error.reason}", flush=True)
        else:
            total = float(reply.content["arrays"]["w"].sum())
            print(f"reply {i}: ok sum {total:.1f}", flush=True)
    print("done", flush=True)
"""

_CLIENT = """\
from flwrmtls.app import ArrayRecord, ClientApp, RecordDict

app = ClientApp()


@app.train()
def train(msg, context):
    arrays = ArrayRecord({k: v + 1 for k, v in msg.content["arrays"].items()})
    return msg.create_reply(RecordDict({"arrays": arrays}))
"""


def write_disk_app(directory: Path) -> Path:
    package = directory / "disk"
    package.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(_PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server_app.py").write_text(_SERVER)
    (package / "client_app.py").write_text(_CLIENT)
    return directory


def array_bytes(size: int, seed: float) -> bytes:
    """The bytes of a message's array (its object is named by their SHA-256)."""
    return np.full(size, seed, dtype=np.float32).tobytes()
