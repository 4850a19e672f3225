"""TlsWatcher on its own: the link's TLS files replaced under it, with no link around it.

What a node sees through a real link when the files change is tests/e2e/test_rotation.py's and
tests/auth/test_revocation.py's; here each rule of flwrmtls.link.reload, file by file.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from flwrmtls.link.reload import TlsFiles, TlsMaterial, TlsWatcher, Trust, load_material
from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.testing.pki import TestPki


class Seen:
    def __init__(self) -> None:
        self.trust: list[TlsMaterial] = []
        self.server_key: list[TlsMaterial] = []


def copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    target.chmod(0o600)


def watched(tmp_path: Path, pki: TestPki) -> tuple[TlsFiles, TlsWatcher, Seen]:
    """The server's files and the CA bundle copied where the test may replace them."""
    chain, key = pki.paths("server")
    files = TlsFiles(
        certfile=tmp_path / "tls.crt", keyfile=tmp_path / "tls.key", client_ca=tmp_path / "ca.crt"
    )
    copy(chain, files.certfile)
    copy(key, files.keyfile)
    copy(pki.trust_bundle_path, tmp_path / "ca.crt")
    seen = Seen()
    watcher = TlsWatcher(
        files, load_material(files), on_trust=seen.trust.append,
        on_server_key=seen.server_key.append,
    )  # fmt: skip
    return files, watcher, seen


def test_unchanged_files_change_nothing(tmp_path: Path, pki: TestPki) -> None:
    files, watcher, seen = watched(tmp_path, pki)
    fetch = watcher.fetcher("fleet", Trust.NODES)
    files.certfile.write_bytes(files.certfile.read_bytes())  # rewritten, same bytes
    assert not watcher.poll()
    assert fetch() is None  # grpc keeps the material it has
    assert watcher.generation == 0
    assert (seen.trust, seen.server_key) == ([], [])


def test_a_renewed_server_certificate_reaches_each_listener_once(
    tmp_path: Path, pki: TestPki
) -> None:
    files, watcher, seen = watched(tmp_path, pki)
    fleet = watcher.fetcher("fleet", Trust.NODES)
    control = watcher.fetcher("control", Trust.CLI)
    renewed = pki.ca.issue_server("renewed", options=LeafOptions(out_dir=tmp_path / "new"))
    copy(renewed.chain_path, files.certfile)
    copy(renewed.key_path, files.keyfile)
    assert watcher.poll()
    assert watcher.material.identity.leaf.serial_number == renewed.serial
    assert watcher.generation == 1
    assert fleet() is not None
    assert control() is not None
    assert fleet() is None
    assert control() is None
    assert len(seen.server_key) == 1  # a new key: EC-key signatures name it
    assert seen.trust == []  # no CA bundle changed


def test_a_broken_file_keeps_the_last_good_material_and_says_so_once(
    tmp_path: Path, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    files, watcher, seen = watched(tmp_path, pki)
    good = watcher.material
    fetch = watcher.fetcher("fleet", Trust.NODES)
    caplog.set_level(logging.ERROR, logger="flwrmtls.link.reload")
    other = CertificateAuthority.create(tmp_path / "other").issue_server("server")
    copy(other.key_path, files.keyfile)  # a key that is not the certificate's
    assert not watcher.poll()
    assert not watcher.poll()  # the same broken content: not reported again
    lines = [r.getMessage() for r in caplog.records if r.name == "flwrmtls.link.reload"]
    assert len(lines) == 1
    assert "keeping the last good" in lines[0]
    assert "--ssl-keyfile" in lines[0]
    assert watcher.material is good
    assert fetch() is None
    # The control: the matching certificate arrives; the pair is taken on the next poll.
    copy(other.chain_path, files.certfile)
    assert watcher.poll()
    assert watcher.material.identity.leaf.serial_number == other.serial
    assert fetch() is not None
    assert len(seen.server_key) == 1


def test_a_new_client_ca_bundle_replaces_the_trust(tmp_path: Path, pki: TestPki) -> None:
    files, watcher, seen = watched(tmp_path, pki)
    successor = CertificateAuthority.create(tmp_path / "successor")
    assert files.client_ca is not None
    files.client_ca.write_bytes(
        pki.trust_bundle_path.read_bytes() + successor.trust_bundle_path.read_bytes()
    )
    assert watcher.poll()
    assert [len(m.client_ca_certificates) for m in seen.trust] == [2]
    assert watcher.material.roots(Trust.NODES) == files.client_ca.read_bytes()
    assert seen.server_key == []  # the server's key did not change
    files.client_ca.write_bytes(b"not a bundle")  # broken: the two-CA trust stays
    assert not watcher.poll()
    assert len(seen.trust) == 1
    assert len(watcher.material.client_ca_certificates) == 2
