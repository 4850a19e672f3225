"""Key file modes: who besides the reader may use a private key file, and what is done then.

As anyone with an account on the machine: a key file mode 0644 hands them the node's (or
the CA's) identity. Each exposed mode sits beside the private one that passes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from flwrmtls.auth.keyformats import load_node_private_key
from flwrmtls.errors import InputError
from flwrmtls.keyfiles import check_ca_key_file, check_key_file, key_file_exposure
from flwrmtls.pki import CertificateAuthority
from flwrmtls.wire.credentials import load_tls_identity

ME, ROOT, OTHER = 1000, 0, 2000


@pytest.mark.parametrize(
    ("mode", "owner", "reader", "exposed_to"),
    [
        (0o600, ME, ME, None),  # the control
        (0o400, ME, ME, None),
        (0o644, ME, ME, "other users"),
        (0o604, ME, ME, "other users"),
        (0o601, ME, ME, "other users"),
        (0o640, ME, ME, "its group"),  # you own it: chmod 600 is yours to do
        (0o660, ROOT, ME, "its group"),  # group write: anyone in it can replace the key
        (0o610, ROOT, ME, "its group"),
        (0o440, ROOT, ME, None),  # Kubernetes fsGroup, csi-driver: root:<group> 0440
        (0o640, OTHER, ME, None),  # Debian's ssl-cert group
        (0o444, ROOT, ME, "other users"),  # what defaultMode 0444 gives: everyone
        (0o440, ROOT, ROOT, "its group"),  # a root process owning it: chmod 600
    ],
)
def test_exposure_table(mode: int, owner: int, reader: int, exposed_to: str | None) -> None:
    assert key_file_exposure(0o100000 | mode, owner=owner, reader=reader) == exposed_to


def test_an_exposed_key_warns_once_per_file_and_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "node.key"
    key.write_text("key")
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="flwrmtls.keyfiles"):
        check_key_file(key, "--flag")
        check_key_file(key, "--flag")  # a rotation re-reads it: not repeated
        assert len(caplog.records) == 1
        assert caplog.records[0].getMessage() == (
            f"--flag: private key file {key} is open to other users (mode 0644): chmod 600 "
            f"{key} (in Kubernetes, mount the secret with defaultMode: 0400, or 0440 with an "
            "fsGroup)"
        )
        key.chmod(0o600)  # control: fixed, silent
        check_key_file(key, "--flag")
        key.chmod(0o664)  # loosened another way: said again
        check_key_file(key, "--flag")
        assert len(caplog.records) == 2
        assert "(mode 0664)" in caplog.records[1].getMessage()
        check_key_file(tmp_path / "absent.key", "--flag")  # the reader names a missing file
        assert len(caplog.records) == 2


def test_the_loaders_check_the_mode(
    pki_dir: CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = pki_dir.issue_node("loaders")
    os.chmod(node.key_path, 0o640)
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(node.key_path.read_bytes())
    ec_key.chmod(0o604)
    with caplog.at_level(logging.WARNING, logger="flwrmtls.keyfiles"):
        load_tls_identity(node.chain_path, node.key_path, cert_flag="--cert", key_flag="--key")
        load_node_private_key(ec_key, "--auth-supernode-private-key")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(f"--key: private key file {node.key_path} is open to its group")
    assert messages[1].startswith(
        f"--auth-supernode-private-key: private key file {ec_key} is open to other users"
    )
    caplog.clear()
    control = pki_dir.issue_node("loaders-control")  # written 0600 by the CA tool
    with caplog.at_level(logging.WARNING, logger="flwrmtls.keyfiles"):
        load_tls_identity(
            control.chain_path, control.key_path, cert_flag="--cert", key_flag="--key"
        )
    assert caplog.records == []


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o610])
def test_the_ca_refuses_its_own_exposed_keys(pki_dir: CertificateAuthority, mode: int) -> None:
    issuing_key = pki_dir.files.issuing_key
    issuing_key.chmod(mode)
    expected = rf"issuing CA key: private key file .* \(mode 0{mode:o}\)"
    with pytest.raises(InputError, match=expected):
        CertificateAuthority.load(pki_dir.directory)
    with pytest.raises(InputError, match="chmod 600"):
        check_ca_key_file(issuing_key, "issuing CA key")
    issuing_key.chmod(0o600)  # control
    CertificateAuthority.load(pki_dir.directory).issue_node("after-chmod")


def test_the_root_key_is_checked_where_it_is_read(
    pki_dir: CertificateAuthority, tmp_path: Path
) -> None:
    successor = CertificateAuthority.create(tmp_path / "successor")
    pki_dir.files.root_key.chmod(0o644)
    with pytest.raises(InputError, match=r"root CA key: private key file .* open to other users"):
        pki_dir.cross_sign(successor.root_certificate)
    pki_dir.files.root_key.chmod(0o600)  # control
    pki_dir.cross_sign(successor.root_certificate)


@pytest.fixture
def pki_dir(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "certs")
