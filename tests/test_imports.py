"""What each program loads at start-up: only the link opens a database, only the app
processes load numpy, and they never load what checking or building a bundle takes.

A node and every app process read the error catalogue (:mod:`flwrmtls.wire.refusals`) and
the enrollment helpers, but never a database: importing SQLAlchemy would cost each of them
about 26 MiB (a node's tree holds the node, a ClientApp and a spare). A link on SQLite never
loads the PostgreSQL driver. The link and the node move a message's records as bytes and
never decode them, so neither loads numpy (about 11 MiB). An app process reads its bundle
but never checks or builds one (:mod:`flwrmtls.app.bundling`), so it loads neither
cryptography (the private-key scan) nor pathspec (the app's ignore files): about 8 MiB
together.
Each program is imported in a fresh interpreter, as it starts.
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
print(json.dumps("numpy" in sys.modules))
print(json.dumps(sorted(m for m in ("cryptography", "pathspec") if m in sys.modules)))
"""


def _imports(module: str) -> tuple[list[str], bool, list[str]]:
    """The database libraries ``module`` loads as it starts, whether it loads numpy, and
    which of the bundle checker's and builder's libraries it loads."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, module],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    databases, numpy, bundling = done.stdout.splitlines()
    loaded: list[str] = json.loads(databases)
    checkers: list[str] = json.loads(bundling)
    return loaded, bool(json.loads(numpy)), checkers


def _loaded(module: str) -> list[str]:
    return _imports(module)[0]


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


@pytest.mark.parametrize(
    ("program", "loads_numpy"),
    [
        ("flwrmtls.link.main", False),
        ("flwrmtls.node.main", False),
        ("flwrmtls.cli.main", False),
        # The controls: an app process decodes records into arrays.
        ("flwrmtls.appio.clientapp_process", True),
        ("flwrmtls.appio.serverapp_process", True),
    ],
)
def test_only_the_app_processes_load_numpy(program: str, loads_numpy: bool) -> None:
    assert _imports(program)[1] is loads_numpy


@pytest.mark.parametrize(
    ("program", "loads"),
    [
        ("flwrmtls.appio.clientapp_process", []),
        ("flwrmtls.appio.serverapp_process", []),
        # The controls: the link checks the bundles it receives, the CLI builds them.
        ("flwrmtls.link.main", ["cryptography", "pathspec"]),
        ("flwrmtls.cli.main", ["cryptography", "pathspec"]),
    ],
)
def test_app_processes_never_load_what_checking_or_building_a_bundle_takes(
    program: str, loads: list[str]
) -> None:
    assert _imports(program)[2] == loads
