"""App directories, and the bundle (a .tar.gz) an app travels in.

An app directory holds a ``pyproject.toml`` with::

    [project]
    name = "my-app"
    version = "1.0.0"
    dependencies = ["scikit-learn>=1.3"]   # installed where the app runs

    [tool.flwrmtls.app.components]
    serverapp = "my_app.server_app:app"
    clientapp = "my_app.client_app:app"

    [tool.flwrmtls.app.config]       # the default run config: TOML scalars
    num-server-rounds = 3            # nested tables become dotted keys ("a.b")

Rules:

- What a bundle may hold, and how one is built, is :mod:`flwrmtls.app.bundling`'s (the CLI
  builds, the link checks); this module is what every process that reads a bundle needs, so
  that an app process never loads what those need (cryptography and pathspec: about 8 MiB
  together).
- A bundle is named by its SHA-256 (:func:`bundle_hash`). :func:`extract_bundle` checks it
  first, then refuses absolute paths, ``..``, links, devices and anything but regular files
  and directories, and two members on one path (of one name, or a file where a directory
  is), before it writes a byte; every reader refuses the same (:func:`read_bundle`).
- A bundle is a plain ustar archive: every header is one 512-byte block. Readers refuse PAX
  extended and global headers, GNU long-name and long-link headers and GNU sparse files
  before ``tarfile`` reads their data (it would hold all of it in memory: a 100 KB bundle
  can carry a 100 MB header).
- The run config of a run is the app's defaults with overrides for known keys only; an
  override must have its default's type (an int may stand for a float).
- ``[project] dependencies`` are checked as :mod:`flwrmtls.app.requirements` says (PEP 508,
  no URL, no pip option) wherever a pyproject.toml is read: bundling, the link's check, the
  app's runs.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import io
import re
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

from flwrmtls.app.requirements import parse_requirements
from flwrmtls.errors import InputError
from flwrmtls.keyvalues import Value

__all__ = [
    "MAX_MEMBERS",
    "MAX_UNPACKED_BYTES",
    "AppConfig",
    "BundleError",
    "BundleFile",
    "bundle_app_config",
    "bundle_hash",
    "bundled_app_config",
    "extract_bundle",
    "load_component",
    "merge_run_config",
    "read_app_config",
    "read_bundle",
    "read_bundled_pyproject",
]

T = TypeVar("T")

_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class BundleError(InputError, ValueError):
    """A bundle that must not be unpacked: wrong hash, unsafe member, not a tar.gz."""


@dataclass(frozen=True)
class AppConfig:
    name: str
    version: str
    serverapp: str
    """``"module:attribute"`` of the ServerApp."""
    clientapp: str
    """``"module:attribute"`` of the ClientApp."""
    default_config: dict[str, Value]
    dependencies: tuple[str, ...] = ()
    """``[project] dependencies``, checked, as ``packaging`` writes them back."""


def _table(data: Mapping[str, Any], path: str, where: Path) -> Mapping[str, Any]:
    value: Any = data
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            raise InputError(f"{where}: missing [{path}]")
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: {path} must be a table")
    return value


def _flatten(table: Mapping[str, Any], where: Path, prefix: str = "") -> dict[str, Value]:
    flat: dict[str, Value] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, where, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            raise InputError(
                f"{where}: [tool.flwrmtls.app.config] {name} must be a string, number or "
                f"boolean, not {type(value).__name__}"
            )
    return flat


def read_app_config(app_dir: Path) -> AppConfig:
    """The app's name, version, components and default run config (``InputError`` if bad)."""
    path = app_dir / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found (an app directory needs a pyproject.toml)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot be read: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path} is not valid TOML: {error}") from error
    project = _table(data, "project", path)
    strings: dict[str, str] = {}
    for key in ("name", "version"):
        value = project.get(key)
        if not isinstance(value, str) or not value:
            raise InputError(f"{path}: [project] {key} is missing or not a string")
        strings[key] = value
    components = _table(data, "tool.flwrmtls.app.components", path)
    for key in ("serverapp", "clientapp"):
        value = components.get(key)
        if not isinstance(value, str) or not _REFERENCE.match(value):
            raise InputError(
                f"{path}: [tool.flwrmtls.app.components] {key} must be "
                f'"package.module:attribute", not {value!r}'
            )
        strings[key] = value
    config = data.get("tool", {}).get("flwrmtls", {}).get("app", {}).get("config", {})
    if not isinstance(config, Mapping):
        raise InputError(f"{path}: tool.flwrmtls.app.config must be a table")
    requirements = parse_requirements(project.get("dependencies"), f"{path}: [project]")
    return AppConfig(
        name=strings["name"],
        version=strings["version"],
        serverapp=strings["serverapp"],
        clientapp=strings["clientapp"],
        default_config=_flatten(config, path),
        dependencies=tuple(str(requirement) for requirement in requirements),
    )


