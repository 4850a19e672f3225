"""CertificateWatcher on its own, with the fake clock: the node's certificate files replaced
under it, and the warnings before it expires.

A node process taking a rotated certificate over a real link is tests/e2e/test_rotation.py's.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from flwrmtls.node.rotation import CertificateWatcher
from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.pki.ca import DEFAULT_LEAF_OPTIONS
from flwrmtls.testing.clock import FakeClock
from flwrmtls.wire.credentials import TlsIdentity, load_tls_identity

LOGGER = "flwrmtls.node.rotation"


def copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    target.chmod(0o600)


class Node:
    """The files a node was started with, its watcher and what the watcher handed it."""

    def __init__(self, tmp_path: Path, ca: CertificateAuthority, clock: FakeClock) -> None:
        self.ca = ca
        self.dir = tmp_path
        self.certfile, self.keyfile = tmp_path / "tls.crt", tmp_path / "tls.key"
        self.install("node-1")
        identity = load_tls_identity(self.certfile, self.keyfile, cert_flag="cert", key_flag="key")
        self.taken: list[TlsIdentity] = []
        self.watcher = CertificateWatcher(
            self.certfile, self.keyfile, identity, on_change=self.taken.append,
            warning_days=14, clock=clock,
        )  # fmt: skip

    def install(self, name: str, options: LeafOptions = DEFAULT_LEAF_OPTIONS) -> int:
        """Issue ``name`` (the same Subject, CN=node-1) and write it over the node's files."""
        placed = dataclasses.replace(options, out_dir=self.dir / name)
        issued = self.ca.issue_node(name, common_name="node-1", options=placed)
        copy(issued.chain_path, self.certfile)
        copy(issued.key_path, self.keyfile)
        return issued.serial


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(tmp_path: Path, clock: FakeClock) -> Node:
    return Node(tmp_path, CertificateAuthority.create(tmp_path / "ca", clock=clock), clock)


def test_a_reissued_certificate_is_taken_once(node: Node) -> None:
    assert not node.watcher.poll()  # nothing changed
    serial = node.install("node-1-reissued")
    assert node.watcher.poll()
    assert [identity.leaf.serial_number for identity in node.taken] == [serial]
    assert node.watcher.identity is node.taken[0]
    assert not node.watcher.poll()  # taken once


def test_a_half_written_pair_keeps_the_certificate_in_use(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    before = node.watcher.identity
    other = node.ca.issue_node("other", options=LeafOptions(out_dir=node.dir / "other"))
    copy(other.chain_path, node.certfile)  # the certificate written, its key not yet
    assert not node.watcher.poll()
    assert not node.watcher.poll()  # reported once
    assert [r.name for r in caplog.records].count(LOGGER) == 1
    assert "keeping the current" in caplog.records[-1].getMessage()
    assert node.watcher.identity is before
    assert node.taken == []
    copy(other.key_path, node.keyfile)  # the control: the key follows, the pair is taken
    assert node.watcher.poll()
    assert node.taken[0].leaf.serial_number == other.serial


def test_an_expired_replacement_is_refused_and_a_good_one_taken(
    node: Node, clock: FakeClock
) -> None:
    now = clock.now()
    node.install(
        "expired",
        LeafOptions(not_before=now - timedelta(days=9), not_after=now - timedelta(days=1)),
    )
    assert not node.watcher.poll()
    assert node.taken == []
    serial = node.install("fresh")
    assert node.watcher.poll()
    assert node.taken[0].leaf.serial_number == serial


def test_expiry_is_warned_at_start_then_once_a_day(
    node: Node, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == LOGGER]

    node.watcher.warn_if_expiring()
    assert warnings() == []  # 365 days left: nothing to say (the control)
    clock.advance(timedelta(days=360).total_seconds())  # 5 days left
    node.watcher.warn_if_expiring()
    assert len(warnings()) == 1
    assert warnings()[0].startswith("this node's certificate expires on ")
    assert "(in 5.0 days): have it reissued" in warnings()[0]
    clock.advance(timedelta(hours=23).total_seconds())
    node.watcher.warn_if_expiring()
    assert len(warnings()) == 1  # not again within the day
    clock.advance(timedelta(hours=1).total_seconds())
    node.watcher.warn_if_expiring()
    assert len(warnings()) == 2
    node.install("node-1-renewed")  # a renewed certificate is taken and warned about afresh
    assert node.watcher.poll()
    node.watcher.warn_if_expiring()
    assert len(warnings()) == 2  # a year left again
