"""A bundle is a plain ustar archive: headers whose data tarfile would hold in memory are
refused before it reads them, and the builder never writes one.

Every extended header kind (PAX extended and global, Solaris, GNU long name and long link,
GNU sparse) is refused by the link's check and by extraction, naming the kind, beside a plain
bundle of the same files, which passes. The builder writes ustar: a non-ASCII name and a long
path split at a '/' round-trip without an extended header; a path ustar cannot hold is refused
with the path named.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from pathlib import Path

import pytest

from flwrmtls.app.bundle import BundleError, bundle_hash, extract_bundle
from flwrmtls.app.bundling import build_bundle, check_bundle
from flwrmtls.errors import InputError

PYPROJECT = b"""\
[project]
name = "plain"
version = "1.0"

[tool.flwrmtls.app.components]
serverapp = "plain.s:app"
clientapp = "plain.c:app"
"""

KINDS = {
    tarfile.XHDTYPE: "a PAX extended header",
    tarfile.XGLTYPE: "a PAX global header",
    tarfile.SOLARIS_XHDTYPE: "a Solaris extended header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long-name header",
    tarfile.GNUTYPE_LONGLINK: "a GNU long-link header",
    tarfile.GNUTYPE_SPARSE: "a GNU sparse file",
}


def _header(name: str, size: int, kind: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def extended_header_bundle(kind: bytes, size: int) -> bytes:
    """A .tar.gz whose first header is of ``kind`` with ``size`` bytes of data (one PAX record
    of that length: what tarfile would read whole), then a pyproject.toml. Compressed, 100 MB
    of header take about 100 KB."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(_header("././@Header", size, kind))
        record = f"{size} comment=".encode()
        gz.write(record)
        left = size - len(record) - 1
        block = b"a" * (1 << 20)
        while left > 0:
            gz.write(block[: min(left, len(block))])
            left -= len(block)
        gz.write(b"\n" + b"\0" * (-size % 512))
        gz.write(_header("pyproject.toml", len(PYPROJECT), tarfile.REGTYPE))
        gz.write(PYPROJECT + b"\0" * (-len(PYPROJECT) % 512) + b"\0" * 1024)
    return out.getvalue()


def plain_bundle() -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(_header("pyproject.toml", len(PYPROJECT), tarfile.REGTYPE))
        gz.write(PYPROJECT + b"\0" * (-len(PYPROJECT) % 512) + b"\0" * 1024)
    return out.getvalue()


@pytest.mark.parametrize("kind", list(KINDS), ids=[k.decode() for k in KINDS])
def test_an_extended_header_is_refused_before_tarfile_reads_it(kind: bytes, tmp_path: Path) -> None:
    control = plain_bundle()
    assert check_bundle(control).name == "plain"
    extract_bundle(control, bundle_hash(control), tmp_path / "control")
    bundle = extended_header_bundle(kind, 64 << 10)
    expected = f"bundle has {KINDS[kind]} ({64 << 10} bytes): a bundle is a plain ustar archive"
    with pytest.raises(BundleError, match=re.escape(expected)):
        check_bundle(bundle)  # the link's check, at StartRun
    target = tmp_path / "out"
    with pytest.raises(BundleError, match=re.escape(expected)):
        extract_bundle(bundle, bundle_hash(bundle), target)  # an app process unpacking it
    assert not target.exists()


def write_app(directory: Path, *extra: str) -> Path:
    (directory / "plain").mkdir(parents=True)
    (directory / "pyproject.toml").write_bytes(PYPROJECT)
    for name in ("plain/__init__.py", *extra):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    return directory


def test_the_builder_writes_ustar_that_its_readers_accept(tmp_path: Path) -> None:
    long_path = f"plain/{'d' * 120}/{'f' * 90}.py"  # 219 bytes: a 126-byte prefix, a 93 name
    app = write_app(tmp_path / "app", "plain/données.py", long_path)
    bundle = build_bundle(app)
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        members = tar.getmembers()
        assert tar.pax_headers == {}
    assert [member.pax_headers for member in members] == [{}] * len(members)
    assert {member.name for member in members} >= {"plain/données.py", long_path}
    assert check_bundle(bundle).name == "plain"
    unpacked = extract_bundle(bundle, bundle_hash(bundle), tmp_path / "out")
    assert (unpacked / long_path).read_text() == "x = 1\n"
    assert (unpacked / "plain" / "données.py").is_file()


def test_a_path_ustar_cannot_hold_is_refused_naming_it(tmp_path: Path) -> None:
    name = f"plain/{'n' * 101}.py"  # one component over 100 bytes: no '/' to split at
    app = write_app(tmp_path / "app", name)
    with pytest.raises(InputError) as refused:
        build_bundle(app)
    assert str(refused.value) == (
        f"{app / name}: name is too long: a bundle holds paths of at most 100 bytes, or 255 "
        "split at a '/' into at most 155 and 100; shorten the path"
    )
    (app / name).unlink()
    assert check_bundle(build_bundle(app)).name == "plain"  # control
