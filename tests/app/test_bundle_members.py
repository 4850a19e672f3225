"""What the link refuses in a bundle's members, whoever built it, beside the plain bundle of
the same files, which passes: two members on one path, of one name however it is written or
a file where a directory is (a node reads the first pyproject.toml, unpacking keeps the
last, so the link's check would not be of what runs; unpacking would fail midway), refused
by every reader before a byte is written; a
pyproject.toml over 1 MiB (refused before it is read, by the link and by a node reading the
app config), and an archive cut inside a member (an error of gzip or tarfile while a member
is read is a BundleError, never a traceback)."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from flwrmtls.app.bundle import BundleError, bundle_app_config, bundle_hash, extract_bundle
from flwrmtls.app.bundling import check_bundle

from .test_bundle_headers import PYPROJECT

OTHER = PYPROJECT.replace(b'"plain"', b'"other"')
SOURCE = random.Random(14).randbytes(500_000)  # incompressible: half the archive cuts it


DIRECTORY = None
"""A member's data that makes it a directory entry."""


def _bundle(*members: tuple[str, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_plain_bundle_passes(tmp_path: Path) -> None:
    bundle = _bundle(
        ("pyproject.toml", PYPROJECT),
        ("plain", DIRECTORY),
        ("plain/", DIRECTORY),
        ("plain/s.py", SOURCE),
    )  # fmt: skip  (a directory entry twice is harmless)
    assert check_bundle(bundle).name == "plain"
    assert bundle_app_config(bundle).name == "plain"
    app = extract_bundle(bundle, bundle_hash(bundle), tmp_path / "app")
    assert (app / "plain" / "s.py").read_bytes() == SOURCE


@pytest.mark.parametrize(
    "members",
    [
        (("pyproject.toml", PYPROJECT), ("pyproject.toml", OTHER)),
        (("pyproject.toml", PYPROJECT), ("./pyproject.toml", OTHER)),
        (("pyproject.toml", PYPROJECT), ("plain/s.py", SOURCE), ("plain//s.py", b"x = 1\n")),
        (("pyproject.toml", PYPROJECT), ("plain.py", b"x = 1\n"), ("plain.py/s.py", SOURCE)),
        (("pyproject.toml", PYPROJECT), ("plain.py/s.py", SOURCE), ("plain.py", b"x = 1\n")),
        (("pyproject.toml", PYPROJECT), ("plain/s.py", DIRECTORY), ("plain/s.py", SOURCE)),
        (("pyproject.toml", PYPROJECT), ("plain/s.py", SOURCE), ("plain/s.py", DIRECTORY)),
    ],
    ids=[
        "pyproject-twice", "pyproject-as-dot-slash", "source-as-double-slash",
        "file-then-below-it", "below-then-file", "directory-then-file", "file-then-directory",
    ],
)  # fmt: skip
def test_two_members_on_one_path_are_refused_by_every_reader(
    members: tuple[tuple[str, bytes | None], ...], tmp_path: Path
) -> None:
    bundle = _bundle(*members)
    with pytest.raises(BundleError, match="takes a path another member takes"):
        check_bundle(bundle)
    with pytest.raises(BundleError, match="takes a path another member takes"):
        extract_bundle(bundle, bundle_hash(bundle), tmp_path / "app")
    assert not (tmp_path / "app").exists()  # refused before a byte was written


def test_a_pyproject_over_one_mib_is_refused_before_it_is_read() -> None:
    padded = PYPROJECT + b"#" * (1 << 20)
    bundle = _bundle(("pyproject.toml", padded))
    with pytest.raises(BundleError, match=r"pyproject\.toml is over 1 MiB"):
        check_bundle(bundle)
    with pytest.raises(BundleError, match=r"pyproject\.toml is over 1 MiB"):
        bundle_app_config(bundle)


def test_an_archive_cut_inside_a_member_is_a_bundle_error(tmp_path: Path) -> None:
    whole = _bundle(("pyproject.toml", PYPROJECT), ("plain/s.py", SOURCE))
    cut = whole[: len(whole) // 2]  # the header of plain/s.py read, its content cut
    with pytest.raises(BundleError, match=r"not a valid \.tar\.gz"):
        check_bundle(cut)
    with pytest.raises(BundleError, match=r"not a valid \.tar\.gz"):
        extract_bundle(cut, bundle_hash(cut), tmp_path / "app")
