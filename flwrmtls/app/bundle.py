"""App directories, and the bundle (a .tar.gz) an app travels in.

An app directory holds a ``pyproject.toml`` with::

    [project]
    name = "my-app"
    version = "1.0.0"

    [tool.flwrmtls.app.components]
    serverapp = "my_app.server_app:app"
    clientapp = "my_app.client_app:app"

    [tool.flwrmtls.app.config]       # the default run config: TOML scalars
    num-server-rounds = 3            # nested tables become dotted keys ("a.b")

Rules:

- A bundle is deterministic: the same files give the same bytes. Entries are regular files
  only, sorted by path, with mtime 0, uid/gid 0, no owner names, mode 0755 when the owner may
  execute the file and 0644 otherwise; the gzip header has mtime 0 and no file name.
- Left out: hidden files and directories (``.git``, ``.venv``, ...), ``__pycache__``, ``*.pyc``,
  ``*.egg-info``, and ``build/`` and ``dist/`` at the top. A symbolic link is refused.
- A bundle is named by its SHA-256 (:func:`bundle_hash`). :func:`extract_bundle` checks it
  first, then refuses absolute paths, ``..``, links, devices and anything but regular files
  and directories, before it writes a byte.
- The run config of a run is the app's defaults with overrides for known keys only; an
  override must have its default's type (an int may stand for a float).
"""

from __future__ import annotations

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
from typing import Any, TypeVar

from flwrmtls.errors import InputError
from flwrmtls.keyvalues import Value

__all__ = [
    "AppConfig",
    "BundleError",
    "build_bundle",
    "bundle_hash",
    "extract_bundle",
    "load_component",
    "merge_run_config",
    "read_app_config",
    "read_bundle_config",
]

T = TypeVar("T")

_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_SKIPPED_NAMES = {"__pycache__"}
_SKIPPED_TOP = {"build", "dist"}


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
    return AppConfig(
        name=strings["name"],
        version=strings["version"],
        serverapp=strings["serverapp"],
        clientapp=strings["clientapp"],
        default_config=_flatten(config, path),
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


def _bundled_files(app_dir: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for path in sorted(app_dir.rglob("*")):
        relative = path.relative_to(app_dir)
        parts = relative.parts
        if (
            any(part.startswith(".") or part in _SKIPPED_NAMES for part in parts)
            or any(part.endswith(".egg-info") for part in parts)
            or parts[0] in _SKIPPED_TOP
            or path.suffix == ".pyc"
        ):
            continue
        if path.is_symlink():
            raise InputError(f"{path}: is a symbolic link; an app bundle holds regular files only")
        if path.is_file():
            files.append((relative.as_posix(), path))
    return sorted(files)


def build_bundle(app_dir: Path) -> bytes:
    """The app directory as a deterministic .tar.gz (checked with read_app_config first)."""
    read_app_config(app_dir)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in _bundled_files(app_dir):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if path.stat().st_mode & 0o100 else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as gz:
        gz.write(tar_bytes.getvalue())
    return compressed.getvalue()


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
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            members = [(member, _safe_member_path(member)) for member in _bounded(tar)]
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
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as error:
        raise BundleError(f"bundle is not a valid .tar.gz: {error}") from error
    return into


MAX_UNPACKED_BYTES = 1 << 30
"""The most a bundle may unpack to (declared sizes): a compressed bomb is refused unread."""
MAX_MEMBERS = 10_000
_MAX_PYPROJECT_BYTES = 1 << 20


def _bounded(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's members, refusing too many or too large ones before reading their data."""
    total = 0
    for count, member in enumerate(tar, start=1):
        total += member.size
        if count > MAX_MEMBERS or total > MAX_UNPACKED_BYTES:
            raise BundleError(
                f"bundle unpacks to more than {MAX_MEMBERS} files or {MAX_UNPACKED_BYTES} bytes"
            )
        yield member


def read_bundle_config(bundle: bytes) -> AppConfig:
    """The app config of a bundle, reading only its pyproject.toml (the link's check)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r|gz") as tar:
            for member in _bounded(tar):
                if member.name.lstrip("./") != "pyproject.toml" or not member.isfile():
                    continue
                if member.size > _MAX_PYPROJECT_BYTES:
                    raise BundleError("the bundle's pyproject.toml is over 1 MiB")
                source = tar.extractfile(member)
                assert source is not None
                with tempfile.TemporaryDirectory(prefix="flwrmtls-pyproject-") as tmp:
                    (Path(tmp) / "pyproject.toml").write_bytes(source.read())
                    return read_app_config(Path(tmp))
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as error:
        raise BundleError(f"bundle is not a valid .tar.gz: {error}") from error
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
