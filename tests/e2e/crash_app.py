"""An app for crash tests: its ServerApp hands its run token to the test, then sends work.

The ServerApp writes its own run token to the run config's ``token-file`` (an app can: it
runs in the process that holds the token; the test needs it to show the token dies with the
run) and its process id beside it (``<token-file>.pid``). It waits for one node, sends it
``messages`` messages in one push, each with an array of its own (so each names an object of
its own), and waits for replies that never come: the run stays running until it is stopped
or the link goes away.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_crash_app"]

_PYPROJECT = """\
[project]
name = "crashprobe"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "crashprobe.server_app:app"
clientapp = "crashprobe.client_app:app"

[tool.flwrmtls.app.config]
token-file = ""
messages = 2
"""

_SERVER = """\
import os

import numpy as np

from flwrmtls.app import ArrayRecord, RecordDict, ServerApp
from flwrmtls.auth.tokens import TOKEN_METADATA_KEY

app = ServerApp()


@app.main()
def main(grid, context):
    token = dict(grid._metadata)[TOKEN_METADATA_KEY]
    path = str(context.run_config["token-file"])
    with open(path + ".pid", "w") as out:
        out.write(str(os.getpid()))
    with open(path + ".part", "w") as out:
        out.write(token)
    os.replace(path + ".part", path)
    [node] = grid.wait_for_nodes(1, 120.0)
    messages = [
        grid.create_message(
            RecordDict({"arrays": ArrayRecord({"w": np.full(16, float(i), dtype=np.float32)})}),
            "train", node, "1",
        )
        for i in range(int(context.run_config["messages"]))
    ]
    grid.send_and_receive(messages)
"""

_CLIENT = """\
from flwrmtls.app import ClientApp

app = ClientApp()
"""


def write_crash_app(directory: Path) -> Path:
    package = directory / "crashprobe"
    package.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(_PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server_app.py").write_text(_SERVER)
    (package / "client_app.py").write_text(_CLIENT)
    return directory
