"""Small wheels written by the tests themselves, so that app environments are installed by
real pip into real virtualenvs without an index: ``--no-index --find-links`` to a directory
of these (pip's own ``PIP_NO_INDEX`` / ``PIP_FIND_LINKS`` in the link's or node's
environment, as an operator would configure it).

A wheel is a zip with the package, its ``METADATA``, ``WHEEL`` and ``RECORD`` (PEP 427): no
build backend is involved, which is also why the tests need none.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["pip_environment", "write_hostile_sdist", "write_wheel"]


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(
    directory: Path,
    name: str,
    version: str,
    modules: Mapping[str, str],
    *,
    requires: Sequence[str] = (),
) -> Path:
    """``<directory>/<name>-<version>-py3-none-any.whl`` holding ``modules`` (path -> source,
    e.g. ``{"depa/__init__.py": "VERSION = '1.0'"}``), requiring ``requires``."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {path: text.encode() for path, text in modules.items()}
    files[f"{info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: flwrmtls-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(f"{path},sha256={_digest(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def pip_environment(wheelhouse: Path) -> dict[str, str]:
    """What the environment of a link or node whose operator points pip at ``wheelhouse``
    alone sets (over this machine's): no index, no pip configuration file."""
    return {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


_BACKEND = """\
from pathlib import Path

Path({marker!r}).write_text("a build backend of the bundle's choosing ran here")


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("this sdist never builds")


def get_requires_for_build_wheel(config_settings=None):
    return []
"""


def write_hostile_sdist(directory: Path, name: str, version: str, marker: Path) -> Path:
    """An sdist (``<name>-<version>.tar.gz``) whose in-tree build backend writes ``marker``
    as soon as pip imports it: code the submitter picks, run by whoever builds it."""
    dist = name.replace("-", "_")
    root = f"{dist}-{version}"
    files = {
        f"{root}/pyproject.toml": (
            '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
            f'\n[project]\nname = "{name}"\nversion = "{version}"\n'
        ),
        f"{root}/backend.py": _BACKEND.format(marker=str(marker)),
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    directory.mkdir(parents=True, exist_ok=True)
    sdist = directory / f"{root}.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return sdist
