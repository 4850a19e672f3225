"""Which files of an app directory are the app: what ``flwrmtls run`` bundles and the link
accepts. A bundle goes to the link and to every node, and every app process can read it, so
it holds the app's sources and configuration and nothing else.

Rules (the first that applies decides):

1. Always left out: hidden files and directories (a name starting with ``.``: ``.git``,
   ``.venv``, ``.env``), ``__pycache__``, ``*.egg-info``, a virtual environment (a directory
   holding ``pyvenv.cfg``), and ``build/`` and ``dist/`` at the top.
2. Left out: what the app's ignore files match. ``.gitignore`` and ``.flwrmtlsignore``
   (:data:`IGNORE_FILE`), in the app directory or any directory below it, in git's syntax and
   meaning (pathspec's ``GitIgnoreSpec``): a file's patterns apply below its directory; the
   deepest file with a matching pattern decides; in one directory ``.flwrmtlsignore`` comes
   after ``.gitignore``, so its ``!pattern`` can take back what ``.gitignore`` leaves out
   (never past rules 1 and 3). An ignored directory is not entered.
3. Left out: a file whose type is not an app's (:data:`APP_SUFFIXES`): data, models, keys,
   certificates, archives and binaries never travel in a bundle.
4. Refused, one line naming the file (nothing is bundled): a symbolic link that would be
   bundled (to a directory, or named like an app file), and a file that holds a private key
   (:func:`flwrmtls.app.keyscan.private_key_kind`), whatever its name.

:func:`member_problem` is rules 1 and 3 for one path inside a bundle (the link's check of
what a bundle holds, see :func:`flwrmtls.app.bundling.check_bundle`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pathspec import GitIgnoreSpec

from flwrmtls.app.keyscan import private_key_kind
from flwrmtls.errors import InputError

__all__ = [
    "APP_SUFFIXES",
    "IGNORE_FILE",
    "AppFile",
    "AppFiles",
    "LeftOut",
    "member_problem",
    "select_app_files",
]

APP_SUFFIXES = frozenset({".py", ".toml", ".md", ".rst", ".txt", ".cfg", ".ini", ".yaml", ".yml"})
"""An app's file types: Python sources, and configuration and documentation as text.
Flower's builder takes ``.py``, ``.toml`` and ``.md``; the rest are config formats apps read
(``setup.cfg``, Hydra's YAML, ``requirements.txt``). ``.json`` is not among them: in an ML
working directory it is as often a credential (``kaggle.json``, a cloud service account) or a
result as it is a config. Neither are ``.sh`` scripts or notebooks."""

IGNORE_FILE = ".flwrmtlsignore"
"""The app's own ignore file, read after ``.gitignore``, in git's syntax."""

_IGNORE_FILES = (".gitignore", IGNORE_FILE)
_SKIPPED_NAMES = frozenset({"__pycache__"})
_SKIPPED_TOP = frozenset({"build", "dist"})
_VENV_MARKER = "pyvenv.cfg"


@dataclass(frozen=True)
class AppFile:
    name: str
    """The path inside the bundle (relative, ``/``-separated)."""
    data: bytes
    executable: bool


@dataclass(frozen=True)
class LeftOut:
    name: str
    """A file, or a directory (ending in ``/``) that was not entered."""
    reason: str


@dataclass
class AppFiles:
    """What ``select_app_files`` found: the files to bundle, sorted, and what it left out."""

    files: list[AppFile] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(len(f.data) for f in self.files)


def _always_left_out(parts: Sequence[str], *, is_dir: bool) -> str | None:
    """Rule 1 by name: why a path is always left out, or None."""
    for part in parts:
        if part.startswith("."):
            return "hidden"
        if part in _SKIPPED_NAMES:
            return "Python cache"
        if part.endswith(".egg-info"):
            return "packaging metadata"
    if parts and parts[0] in _SKIPPED_TOP and (is_dir or len(parts) > 1):
        return "build output"
    return None


def _not_app_type(name: str) -> str | None:
    """Rule 3: why a file is not of an app's type, or None."""
    if PurePosixPath(name).suffix.lower() not in APP_SUFFIXES:
        return "not an app file type"
    if PurePosixPath(name).name == _VENV_MARKER:
        return "virtual environment"
    return None


def member_problem(name: str) -> str | None:
    """Why ``flwrmtls run`` would never bundle the file ``name`` (a path inside a bundle), or
    None: the link refuses a bundle holding such a member."""
    parts = PurePosixPath(name).parts
    return _always_left_out(parts, is_dir=False) or _not_app_type(name)


class _Ignores:
    """The ignore files of the directories walked so far."""

    def __init__(self) -> None:
        self._specs: dict[PurePosixPath, list[tuple[str, GitIgnoreSpec]]] = {}
        """Directory -> its ignore files' specs, the one read last first."""

    def read(self, directory: Path, relative: PurePosixPath) -> None:
        for filename in _IGNORE_FILES:
            path = directory / filename
            if not path.is_file():
                continue
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as error:
                raise InputError(f"{path}: cannot be read: {error}") from error
            where = f"{relative.as_posix()}/{filename}" if relative.parts else filename
            self._specs.setdefault(relative, []).insert(0, (where, GitIgnoreSpec.from_lines(lines)))

    def ignored_by(self, relative: PurePosixPath, *, is_dir: bool) -> str | None:
        """``"ignored by FILE"`` when an ignore file leaves ``relative`` out, else None: the
        deepest directory whose files match decides, and in it the file read last."""
        for ancestor in relative.parents:
            for where, spec in self._specs.get(ancestor, []):
                below = relative.relative_to(ancestor).as_posix() + ("/" if is_dir else "")
                include = spec.check_file(below).include
                if include is not None:
                    return f"ignored by {where}" if include else None
        return None


def select_app_files(app_dir: Path) -> AppFiles:
    """The files of ``app_dir`` that make its bundle (the rules above), read and checked.

    ``InputError`` names the first file refused (a link, a private key) or unreadable.
    """
    selected = AppFiles()
    ignores = _Ignores()
    for directory, dir_names, file_names in os.walk(app_dir, onerror=_unreadable):
        here = Path(directory)
        relative_dir = PurePosixPath(here.relative_to(app_dir).as_posix())
        ignores.read(here, relative_dir)
        kept_dirs = []
        for name in sorted(dir_names):
            path, relative = here / name, relative_dir / name
            reason = _always_left_out(relative.parts, is_dir=True)
            if reason is None and (path / _VENV_MARKER).is_file():
                reason = "virtual environment"
            reason = reason or ignores.ignored_by(relative, is_dir=True)
            if reason is not None:
                selected.left_out.append(LeftOut(f"{relative.as_posix()}/", reason))
            elif path.is_symlink():
                raise InputError(
                    f"{path}: is a symbolic link to a directory; an app bundle holds regular "
                    f"files only (move it out of the app or add it to {IGNORE_FILE})"
                )
            else:
                kept_dirs.append(name)
        dir_names[:] = kept_dirs
        for name in sorted(file_names):
            path, relative = here / name, relative_dir / name
            reason = (
                _always_left_out(relative.parts, is_dir=False)
                or ignores.ignored_by(relative, is_dir=False)
                or _not_app_type(name)
            )
            if reason is not None:
                selected.left_out.append(LeftOut(relative.as_posix(), reason))
                continue
            selected.files.append(_read_app_file(path, relative.as_posix()))
    selected.files.sort(key=lambda f: f.name)
    selected.left_out.sort(key=lambda f: f.name)
    return selected


def _unreadable(error: OSError) -> None:
    """A directory that cannot be listed is an error, not a silent gap in the bundle."""
    raise InputError(f"{error.filename}: cannot be read: {error.strerror}")


def _read_app_file(path: Path, name: str) -> AppFile:
    """Rule 4 for a file the app would bundle: a regular file without a private key."""
    try:
        status = path.lstat()
        if stat.S_ISLNK(status.st_mode):
            raise InputError(
                f"{path}: is a symbolic link; an app bundle holds regular files only (copy "
                f"the file into the app, or add it to {IGNORE_FILE})"
            )
        if not stat.S_ISREG(status.st_mode):
            raise InputError(f"{path}: is not a regular file; an app bundle holds files only")
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot be read: {error}") from error
    kind = private_key_kind(data)
    if kind is not None:
        raise InputError(
            f"{path}: holds {kind}; a bundle goes to the link and to every node, so it may "
            f"hold no private key: move the file out of the app directory (nothing was sent)"
        )
    return AppFile(name, data, executable=bool(status.st_mode & stat.S_IXUSR))
