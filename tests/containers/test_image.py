"""The container image, run as Kubernetes would run it, with podman (``make test-containers``).

A link and two nodes run as containers of the image deploy/container/build.sh built: as its
non-root user, with a read-only root filesystem (podman's --read-only, a tmpfs /tmp) and one
writable volume each for their state; their certificates are cert-manager Secrets mounted as
the kubelet mounts them (``tls.crt``, ``tls.key``, ``ca.crt`` through the ``..data`` symlink,
mode 0440, group 10001 as an ``fsGroup`` gives). The CLI runs on the host, as an operator's
would. The template app (``flwrmtls new``) runs to completion on an image without
scikit-learn: the link and both nodes install it (their pip pointed at a directory of wheels
``make test-containers`` downloads, as an operator points it at a mirror) into environments
on their state volumes, and say so in the run's log. Then, while a second run is in progress
(which installs nothing: it reuses them), node-1's Secret is renewed with a new key
(``rotationPolicy: Always``) by swapping ``..data``: the node takes the new certificate,
keeps its node id, and the run completes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from flwrmtls.testing.processes import CliProcess, run_cli
from tests.deploy.certmanager import CertManagerPki, KeySpec, swap_secret, write_secret
from tests.e2e.deployment import free_port
from tests.ops.probes import probe

pytestmark = pytest.mark.podman

IMAGE = os.environ.get("FLWRMTLS_IMAGE", "localhost/flwrmtls:dev")
WHEELHOUSE = Path(os.environ.get("FLWRMTLS_WHEELHOUSE", "build/wheelhouse")).resolve()
"""Wheels of scikit-learn and what it needs, for the containers' pip (no index)."""
UID = 10001
PODMAN = ["podman", "--runtime", "runc"]
"""crun fails on this kernel; runc works (and the default ulimits do not: see _run)."""


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class Container:
    def __init__(self, name: str) -> None:
        self.name = name

    def start(
        self, volumes: dict[Path, str], command: list[str], env: dict[str, str] | None = None
    ) -> None:
        mounts = [arg for host, target in volumes.items() for arg in ("-v", f"{host}:{target}")]
        variables = [arg for item in (env or {}).items() for arg in ("-e", "=".join(item))]
        started = _podman(
            "run", "-d", "--name", self.name, "--read-only", "--network", "host",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
            *mounts, *variables, IMAGE, *command,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr

    @property
    def log(self) -> str:
        return _podman("logs", self.name).stdout + _podman("logs", self.name).stderr

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.log):
                return match
            state = _podman("inspect", "--format", "{{.State.Running}}", self.name).stdout
            if state.strip() == "false":
                raise AssertionError(f"{self.name} exited before {pattern!r}:\n{self.log[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"{self.name}: no {pattern!r} in {timeout:.0f} s:\n{self.log[-3000:]}")

    def remove(self) -> None:
        _podman("rm", "--force", "--time", "5", self.name)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for container in made:
        container.remove()


def _state_volume(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, UID, UID)
    return path


def test_image_is_non_root_and_holds_no_key() -> None:
    inspected = _podman("image", "inspect", IMAGE)
    assert inspected.returncode == 0, f"{IMAGE} is missing: run `make test-containers`"
    [image] = json.loads(inspected.stdout)
    assert image["Config"]["User"] == f"{UID}:{UID}"
    assert "/var/lib/flwrmtls" in image["Config"]["Volumes"]
    scan = _podman(
        "run", "--rm", "--read-only", "--network", "none", "--ulimit", "nofile=1024:1024",
        "--ulimit", "nproc=4096:4096", "--user", "0", IMAGE, "sh", "-c",
        "grep -rlE -- '^-----BEGIN [A-Z ]*PRIVATE KEY-----$' /opt /etc /var/lib/flwrmtls "
        "/root 2>/dev/null; find /var/lib/flwrmtls -mindepth 1",
    )  # fmt: skip
    assert scan.stdout.strip() == "", f"keys or state in the image:\n{scan.stdout}"


PIP = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheelhouse"}
"""The operator's pip configuration: the mounted wheels only."""


def test_link_and_two_nodes_in_containers_run_the_template_and_survive_a_rotation(
    tmp_path: Path, containers: list[Container]
) -> None:
    assert any(WHEELHOUSE.glob("scikit_learn-*.whl")), (
        f"no scikit-learn wheel in {WHEELHOUSE}: run `make test-containers`"
    )
    assert _podman("run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                   "--ulimit", "nproc=4096:4096", IMAGE, "python", "-c",
                   "import sklearn").returncode != 0  # the image has no scikit-learn  # fmt: skip
    wheels = {WHEELHOUSE: "/wheelhouse:ro"}
    issuer = CertManagerPki(tmp_path / "ca")
    spec = KeySpec("ECDSA", 256, "PKCS1")
    secrets = {
        "link": write_secret(
            tmp_path / "link-tls",
            issuer.issue("/CN=flwrmtls-link", KeySpec("ECDSA", 256, "PKCS8"), server=True).files,
            gid=UID,
        ),
        "node-1": write_secret(
            tmp_path / "node-1-tls", issuer.issue("/O=Hospital A/CN=node-1", spec).files, gid=UID
        ),
        "node-2": write_secret(
            tmp_path / "node-2-tls",
            issuer.issue("/O=Hospital B/CN=node-2", KeySpec("RSA", 2048, "PKCS1")).files,
            gid=UID,
        ),
    }
    cli = write_secret(
        tmp_path / "cli-tls", issuer.issue("/OU=operator/CN=alice", spec).files, mode=0o600
    )
    fleet, control, health = free_port(), free_port(), free_port()
    tls = "/etc/flwrmtls/tls"
    link = Container(f"flwrmtls-test-link-{fleet}")
    containers.append(link)
    link.start(
        {secrets["link"]: f"{tls}:ro", _state_volume(tmp_path / "link-state"): "/var/lib/flwrmtls",
         **wheels},
        [
            "flwrmtls-superlink", f"--fleet-api-address=127.0.0.1:{fleet}",
            f"--control-api-address=127.0.0.1:{control}",
            "--serverappio-api-address=127.0.0.1:0", "--ssl-require-client-auth",
            f"--ssl-ca-certfile={tls}/ca.crt", f"--ssl-certfile={tls}/tls.crt",
            f"--ssl-keyfile={tls}/tls.key", "--cli-role-source=ou",
            "--database=/var/lib/flwrmtls/link.db", f"--health-api-address=127.0.0.1:{health}",
            "--heartbeat-interval=2",
        ],
        PIP,
    )  # fmt: skip
    link.wait_for("link serving")
    assert probe(health) == "SERVING"
    nodes: dict[str, Container] = {}
    for partition, name in enumerate(("node-1", "node-2")):
        node = Container(f"flwrmtls-test-{name}-{fleet}")
        containers.append(node)
        node.start(
            {secrets[name]: f"{tls}:ro",
             _state_volume(tmp_path / f"{name}-state"): "/var/lib/flwrmtls", **wheels},
            ["flwrmtls-supernode", f"--superlink=127.0.0.1:{fleet}",
             f"--root-certificates={tls}/ca.crt", f"--ssl-client-certfile={tls}/tls.crt",
             f"--ssl-client-keyfile={tls}/tls.key", "--state-dir=/var/lib/flwrmtls/node",
             "--clientappio-api-address=127.0.0.1:0",
             f"--node-config=partition-id={partition} num-partitions=2"],
            PIP,
        )  # fmt: skip
        nodes[name] = node
    ids = {name: int(node.wait_for(r"node active: node id (\d+)").group(1))
           for name, node in nodes.items()}  # fmt: skip
    assert "Traceback" not in link.log

    env = {"FLWRMTLS_HOME": str(tmp_path / "home")}
    added = run_cli(
        ["config", "add", "k8s", "--address", f"127.0.0.1:{control}",
         "--root-certificates", str(cli / "ca.crt"), "--client-certificate", str(cli / "tls.crt"),
         "--client-private-key", str(cli / "tls.key"), "--default"], env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    app = tmp_path / "app"
    assert run_cli(["new", str(app)], env=env).returncode == 0
    first = run_cli(["run", str(app), "--stream"], env=env, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _status(env, 1) == "completed"
    # scikit-learn, installed by the link and each node, each line under who did it.
    installing = r"app dependencies: installing scikit-learn>=1\.3 into environment \w{12}"
    for source in ("link", "node CN=node-1,O=Hospital A", "node CN=node-2,O=Hospital B"):
        assert re.search(rf"\d\d:\d\d:\d\d {source}: {installing}", first.stdout), source
        assert re.search(rf"{source}: pip: Successfully installed .*scikit-learn-", first.stdout)
    assert list((tmp_path / "node-1-state" / "node" / "app-envs").glob("*/flwrmtls-env.json"))

    # A second run; node-1's Secret renewed with a new key while it is in progress. node-1 is
    # paused (as a node that stalls) while the Secret is swapped: the run cannot end without
    # its replies, so the swap happens mid-run whatever the machine's speed.
    rounds = 20
    second = CliProcess(
        ["run", str(app), "--stream", "--run-config", f"num-server-rounds={rounds}"],
        tmp_path / "run-2.log", env,
    )  # fmt: skip
    second.start()
    try:
        second.wait_for(rf"round 2/{rounds}", timeout=300)
        assert _podman("pause", nodes["node-1"].name).returncode == 0
        assert _status(env, 2) == "running"
        old_key = (secrets["node-1"] / "tls.key").read_bytes()
        swap_secret(secrets["node-1"], issuer.issue("/O=Hospital A/CN=node-1", spec).files, gid=UID)
        assert (secrets["node-1"] / "tls.key").read_bytes() != old_key
        assert _podman("unpause", nodes["node-1"].name).returncode == 0
        nodes["node-1"].wait_for("certificate changed: serial", timeout=60)
        again = nodes["node-1"].wait_for(
            r"activating again with the new certificate(.|\n)*node active: node id (\d+)", 60
        )
        assert int(again.group(2)) == ids["node-1"]
        assert second.wait_exit(timeout=600) == 0, second.log[-3000:]
    finally:
        _podman("unpause", nodes["node-1"].name)
        second.stop()
    assert _status(env, 2) == "completed"
    assert f"round {rounds}/{rounds}" in second.log
    assert "app dependencies: installing" not in second.log  # the same set: reused
    assert second.log.count("app dependencies: reusing environment") == 3
    new_leaf = x509.load_pem_x509_certificate((secrets["node-1"] / "tls.crt").read_bytes())
    listed = run_cli(["supernode", "list", "--format", "json"], env=env)
    assert listed.returncode == 0, listed.stderr
    by_id = {row["node_id"]: row for row in json.loads(listed.stdout)}
    assert set(by_id) == set(ids.values())  # still two nodes: the renewal made no new one
    assert all(row["status"] == "online" for row in by_id.values())
    fingerprint = new_leaf.fingerprint(hashes.SHA256()).hex()
    assert by_id[ids["node-1"]]["cert_fingerprint"] == f"sha256:{fingerprint}"
    for container in (link, *nodes.values()):
        assert "Traceback" not in container.log


def _status(env: dict[str, str], run_id: int) -> str:
    listed = run_cli(["ls", "--run-id", str(run_id), "--format", "json"], env=env)
    assert listed.returncode == 0, listed.stderr
    [run] = json.loads(listed.stdout)
    return str(run["status"])


def test_podman_is_there() -> None:
    """``make test-containers`` installs what it needs; without it this says what is missing."""
    missing = [
        tool for tool in ("podman", "buildah", "mmdebstrap", "runc") if not shutil.which(tool)
    ]
    assert not missing, f"missing {', '.join(missing)}: run `make test-containers` (apt-get)"
