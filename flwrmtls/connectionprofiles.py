"""Connection profiles in ``$FLWRMTLS_HOME/config.toml`` (default ``~/.flwrmtls/config.toml``).

Read with tomllib, written with tomli-w. Paths in the file may start with ``~``; relative
paths are resolved against the directory of config.toml. ``config add`` stores the paths it is
given as absolute paths (resolved against the current directory), so they mean what the user
meant wherever the CLI runs later.

config.toml is written 0600 in a directory created 0700; an existing ``$FLWRMTLS_HOME`` open to
group or others is left as it is, with one warning line (see :mod:`flwrmtls.filemodes`).

Every key has one type, in one table (:data:`PROFILE_KEYS`): a profile with an unknown key or
a value of another type (``insecure = "false"``, a string, is not the boolean ``false``) is
refused with one line naming the file, the profile, the key, what it holds and what it must
hold. Nothing is guessed or coerced. Only the profile in use (and ``[superlink]`` itself) is
checked, so one broken profile does not stop the others.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from flwrmtls.errors import InputError
from flwrmtls.filemodes import PRIVATE_FILE, open_directory_warning, private_directory
from flwrmtls.home import flwrmtls_home

__all__ = ["PROFILE_KEYS", "ConfigFile", "Profile", "config_path"]

log = logging.getLogger("flwrmtls.connectionprofiles")

_PATH_KEYS = ("root-certificates", "client-certificate", "client-private-key")

_A_PATH = (str, "a file path (a quoted string)")
PROFILE_KEYS: dict[str, tuple[type, str]] = {
    "address": (str, "the link's Control API as a quoted string, host:port"),
    "root-certificates": _A_PATH,
    "client-certificate": _A_PATH,
    "client-private-key": _A_PATH,
    "insecure": (bool, "true or false (a TOML boolean, without quotes)"),
}
"""Each key a profile may hold: its type, and how to write it (for the refusal)."""

_TOML_KINDS = (
    (bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
    (dict, "a table"), (list, "an array"),
)  # fmt: skip


def _kind(value: object) -> str:
    """What a TOML value is, in words (bool before int: a bool is an int in Python)."""
    return next((name for kind, name in _TOML_KINDS if isinstance(value, kind)), "a date or time")


def _shown(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def config_path() -> Path:
    return flwrmtls_home() / "config.toml"


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    address: str
    root_certificates: Path | None = None
    client_certificate: Path | None = None
    client_private_key: Path | None = None
    insecure: bool = False


def _stored_path(text: str) -> str:
    return text if text.startswith("~") else str(Path(text).resolve())


class ConfigFile:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_path()
        self._data: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            return tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read {self.path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise InputError(f"{self.path} is not valid TOML: {error}") from None

    def _section(self) -> dict[str, Any]:
        section = self._data.setdefault("superlink", {})
        if not isinstance(section, dict):
            raise InputError(f"{self.path}: [superlink] must be a table")
        for key, value in section.items():
            if key != "default" and not isinstance(value, dict):
                raise InputError(
                    f"{self.path}: [superlink] {key} = {_shown(value)} is {_kind(value)}; "
                    f"expected a profile, a table [superlink.{key}] (or the key 'default')"
                )
        return section

    @property
    def default(self) -> str | None:
        value = self._section().get("default")
        if value is not None and not isinstance(value, str):
            raise InputError(
                f"{self.path}: [superlink] default = {_shown(value)} is {_kind(value)}; "
                "expected the name of a profile as a quoted string"
            )
        return value

    def names(self) -> list[str]:
        return sorted(k for k, v in self._section().items() if isinstance(v, dict))

    def _resolve(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self.path.parent / path)

    def profile(self, name: str | None) -> Profile:
        """The named profile, or the default one."""
        chosen = name or self.default
        if chosen is None:
            raise InputError(
                f"no connection given and no default in {self.path}: "
                "run `flwrmtls config add NAME --address HOST:PORT ... --default`"
            )
        raw = self._section().get(chosen)
        if not isinstance(raw, dict):
            known = ", ".join(self.names()) or "none"
            raise InputError(f"no connection profile {chosen!r} in {self.path} (profiles: {known})")
        self._check(chosen, raw)
        address = raw.get("address")
        if not isinstance(address, str) or not address:
            raise InputError(f"{self.path}: profile {chosen!r} has no address")
        paths = {key: self._resolve(raw[key]) if key in raw else None for key in _PATH_KEYS}
        return Profile(
            name=chosen,
            address=address,
            root_certificates=paths["root-certificates"],
            client_certificate=paths["client-certificate"],
            client_private_key=paths["client-private-key"],
            insecure=raw.get("insecure", False),
        )

    def _check(self, name: str, raw: dict[str, Any]) -> None:
        """Refuse an unknown key or a value of the wrong type, naming both."""
        for key, value in raw.items():
            if key not in PROFILE_KEYS:
                known = ", ".join(PROFILE_KEYS)
                raise InputError(
                    f"{self.path}: profile {name!r}: unknown key {key!r} (a profile holds "
                    f"{known}): remove it or correct its name"
                )
            kind, expected = PROFILE_KEYS[key]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise InputError(
                    f"{self.path}: profile {name!r}: {key} = {_shown(value)} is {_kind(value)}; "
                    f"expected {expected}"
                )
            if kind is str and not value:
                raise InputError(f"{self.path}: profile {name!r}: {key} is empty; give {expected}")

    def add(self, profile: Profile, *, make_default: bool) -> None:
        if profile.name == "default":
            raise InputError("a profile cannot be named 'default' (the key that names the default)")
        entry: dict[str, Any] = {"address": profile.address}
        for key, value in zip(
            _PATH_KEYS,
            (profile.root_certificates, profile.client_certificate, profile.client_private_key),
            strict=True,
        ):
            if value is not None:
                entry[key] = _stored_path(str(value))
        if profile.insecure:
            entry["insecure"] = True
        section = self._section()
        section[profile.name] = entry
        if make_default or self.default is None:
            section["default"] = profile.name
        self._write()

    def use(self, name: str) -> None:
        if name not in self.names():
            raise InputError(f"no connection profile {name!r} in {self.path}")
        self._section()["default"] = name
        self._write()

    def _write(self) -> None:
        """Write config.toml (0600) atomically, in a directory made 0700 if it was missing."""
        try:
            private_directory(self.path.parent)
        except OSError as error:
            raise InputError(f"cannot create {self.path.parent}: {error.strerror}") from None
        if warning := open_directory_warning(self.path.parent):
            log.warning("%s", warning)
        section = self._section()
        ordered: dict[str, Any] = {}
        if "default" in section:
            ordered["default"] = section["default"]
        ordered.update((k, v) for k, v in section.items() if k != "default")
        self._data["superlink"] = ordered
        tmp = self.path.with_suffix(".toml.tmp")
        try:
            tmp.unlink(missing_ok=True)  # a leftover could be open to others: start afresh
            descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(tomli_w.dumps(self._data))
            tmp.replace(self.path)
        except OSError as error:
            raise InputError(f"cannot write {self.path}: {error.strerror}") from None
