"""$FLWRMTLS_HOME is one setting: the link's default database and app environments, a node's
default state directory and the CLI's config.toml all follow it, read when asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwrmtls.connectionprofiles import config_path
from flwrmtls.home import flwrmtls_home
from flwrmtls.link.flags import parser
from flwrmtls.node.statedir import default_state_dir


def test_every_program_keeps_its_files_under_the_one_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWRMTLS_HOME", str(tmp_path / "home"))
    assert flwrmtls_home() == tmp_path / "home"
    assert parser().get_default("database") == str(tmp_path / "home" / "link.db")
    assert config_path() == tmp_path / "home" / "config.toml"
    state = default_state_dir("127.0.0.1:9092", [tmp_path / "node.pem", None])
    assert state.parent == tmp_path / "home" / "supernode"


def test_without_it_the_home_is_dot_flwrmtls_in_the_users_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLWRMTLS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert flwrmtls_home() == tmp_path / ".flwrmtls"
    assert config_path() == tmp_path / ".flwrmtls" / "config.toml"
