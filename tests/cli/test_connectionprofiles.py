"""config.toml profiles: written with tomli-w, read with tomllib, paths resolved as documented."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from flwrmtls.connectionprofiles import ConfigFile, Profile
from flwrmtls.errors import InputError
from flwrmtls.keyvalues import parse_key_values
from flwrmtls.pki import CertificateAuthority
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
    authority = CertificateAuthority.create(tmp_path / "ca")
    cert = authority.trust_bundle_path
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
    assert printable("a traceback\nline two", keep_newlines=True) == "a traceback\nline two"
    assert "\x1b" not in table(["IDENTITY"], [["CN=eve\x1b]0;owned\x07"]])
    # A table cell is one line: a newline in it cannot forge a row.
    assert table(["REASON"], [["failed\n3  fake  completed"]]).splitlines() == [
        "REASON",
        "failed\\n3  fake  completed",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('insecure = "false"', "insecure = 'false' is a string; expected true or false"),
        ("insecure = 0", "insecure = 0 is an integer; expected true or false"),
        ("address = 9093", "address = 9093 is an integer; expected the link's Control API"),
        ("root-certificates = true", "root-certificates = True is a boolean; expected a file"),
        ('client-certificate = ["a.pem"]', "client-certificate = ['a.pem'] is an array"),
        ("client-private-key = 2024-01-01", "is a date or time; expected a file path"),
        ('root-certificate = "ca.crt"', "unknown key 'root-certificate' (a profile holds"),
        ('root-certificates = ""', "root-certificates is empty"),
    ],
)
def test_every_profile_key_has_one_type(tmp_path: Path, line: str, expected: str) -> None:
    """A wrong type is one line naming the profile, the key, what it holds and what it must;
    ``insecure = "false"`` used to count as true. The control: the same profile with the
    value of the right type."""
    path = tmp_path / "config.toml"
    base = '[superlink]\ndefault = "p"\n[superlink.p]\n'
    key = line.split(" = ")[0]
    good = {
        "insecure": "insecure = false",
        "address": 'address = "h:1"',
        "root-certificates": 'root-certificates = "ca.crt"',
        "client-certificate": 'client-certificate = "a.pem"',
        "client-private-key": 'client-private-key = "a.key"',
        "root-certificate": "",
    }[key]
    address = "" if key == "address" else 'address = "h:1"\n'
    path.write_text(base + address + line + "\n")
    with pytest.raises(InputError) as refused:
        ConfigFile(path).profile(None)
    message = str(refused.value)
    assert message.startswith(f"{path}: profile 'p': ")
    assert expected in message
    assert "\n" not in message
    path.write_text(base + address + good + "\n")
    profile = ConfigFile(path).profile(None)
    assert profile.insecure is False
    assert profile.address == "h:1"


def test_insecure_true_is_the_only_way_to_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[superlink.p]\naddress = "h:1"\ninsecure = true\n')
    assert ConfigFile(path).profile("p").insecure is True
    path.write_text('[superlink.p]\naddress = "h:1"\ninsecure = "true"\n')
    with pytest.raises(InputError, match="insecure = 'true' is a string"):
        ConfigFile(path).profile("p")


def test_the_superlink_table_has_types_too(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[superlink]\ndefault = 3\n[superlink.p]\naddress = "h:1"\n')
    with pytest.raises(InputError, match=r"\[superlink\] default = 3 is an integer; expected"):
        ConfigFile(path).profile(None)
    path.write_text('[superlink]\nprod = "h:1"\n[superlink.p]\naddress = "h:1"\n')
    with pytest.raises(InputError, match=r"\[superlink\] prod = 'h:1' is a string; expected a"):
        ConfigFile(path).profile("p")
    path.write_text('[superlink]\ndefault = "p"\n[superlink.p]\naddress = "h:1"\n')  # control
    assert ConfigFile(path).profile(None).name == "p"


def test_a_broken_profile_does_not_stop_another(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[superlink.bad]\naddress = "h:1"\ninsecure = "no"\n[superlink.good]\naddress = "h:2"\n'
    )
    assert ConfigFile(path).profile("good").address == "h:2"
    with pytest.raises(InputError, match="profile 'bad'"):
        ConfigFile(path).profile("bad")


def test_config_add_refuses_a_tls_profile_without_root_certificates(tmp_path: Path) -> None:
    env = {"FLWRMTLS_HOME": str(tmp_path / "home")}
    refused = run_cli(["config", "add", "x", "--address", "a:1"], env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "flwrmtls: error: no --root-certificates: give --root-certificates FILE, the CA bundle "
        "that signed the link's certificate; without it grpc would trust its own bundled public "
        "CAs (to trust this machine's CA store, give its file, e.g. "
        "/etc/ssl/certs/ca-certificates.crt)"
    )
    assert not (tmp_path / "home" / "config.toml").exists()
    plaintext = run_cli(["config", "add", "x", "--address", "a:1", "--insecure"], env=env)
    assert plaintext.returncode == 0, plaintext.stderr  # control: plaintext says so itself


def test_config_add_checks_what_each_file_is_before_writing(tmp_path: Path) -> None:
    """Swapped certificate and key, a key where the CA bundle goes, a key of another
    certificate: one line each naming the flag, and no profile written. Control: the right
    files are written."""
    env = {"FLWRMTLS_HOME": str(tmp_path / "home")}
    authority = CertificateAuthority.create(tmp_path / "ca")
    alice = authority.issue_cli("alice", role="operator")
    bob = authority.issue_cli("bob", role="user")
    roots = str(authority.trust_bundle_path)

    def add(*files: str) -> str:
        result = run_cli(["config", "add", "p", "--address", "link:9093", *files], env=env)
        assert result.returncode == 1, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    swapped = add("--root-certificates", roots, "--client-certificate", str(alice.key_path),
                  "--client-private-key", str(alice.chain_path))  # fmt: skip
    assert "did you swap --client-certificate and --client-private-key?" in swapped
    assert "holds a private key" in add("--root-certificates", str(alice.key_path))
    mismatch = add("--root-certificates", roots, "--client-certificate", str(alice.chain_path),
                   "--client-private-key", str(bob.key_path))  # fmt: skip
    assert "does not match the certificate" in mismatch
    assert not (tmp_path / "home" / "config.toml").exists()
    good = run_cli(
        ["config", "add", "p", "--address", "link:9093", "--root-certificates", roots,
         "--client-certificate", str(alice.chain_path),
         "--client-private-key", str(alice.key_path)],
        env=env,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
