"""What each program loads at start-up: only the link opens a database.

A node and every app process read the error catalogue (:mod:`flwrmtls.wire.refusals`) and
the enrollment helpers, but never a database: importing SQLAlchemy would cost each of them
about 26 MiB (a node's tree holds the node, a ClientApp and a spare). A link on SQLite never
loads the PostgreSQL driver. Each program is imported in a fresh interpreter, as it starts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in ("sqlalchemy", "alembic", "psycopg") if m in sys.modules)))
"""


def _loaded(module: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, module],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    loaded: list[str] = json.loads(done.stdout)
    return loaded


@pytest.mark.parametrize(
    "program",
    [
        "flwrmtls.node.main",
        "flwrmtls.appio.clientapp_process",
        "flwrmtls.appio.serverapp_process",
    ],
)
def test_a_node_and_the_app_processes_never_load_a_database_library(program: str) -> None:
    assert _loaded(program) == []


def test_the_link_loads_sqlalchemy_but_not_the_postgresql_driver_until_it_needs_it() -> None:
    # The control: the link does load its database library, so the probe sees imports.
    assert _loaded("flwrmtls.link.main") == ["alembic", "sqlalchemy"]