def merge_run_config(
    defaults: Mapping[str, Value], overrides: Mapping[str, Value]
) -> dict[str, Value]:
    """``defaults`` with ``overrides`` applied; an unknown key or a wrong type is InputError."""
    merged = dict(defaults)
    known = ", ".join(sorted(defaults)) or "none"
    for key, value in overrides.items():
        if key not in defaults:
            raise InputError(f"run config: unknown key {key!r} (known keys: {known})")
        default = defaults[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise InputError(
                f"run config: {key} must be of type {type(default).__name__} like its default "
                f"{default!r}, not {value!r}"
            )
        merged[key] = value
    return merged


# -- bundles --------------------------------------------------------------------------------


def bundle_hash(bundle: bytes | memoryview) -> str:
    """The bundle's name: the hex SHA-256 of its bytes."""
    return hashlib.sha256(bundle).hexdigest()


_EXTENDED_HEADERS = {
    tarfile.XHDTYPE: "a PAX extended header",
    tarfile.XGLTYPE: "a PAX global header",
    tarfile.SOLARIS_XHDTYPE: "a Solaris extended header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long-name header",
    tarfile.GNUTYPE_LONGLINK: "a GNU long-link header",
    tarfile.GNUTYPE_SPARSE: "a GNU sparse file",
}
"""Header types whose data tarfile reads whole into memory (or, sparse, block after block)
before any member check could see it."""


class _UstarHeader(tarfile.TarInfo):
    """A header tarfile may process: refuses :data:`_EXTENDED_HEADERS` before their data is
    read (tarfile calls ``_proc_member`` right after parsing the header's one block)."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        kind = _EXTENDED_HEADERS.get(self.type)
        if kind is not None:
            raise BundleError(
                f"bundle has {kind} ({self.size} bytes): a bundle is a plain ustar archive; "
                "build it with `flwrmtls run`"
            )
        processed: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return processed


@contextlib.contextmanager
def _as_bundle_errors() -> Iterator[None]:
    """What tarfile and gzip raise on a bad archive, while it is read, as a BundleError."""
    try:
        yield
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as error:
        raise BundleError(f"bundle is not a valid .tar.gz: {error}") from error


def _safe_member_path(member: tarfile.TarInfo) -> PurePosixPath:
    name = member.name
    path = PurePosixPath(name)
    if not name or path.is_absolute() or name.startswith("\\"):
        raise BundleError(f"bundle member {name!r} has an absolute path")
    if ".." in path.parts or "\\" in name:
        raise BundleError(f"bundle member {name!r} leaves the app directory")
    if not (member.isreg() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or special file"
        raise BundleError(f"bundle member {name!r} is a {kind}; only files are allowed")
    return path


def extract_bundle(bundle: bytes | memoryview, expected_hash: str, into: Path) -> Path:
    """Check the bundle against ``expected_hash``, unpack it into ``into`` (which must be
    empty or absent) and return the app directory (``into``). ``BundleError`` if unsafe."""
    actual = bundle_hash(bundle)
    if actual != expected_hash.lower():
        raise BundleError(f"bundle hash mismatch: expected {expected_hash}, got {actual}")
    if into.exists() and any(into.iterdir()):
        raise BundleError(f"{into}: not empty; a bundle is unpacked into an empty directory")
    with (
        _as_bundle_errors(),
        tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz", tarinfo=_UstarHeader) as tar,
    ):
        members = list(_members(tar))
        into.mkdir(parents=True, exist_ok=True)
        root = into.resolve()
        for member, relative in members:
            target = root.joinpath(*relative.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has content
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())
            target.chmod(0o755 if member.mode & 0o100 else 0o644)
    return into


MAX_UNPACKED_BYTES = 1 << 30
"""The most a bundle may unpack to (declared sizes): a compressed bomb is refused unread."""
MAX_MEMBERS = 10_000
_MAX_PYPROJECT_BYTES = 1 << 20

BundleFile = tuple[str, tarfile.TarInfo, IO[bytes]]
"""A regular file of a bundle as it is read: its path inside the bundle (``/``-separated),
its header and its content (read before the next file)."""


def _members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, PurePosixPath]]:
    """The archive's members with their paths, each refused before its data is read when
    there are too many or too large ones (declared sizes), when its path is unsafe, or when
    another member takes its path: two of one name (readers differ on which one it means: a
    node reads the first pyproject.toml, unpacking keeps the last) or a file where another
    member needs a directory (unpacking would fail midway)."""
    total = 0
    files: set[PurePosixPath] = set()
    directories: set[PurePosixPath] = set()
    for count, member in enumerate(tar, start=1):
        total += member.size
        if count > MAX_MEMBERS or total > MAX_UNPACKED_BYTES:
            raise BundleError(
                f"bundle unpacks to more than {MAX_MEMBERS} files or {MAX_UNPACKED_BYTES} bytes"
            )
        path = _safe_member_path(member)
        parents = set(path.parents) - {PurePosixPath(".")}
        if path in files or parents & files or (path in directories and not member.isdir()):
            raise BundleError(
                f"bundle member {path.as_posix()!r} takes a path another member takes (two of "
                "one name, or a file where a directory is); build bundles with `flwrmtls run`"
            )
        (directories if member.isdir() else files).add(path)
        directories |= parents
        yield member, path


def _files(tar: tarfile.TarFile) -> Iterator[BundleFile]:
    for member, path in _members(tar):
        if member.isdir():
            continue
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has content
        yield path.as_posix(), member, source


@contextlib.contextmanager
def read_bundle(bundle: bytes | memoryview) -> Iterator[Iterator[BundleFile]]:
    """The bundle's regular files, one after the other as the archive streams by (none is
    held once the next is read), each path checked safe before its content is read; any
    error reading the archive, in the ``with`` block too, is a :class:`BundleError`."""
    with (
        _as_bundle_errors(),
        tarfile.open(fileobj=io.BytesIO(bundle), mode="r|gz", tarinfo=_UstarHeader) as tar,
    ):
        yield _files(tar)


def read_bundled_pyproject(member: tarfile.TarInfo, source: IO[bytes]) -> bytes:
    """The bytes of a bundle's pyproject.toml (its size checked before they are read)."""
    if member.size > _MAX_PYPROJECT_BYTES:
        raise BundleError("the bundle's pyproject.toml is over 1 MiB")
    return source.read()


