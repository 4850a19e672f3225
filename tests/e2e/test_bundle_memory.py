"""A bundle's headers cannot take the link's memory: through a real link process.

A 250 KB bundle whose first header is a 256 MiB PAX record (tarfile would read it whole, with
copies: about three times that, measured) is refused at StartRun naming the header, and the
link's peak resident memory (``VmHWM``) barely moves; beside it, a bundle ``flwrmtls run``
builds is accepted by the same link.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from flwrmtls.app.bundle import bundle_hash
from flwrmtls.app.bundling import build_bundle
from flwrmtls.connectionprofiles import ConfigFile
from flwrmtls.control.client import ControlClient
from flwrmtls.errors import FlwrmtlsError

from ..app.test_bundle_headers import extended_header_bundle
from .deployment import Deployment
from .probe_app import write_probe_app

MIB = 1 << 20


def peak_resident_bytes(pid: int) -> int:
    """The process's peak resident memory so far (Linux: VmHWM in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_a_huge_pax_header_is_refused_without_the_links_memory_growing(
    deployment: Deployment, tmp_path: Path
) -> None:
    link = deployment.start_link()
    deployment.profile(link.control_port)
    config = Path(deployment.env["FLWRMTLS_HOME"]) / "config.toml"
    control = ControlClient(ConfigFile(config).profile("test"), str(config))
    normal = build_bundle(write_probe_app(tmp_path / "app"))
    assert control.start_run(normal, bundle_hash(normal), {}) == 1  # control: accepted
    assert link.process is not None
    before = peak_resident_bytes(link.process.pid)
    bomb = extended_header_bundle(tarfile.XHDTYPE, 256 * MIB)
    assert len(bomb) < 300_000
    with pytest.raises(FlwrmtlsError) as refused:
        control.start_run(bomb, bundle_hash(bomb), {})
    assert "bundle has a PAX extended header (268435456 bytes): a bundle is a plain ustar " \
        "archive" in str(refused.value)  # fmt: skip
    grown = peak_resident_bytes(link.process.pid) - before
    assert grown < 64 * MIB, f"the link's peak memory grew by {grown / MIB:.0f} MiB"
    assert link.process.poll() is None
    assert deployment.cli("ls").returncode == 0  # the link serves on
