"""What `flwrmtls run` uploads, through the real CLI, link and nodes (issue 11, part 1).

The reproduction: a CA made inside the app directory (`flwrmtls ca init`, `ca issue cli`), an
SSH key and a data folder beside the app. The link keeps bundles and sends them to every
node, so each leaked file would reach every host. Each refusal has its control: the same
app, without the offending file, runs to completion.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.app.appfiles import select_app_files
from flwrmtls.app.bundle import bundle_hash
from flwrmtls.connectionprofiles import ConfigFile
from flwrmtls.control.client import ControlClient
from flwrmtls.errors import FlwrmtlsError

from .deployment import Deployment
from .probe_app import write_probe_app

PROBE_FILES = [
    "probe/__init__.py",
    "probe/client_app.py",
    "probe/server_app.py",
    "pyproject.toml",
]


def make_leaky_app(deployment: Deployment, app: Path) -> None:
    """The issue's app directory: the CA tool run inside it, an SSH key, a data folder."""
    write_probe_app(app)
    for args in (["ca", "init"], ["ca", "issue", "cli", "admin", "--role", "operator"]):
        made = deployment.cli(*args, cwd=app)
        assert made.returncode == 0, made.stderr
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(app / "id_rsa")], check=True
    )
    (app / "data").mkdir()
    (app / "data" / "train.npy").write_bytes(b"\x93NUMPY" + bytes(100))
    for leaked in ["certs/ca/root.key", "certs/ca/issuing.key", "certs/admin.key", "id_rsa"]:
        assert (app / leaked).is_file(), leaked


def stored_bundle(deployment: Deployment, bundle_hash: str) -> list[str]:
    """The members of the bundle the link keeps (and sends to every node)."""
    path = deployment.tmp / "link.db.objects" / bundle_hash[:2] / bundle_hash
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes()), mode="r:gz") as tar:
        return sorted(tar.getnames())


def test_the_bundle_holds_only_the_apps_files(deployment: Deployment, tmp_path: Path) -> None:
    _, nodes = deployment.federation()
    app = tmp_path / "federation"
    make_leaky_app(deployment, app)
    (app / "notes.py").write_text("# scratch\n")
    (app / ".gitignore").write_text("notes.py\n")
    # Run from inside the app directory, as `flwrmtls run` defaults to "."; the ClientApps
    # sleep, so the run (and the bundle the link keeps for it) stays while it is looked at.
    result = deployment.cli(
        "run", "--format", "json", "--run-config", "sleep-on=all sleep-seconds=60 rounds=1",
        cwd=app,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    started = json.loads(result.stdout)
    for node in nodes:
        node.wait_for(r"run 1: app bundle \w+ fetched")
    assert stored_bundle(deployment, started["bundle_hash"]) == PROBE_FILES
    assert started["bundle_files"] == len(PROBE_FILES)
    assert deployment.cli("stop", "1").returncode == 0
    # The summary line of a table run: what was bundled, before anything is started.
    again = deployment.cli("run", "--stream", "--run-config", "rounds=1", cwd=app)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith(f"bundle: {len(PROBE_FILES)} files, ")
    assert "run 2 started: probe 0.1.0" in again.stdout


def test_dry_run_lists_the_bundle_without_contacting_the_link(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = tmp_path / "federation"
    make_leaky_app(deployment, app)
    (app / "probe" / "scratch.py").write_text("notes = 1\n")
    (app / ".gitignore").write_text("probe/scratch.py\n")
    # No link, no profile: --dry-run only reads the app directory.
    listed = deployment.cli("run", str(app), "--dry-run")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"would bundle from {app}:"
    assert [line.split()[0] for line in lines[1:5]] == PROBE_FILES
    assert "  probe/scratch.py  (ignored by .gitignore)" in lines
    assert "  id_rsa  (not an app file type)" in lines
    assert "  certs/ca/root.key  (not an app file type)" in lines
    assert lines[-1].startswith(f"bundle: {len(PROBE_FILES)} files, ")
    assert lines[-1].endswith("nothing was sent (--dry-run)")
    as_json = json.loads(deployment.cli("run", str(app), "--dry-run", "--format", "json").stdout)
    assert [f["path"] for f in as_json["files"]] == PROBE_FILES
    assert {"path": "data/train.npy", "reason": "not an app file type"} in as_json["left_out"]


def test_a_private_key_in_an_app_file_stops_the_run_before_anything_is_sent(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.federation()
    app = write_probe_app(tmp_path / "app")
    made = deployment.cli("ca", "init", cwd=app)
    assert made.returncode == 0, made.stderr
    disguised = app / "probe" / "settings.py"
    disguised.write_bytes((app / "certs" / "ca" / "issuing.key").read_bytes())
    refused = deployment.cli("run", str(app))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert f"{disguised}: holds a PEM" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "bundle:" not in refused.stdout  # nothing was bundled or sent
    listed = deployment.cli("ls", "--format", "json")
    assert json.loads(listed.stdout) == []
    # Control: the same app without the key runs.
    disguised.unlink()
    ok = deployment.cli("run", str(app), "--stream")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def _hand_made_bundle(app: Path, extra: dict[str, bytes]) -> bytes:
    files = {f.name: f.data for f in select_app_files(app).files} | extra
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"certs/ca/issuing.key": b"x"}, "'certs/ca/issuing.key': not an app file type"),
        ({"probe/key.py": b"PEM"}, "'probe/key.py' holds a PEM PRIVATE KEY block"),
    ],
    ids=["not-an-app-file", "private-key"],
)
def test_the_link_refuses_what_an_honest_cli_would_not_bundle(
    deployment: Deployment, tmp_path: Path, extra: dict[str, bytes], message: str
) -> None:
    """As a malicious (or old) CLI: a hand-made bundle sent straight to StartRun."""
    link = deployment.start_link()
    deployment.profile(link.control_port)
    app = write_probe_app(tmp_path / "app")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    extra = {name: pem if data == b"PEM" else data for name, data in extra.items()}
    config = ConfigFile(Path(deployment.env["FLWRMTLS_HOME"]) / "config.toml")
    client = ControlClient(config.profile("test"), str(config.path))
    try:
        honest = _hand_made_bundle(app, {})
        assert client.start_run(honest, bundle_hash(honest), {}) == 1  # control
        evil = _hand_made_bundle(app, extra)
        with pytest.raises(FlwrmtlsError) as caught:
            client.start_run(evil, bundle_hash(evil), {})
        assert "answered INVALID_ARGUMENT: bundle member " in str(caught.value)
        assert message in str(caught.value)
    finally:
        client.close()
    # Nothing of the refused bundle was started.
    runs = json.loads(deployment.cli("ls", "--format", "json").stdout)
    assert [r["run_id"] for r in runs] == [1]
