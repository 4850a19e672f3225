"""What a bundle may hold: building one from an app directory (``flwrmtls run``) and the
link's check of one it receives, whoever built it.

Rules:

- A bundle holds what :mod:`flwrmtls.app.appfiles` selects: the app's sources and configs,
  never a private key, data, hidden files or what the app's ignore files leave out.
- A bundle is deterministic: the same files give the same bytes. Entries are regular files
  only, sorted by path, with mtime 0, uid/gid 0, no owner names, mode 0755 when the owner may
  execute the file and 0644 otherwise; the gzip header has mtime 0 and no file name. The
  builder writes a plain ustar archive (a path longer than ustar holds is refused with the
  path named), which is all readers accept (:mod:`flwrmtls.app.bundle`).
- The link accepts a bundle only when every member is one ``flwrmtls run`` would bundle
  (:func:`check_bundle`: an app file type, not hidden, no private key, no name twice),
  whatever built it.

Only the CLI and the link import this module (:mod:`flwrmtls.app.appfiles` loads pathspec,
:mod:`flwrmtls.app.keyscan` cryptography); the node and the app processes read bundles with
:mod:`flwrmtls.app.bundle` alone.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from flwrmtls.app.appfiles import AppFiles, member_problem, select_app_files
from flwrmtls.app.bundle import (
    AppConfig,
    BundleError,
    bundled_app_config,
    read_app_config,
    read_bundle,
    read_bundled_pyproject,
)
from flwrmtls.app.keyscan import private_key_kind, private_key_kind_in_stream
from flwrmtls.errors import InputError

__all__ = ["build_bundle", "check_bundle"]


def build_bundle(app_dir: Path, files: AppFiles | None = None) -> bytes:
    """The app directory as a deterministic .tar.gz (checked with read_app_config first):
    ``files``, or what :func:`~flwrmtls.app.appfiles.select_app_files` selects."""
    read_app_config(app_dir)
    if files is None:
        files = select_app_files(app_dir)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for file in files.files:
            info = tarfile.TarInfo(file.name)
            info.size = len(file.data)
            info.mode = 0o755 if file.executable else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            _add_ustar(tar, info, file.data, app_dir)
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as gz:
        gz.write(tar_bytes.getvalue())
    return compressed.getvalue()


def _add_ustar(tar: tarfile.TarFile, info: tarfile.TarInfo, data: bytes, app_dir: Path) -> None:
    try:
        tar.addfile(info, io.BytesIO(data))
    except ValueError as error:  # tarfile: "name is too long", "linkname is too long"
        raise InputError(
            f"{app_dir / info.name}: {error}: a bundle holds paths of at most 100 bytes, or "
            "255 split at a '/' into at most 155 and 100; shorten the path"
        ) from None


_UPGRADE = "build bundles with `flwrmtls run` (an older CLI bundles more: upgrade it)"


def check_bundle(bundle: bytes) -> AppConfig:
    """The link's check of a bundle it receives, whoever built it: every member is a safe
    path taken by no other member (:func:`~flwrmtls.app.bundle.read_bundle`), a file type
    ``flwrmtls run`` bundles, and holds no private key; returns the app config from its
    pyproject.toml. ``BundleError`` names the first member refused."""
    config: AppConfig | None = None
    with read_bundle(bundle) as files:  # paths checked safe and taken once as they come
        for name, member, source in files:
            problem = member_problem(name)
            if problem is not None:
                raise BundleError(f"bundle member {name!r}: {problem}; {_UPGRADE}")
            if name == "pyproject.toml":
                pyproject = read_bundled_pyproject(member, source)
                _refuse_private_key(name, private_key_kind(pyproject))
                config = bundled_app_config(pyproject)
            else:  # read a window at a time: a member may be large
                _refuse_private_key(name, private_key_kind_in_stream(source.read))
    if config is None:
        raise BundleError("the bundle has no pyproject.toml at its top")
    return config


def _refuse_private_key(name: str, kind: str | None) -> None:
    if kind is not None:
        raise BundleError(
            f"bundle member {name!r} holds {kind}: the link does not accept private keys in "
            "bundles (they would reach every node)"
        )