def bundled_app_config(pyproject: bytes) -> AppConfig:
    """The app config in the bytes of a bundle's pyproject.toml (errors named as the
    bundle's)."""
    with tempfile.TemporaryDirectory(prefix="flwrmtls-pyproject-") as tmp:
        (Path(tmp) / "pyproject.toml").write_bytes(pyproject)
        try:
            return read_app_config(Path(tmp))
        except InputError as error:  # named as the bundle's, not by the scratch file's path
            where = str(Path(tmp) / "pyproject.toml")
            raise BundleError(str(error).replace(where, "the bundle's pyproject.toml")) from None


def bundle_app_config(bundle: bytes | memoryview) -> AppConfig:
    """The app config of a bundle already checked (its hash verified, e.g. from an object
    store), read from its pyproject.toml alone; BundleError if it has none or it is bad."""
    with read_bundle(bundle) as files:
        for name, member, source in files:
            if name == "pyproject.toml":
                return bundled_app_config(read_bundled_pyproject(member, source))
    raise BundleError("the bundle has no pyproject.toml at its top")


# -- loading components ---------------------------------------------------------------------


_loaded_app_dirs: list[Path] = []


def _inside(locations: list[str], directory: Path) -> bool:
    return any(Path(location).resolve().is_relative_to(directory) for location in locations)


def _make_room_for(package: str, app_dir: Path) -> None:
    """If ``package`` is already imported from another app directory this process loaded,
    forget it so that ``app_dir``'s is imported; if it is imported from anywhere else (an
    installed library), refuse: the app's package would shadow it."""
    module = sys.modules.get(package)
    if module is None:
        return
    origin = getattr(module, "__file__", None)
    locations = [origin] if origin else list(getattr(module, "__path__", []))
    if _inside(locations, app_dir):
        return
    if not any(_inside(locations, loaded) for loaded in _loaded_app_dirs):
        where = locations[0] if locations else "a built-in module"
        raise InputError(
            f"the app's package {package!r} has the name of a module already imported from "
            f"{where}; rename the app's package"
        )
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        del sys.modules[name]


def load_component(app_dir: Path, reference: str, kind: type[T]) -> T:
    """Import ``"module:attribute"`` with ``app_dir`` first on ``sys.path``; the attribute
    must be a ``kind``. ``InputError`` (one line) says what is missing or wrong."""
    if not _REFERENCE.match(reference):
        raise InputError(f"{reference!r} is not a component reference (package.module:attribute)")
    module_name, attribute = reference.split(":")
    app_dir = app_dir.resolve()
    _make_room_for(module_name.split(".")[0], app_dir)
    if str(app_dir) in sys.path:
        sys.path.remove(str(app_dir))
    sys.path.insert(0, str(app_dir))
    if app_dir not in _loaded_app_dirs:
        _loaded_app_dirs.append(app_dir)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and f"{module_name}.".startswith(f"{error.name}."):
            raise InputError(
                f"{reference}: module {error.name!r} not found in {app_dir}"
            ) from error
        raise InputError(
            f"{reference}: importing {module_name} failed: {type(error).__name__}: {error}"
        ) from error
    except Exception as error:
        raise InputError(
            f"{reference}: importing {module_name} failed: {type(error).__name__}: {error}"
        ) from error
    if not hasattr(module, attribute):
        raise InputError(f"{reference}: module {module_name!r} has no attribute {attribute!r}")
    component = getattr(module, attribute)
    if not isinstance(component, kind):
        raise InputError(f"{reference}: is of type {type(component).__name__}, not {kind.__name__}")
    return component
