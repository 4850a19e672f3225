"""An app whose ServerApp pushes one message to every node, then holds until told to end.

Run config keys: ``wait-replies`` (1: wait for every node's reply and print ``answered N``
before holding; 0: push, print ``pushed N``, and hold at once, leaving the replies to a
background thread) and ``release-file`` (main returns once this file exists: the run is
``completed``; "" holds until the run is stopped). A ServerApp that pushes and returns, with
its messages still on their way, is the aim of the test that uses it: the test picks the
moment the run ends by writing the release file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_hold_app"]

_PYPROJECT = """\
[project]
name = "hold"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "hold.server_app:app"
clientapp = "hold.client_app:app"

[tool.flwrmtls.app.config]
wait-replies = 1
release-file = ""
"""

_SERVER = """\
import threading
import time
from pathlib import Path

from flwrmtls.app import ConfigRecord, MessageType, RecordDict, ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    config = context.run_config
    nodes = grid.wait_for_nodes(1, 30.0)
    messages = [
        grid.create_message(
            RecordDict({"config": ConfigRecord({"run": grid.run_id})}), MessageType.QUERY,
            node, "hold",
        )
        for node in nodes
    ]
    if int(config["wait-replies"]):
        replies = grid.send_and_receive(messages)
        for reply in replies:
            if reply.has_error():
                print(f"error reply: {reply.error.code_name}: {reply.error.reason}", flush=True)
        print(f"answered {sum(not reply.has_error() for reply in replies)}", flush=True)
    else:
        threading.Thread(target=grid.send_and_receive, args=(messages,), daemon=True).start()
        print(f"pushed {len(messages)}", flush=True)
    release = str(config["release-file"])
    while not (release and Path(release).exists()):
        time.sleep(0.05)
"""

_CLIENT = """\
from flwrmtls.app import ClientApp, ConfigRecord, RecordDict

app = ClientApp()


@app.query()
def query(msg, context):
    return msg.create_reply(RecordDict({"config": ConfigRecord({"node": context.node_id})}))
"""


def write_hold_app(directory: Path) -> Path:
    package = directory / "hold"
    package.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(_PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server_app.py").write_text(_SERVER)
    (package / "client_app.py").write_text(_CLIENT)
    return directory
