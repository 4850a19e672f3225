"""The app templates ``flwrmtls new`` writes out, and the function that writes one.

A template is a directory of files shipped as package data:

- ``pyproject.toml.tmpl`` and ``README.md.tmpl``: ``string.Template`` text, with ``$name``
  (the project name) and ``$package`` (the Python package name);
- ``package/``: the app's Python package, copied as is under the package name. Its modules
  import each other relatively, so the same code runs under any package name, and it is
  checked by this project's linters and type checker like the rest of flwrmtls.
"""

from __future__ import annotations

import keyword
import re
import string
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from importlib.util import find_spec
from pathlib import Path

from flwrmtls.errors import InputError

__all__ = ["TEMPLATES", "WrittenApp", "package_name", "project_name", "write_app"]

TEMPLATES = ("quickstart",)
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class WrittenApp:
    app_dir: Path
    name: str
    package: str
    files: list[Path]
    """Written files, relative to ``app_dir``, sorted."""


def project_name(text: str) -> str:
    """A project name (PEP 508) from a directory name: ``"My App!"`` -> ``"my-app"``."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "app"


def package_name(text: str) -> str:
    """A Python package name from a directory name: ``"my-app 2"`` -> ``"my_app_2"``."""
    name = re.sub(r"\W+", "_", text.lower(), flags=re.ASCII).strip("_")
    if not name or name[0].isdigit():
        name = f"app_{name}".rstrip("_")
    if keyword.iskeyword(name):
        name += "_app"
    return name


def _template_files(root: Traversable, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for entry in root.iterdir():
        if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
            continue
        if entry.is_dir():
            found += _template_files(entry, (*prefix, entry.name))
        elif prefix or entry.name != "__init__.py":  # the template directory's own marker
            found.append((*prefix, entry.name))
    return sorted(found)


def write_app(app_dir: Path, name: str | None = None, template: str = "quickstart") -> WrittenApp:
    """Write a new app into ``app_dir`` (absent or empty). ``InputError`` says why not."""
    if template not in TEMPLATES:
        raise InputError(f"no template {template!r} (templates: {', '.join(TEMPLATES)})")
    app_dir = app_dir.expanduser().absolute()
    if app_dir.exists() and (not app_dir.is_dir() or any(app_dir.iterdir())):
        raise InputError(f"{app_dir} already exists and is not an empty directory")
    name = name if name is not None else project_name(app_dir.name)
    if not _PROJECT_NAME.match(name):
        raise InputError(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    package = package_name(app_dir.name)
    spec = find_spec(package)
    if spec is not None and spec.origin is not None:  # a namespace package (a bare directory,
        # perhaps app_dir itself seen from the current directory) shadows nothing
        raise InputError(
            f"the app's package would be {package!r}, which is the name of an installed "
            "module; choose another directory name"
        )
    source = resources.files("flwrmtls.app.templates").joinpath(template)
    written: list[Path] = []
    for parts in _template_files(source):
        entry = source.joinpath(*parts)
        relative = Path(*parts)
        if parts[0] == "package":
            relative = Path(package, *parts[1:])
        if relative.suffix == ".tmpl":
            text = string.Template(entry.read_text(encoding="utf-8"))
            content = text.substitute(name=name, package=package).encode()
            relative = relative.with_suffix("")
        else:
            content = entry.read_bytes()
        target = app_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        written.append(relative)
    return WrittenApp(app_dir, name, package, sorted(written))
