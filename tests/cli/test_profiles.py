"""config.toml profiles: written with tomli-w, read with tomllib, paths resolved as documented."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from flwrmtls.errors import InputError
from flwrmtls.keyvalues import parse_key_values
from flwrmtls.profiles import ConfigFile, Profile
from flwrmtls.testing.processes import run_cli


def test_add_use_and_read_back(tmp_path: Path) -> None:
    config = ConfigFile(tmp_path / "config.toml")
    config.add(Profile("a", "10.0.0.1:9093", root_certificates=Path("ca.crt")), make_default=False)
    config.add(Profile("b", "10.0.0.2:9093", insecure=True), make_default=False)
    assert config.default == "a"  # the first profile becomes the default
    config.use("b")
    reread = ConfigFile(tmp_path / "config.toml")
    assert reread.default == "b"
    assert reread.profile(None).insecure
    a = reread.profile("a")
    assert a.root_certificates == (Path.cwd() / "ca.crt")  # stored absolute
    with pytest.raises(InputError, match="no connection profile 'zzz'"):
        reread.profile("zzz")


def test_relative_and_home_paths_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[superlink]\ndefault = "x"\n[superlink.x]\naddress = "h:1"\n'
        'root-certificates = "certs/ca.crt"\nclient-certificate = "~/cli.pem"\n'
        'client-private-key = "/abs/cli.key"\n'
    )
    profile = ConfigFile(path).profile(None)
    assert profile.root_certificates == tmp_path / "certs" / "ca.crt"
    assert profile.client_certificate == Path("~/cli.pem").expanduser()
    assert profile.client_private_key == Path("/abs/cli.key")


def test_broken_toml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[superlink\n")
    with pytest.raises(InputError, match="is not valid TOML"):
        ConfigFile(path)


def test_no_default_profile(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config add"):
        ConfigFile(tmp_path / "config.toml").profile(None)


def test_cli_config_commands(tmp_path: Path) -> None:
    env = {"FLWRMTLS_HOME": str(tmp_path / "home")}
    cert = tmp_path / "cli.pem"
    cert.write_text("x")
    added = run_cli(
        ["config", "add", "prod", "--address", "link:9093", "--root-certificates", str(cert),
         "--default"],
        env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    data = tomllib.loads((tmp_path / "home" / "config.toml").read_text())
    assert data["superlink"]["default"] == "prod"
    assert data["superlink"]["prod"]["address"] == "link:9093"
    listed = run_cli(["config", "list"], env=env)
    assert "* prod" in listed.stdout
    missing = run_cli(
        ["config", "add", "x", "--address", "a:1", "--client-certificate", str(cert)], env=env
    )
    assert missing.returncode == 1
    assert "give both --client-certificate and --client-private-key" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_key_values() -> None:
    parsed = parse_key_values('partition-id=0 num-partitions=2 lr=0.1 name="site a" on=true', "f")
    assert parsed == {
        "partition-id": 0, "num-partitions": 2, "lr": 0.1, "name": "site a", "on": True,
    }  # fmt: skip
    assert parse_key_values("", "f") == {}
    with pytest.raises(InputError, match="is not key=value"):
        parse_key_values("novalue", "--node-config")


def test_a_profile_cannot_be_named_default(tmp_path: Path) -> None:
    config = ConfigFile(tmp_path / "config.toml")
    with pytest.raises(InputError, match="cannot be named 'default'"):
        config.add(Profile("default", "h:1"), make_default=True)
    config.add(Profile("prod", "h:1"), make_default=True)  # control
    assert ConfigFile(tmp_path / "config.toml").profile(None).name == "prod"


def test_strings_from_the_link_cannot_drive_the_terminal() -> None:
    from flwrmtls.cli.output import printable, table

    assert printable("CN=eve\x1b[2J\x07") == "CN=eve\\x1b[2J\\x07"
    assert printable("a traceback\nline two") == "a traceback\nline two"  # control
    assert "\x1b" not in table(["IDENTITY"], [["CN=eve\x1b]0;owned\x07"]])
