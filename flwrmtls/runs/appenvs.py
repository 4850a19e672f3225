"""App environments: a run's requirements installed where its app runs, once per set.

Rules:

* A run's requirements are its bundle's ``[project] dependencies``
  (:mod:`flwrmtls.app.requirements` checks each: PEP 508, no URL, no pip option), judged here
  against the interpreter the link or node runs with (:meth:`AppEnvs.plan`): a requirement
  whose environment marker does not hold here is dropped; ``flwrmtls`` is never installed (the
  running version must satisfy what the app asks of it, else the app cannot run here); a set
  this environment already satisfies needs nothing more, and the app runs with this
  interpreter (and its spare process).
* Otherwise the app runs in an environment of its own: a virtualenv at ``<directory>/<key>``,
  where the key is 32 hex digits of a SHA-256 over this interpreter, the flwrmtls version and
  the sorted canonical requirements. It sees the link's or node's own packages after its own
  (a ``.pth`` file), so flwrmtls, grpcio and numpy are not installed again unless the app asks
  for another version, which then wins inside that environment only. Two apps with different
  requirements get different environments; one set is installed once and reused by every
  later run (:meth:`AppEnvs.prepare`).
* An environment is built under an exclusive lock (``flock`` on ``<directory>/<key>.lock``):
  runs asking for the same one at once wait for the one building it. It is ready once its
  requirements are verified from inside it and the marker ``flwrmtls-env.json`` is written,
  last; a directory without the marker (a crash mid-install, a failure) is deleted and built
  again.
* pip installs: the pip of the interpreter the link or node runs with, with the configuration
  the operator gave it (pip.conf, ``PIP_INDEX_URL``, ``PIP_NO_INDEX``, ``PIP_FIND_LINKS``, ...),
  wheels only (``--only-binary :all:``: no build backend, so no code the submitter picks runs
  while installing), no prompts, within :data:`INSTALL_TIMEOUT` seconds, cancelled when its
  run ends or the process stops. The requirements it is handed are their canonical text,
  after ``--``. Its progress goes to the caller line by line (what it collects, what it
  installs, its errors; at most :data:`PROGRESS_LINES`); a failure raises :class:`EnvError`
  with pip's own error line.
* With installs disabled (``--disable-runtime-dependency-installation``), nothing is installed
  and no environment is used: a requirement this interpreter lacks raises
  :class:`RequirementsMissing`, naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import threading
import venv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from flwrmtls import __version__
from flwrmtls.app.requirements import parse_requirements
from flwrmtls.clock import Clock, SystemClock
from flwrmtls.errors import FlwrmtlsError, InputError
from flwrmtls.filemodes import private_directory

__all__ = [
    "DISABLE_FLAG",
    "INSTALL_TIMEOUT",
    "AppEnvs",
    "EnvError",
    "EnvPlan",
    "RequirementsMissing",
    "unmet",
]

log = logging.getLogger("flwrmtls.appenvs")

DISABLE_FLAG = "--disable-runtime-dependency-installation"
INSTALL_TIMEOUT = 1800.0
"""Seconds pip may take to install one environment."""
PROGRESS_LINES = 40
"""The most lines of pip's output passed on per install (the rest go to the debug log)."""
_READY = "flwrmtls-env.json"
_HOST_PTH = "_flwrmtls_host.pth"
_SELF = "flwrmtls"
_SHOWN = (
    "Collecting ", "Processing ", "Installing collected packages", "Successfully installed",
    "ERROR:",
)  # fmt: skip
_LOCK_POLL = 0.2


class RequirementsMissing(InputError):
    """Requirements this environment lacks, where installing is disabled."""

    def __init__(self, missing: Sequence[str], host: str) -> None:
        self.missing = tuple(missing)
        super().__init__(
            f"the app needs {', '.join(self.missing)}, which {host} lacks, and {host} does "
            f"not install app dependencies ({DISABLE_FLAG})"
        )


class EnvError(FlwrmtlsError):
    """An environment could not be built (pip failed, timed out or was cancelled)."""


@dataclass(frozen=True, slots=True)
class EnvPlan:
    requirements: tuple[str, ...]
    """Canonical and sorted; markers applied, flwrmtls left out."""
    missing: tuple[str, ...]
    """Those this interpreter's environment lacks: installing is needed when any is."""
    key: str

    @property
    def needs_env(self) -> bool:
        return bool(self.missing)

    @property
    def label(self) -> str:
        return self.key[:12]


def _canonical(requirement: Requirement) -> str:
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{canonicalize_name(requirement.name)}{extras}{requirement.specifier}"


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _requires(name: str) -> list[str]:
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []


def unmet(
    requirements: Iterable[Requirement],
    version_of: Callable[[str], str | None] = _installed_version,
    requires_of: Callable[[str], list[str]] = _requires,
) -> list[Requirement]:
    """Those of ``requirements`` the environment does not satisfy: the distribution missing, a
    version outside the specifier, or (one level) a requirement its extras add."""
    missing: list[Requirement] = []
    for requirement in requirements:
        version = version_of(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(requirement)
            continue
        if requirement.extras and _extras_unmet(requirement, version_of, requires_of):
            missing.append(requirement)
    return missing


def _extras_unmet(
    requirement: Requirement,
    version_of: Callable[[str], str | None],
    requires_of: Callable[[str], list[str]],
) -> bool:
    for text in requires_of(requirement.name):
        try:
            added = Requirement(text)
        except InvalidRequirement:
            continue
        marker = added.marker
        if marker is None or marker.evaluate({"extra": ""}):
            continue  # a base requirement: installed with the distribution
        if not any(marker.evaluate({"extra": extra}) for extra in requirement.extras):
            continue
        version = version_of(added.name)
        if version is None or not added.specifier.contains(version, prereleases=True):
            return True
    return False


def applicable(dependencies: Sequence[str], where: str, host: str) -> list[Requirement]:
    """The requirements of ``dependencies`` that apply here: checked (InputError naming
    ``where``, the file), markers evaluated, flwrmtls's own checked against the version
    running on ``host`` and left out."""
    kept: list[Requirement] = []
    for requirement in parse_requirements(list(dependencies), where):
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if canonicalize_name(requirement.name) == _SELF:
            if not requirement.specifier.contains(__version__, prereleases=True):
                raise InputError(
                    f"the app needs {requirement}, and {host} runs flwrmtls {__version__}: "
                    "ask for a version range this deployment runs"
                )
            continue
        requirement.marker = None
        kept.append(requirement)
    return kept


def environment_key(requirements: Sequence[str]) -> str:
    """The environment's name: this interpreter, the flwrmtls version, the requirements."""
    identity = {
        "python": [sys.executable, sys.version],
        "flwrmtls": __version__,
        "requirements": sorted(requirements),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def host_site_directories() -> list[str]:
    """The site-packages directories this process imports from (not the user's own: app
    processes run isolated, without it)."""
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    return [
        path
        for path in dict.fromkeys(sys.path)
        if Path(path).name in ("site-packages", "dist-packages")
        and path != user
        and os.path.isdir(path)
    ]


_CHECK = (
    "import json, sys\n"
    "from packaging.requirements import Requirement\n"
    "from flwrmtls.runs.appenvs import unmet\n"
    "wanted = [Requirement(text) for text in json.load(sys.stdin)]\n"
    "print(json.dumps([str(r) for r in unmet(wanted)]))\n"
)


class AppEnvs:
    def __init__(
        self,
        directory: Path,
        *,
        host: str,
        install: bool = True,
        clock: Clock | None = None,
        timeout: float = INSTALL_TIMEOUT,
    ) -> None:
        """``host``: how lines name where this is ("the link", "this node")."""
        self.directory = directory
        self.host = host
        self.install = install
        self._clock = clock or SystemClock()
        self._timeout = timeout

    def plan(self, dependencies: Sequence[str], where: str) -> EnvPlan:
        """What running an app with ``dependencies`` (from ``where``, a pyproject.toml) takes
        here. InputError (one line) when it cannot run here: a requirement refused,
        flwrmtls's own not met, or (installs disabled) :class:`RequirementsMissing`."""
        requirements = applicable(dependencies, where, self.host)
        missing = [_canonical(r) for r in unmet(requirements)]
        if missing and not self.install:
            raise RequirementsMissing(missing, self.host)
        canonical = sorted(_canonical(r) for r in requirements)
        return EnvPlan(tuple(canonical), tuple(missing), environment_key(canonical))

    def python(self, plan: EnvPlan) -> str:
        """The interpreter the app runs with."""
        if not plan.needs_env:
            return sys.executable
        return str(self.directory / plan.key / "bin" / "python")

    def ready(self, plan: EnvPlan) -> bool:
        return not plan.needs_env or (self.directory / plan.key / _READY).is_file()

    def prepare(
        self,
        plan: EnvPlan,
        progress: Callable[[str], None],
        cancel: threading.Event | None = None,
    ) -> str:
        """The interpreter the app runs with, its environment built first if it has none
        (EnvError when that fails). ``progress`` is told what happens, line by line."""
        if not plan.needs_env:
            return sys.executable
        python = self.python(plan)
        if self.ready(plan):
            progress(f"app dependencies: reusing environment {plan.label} (nothing installed)")
            return python
        private_directory(self.directory)
        with self._locked(plan, progress, cancel or threading.Event()):
            if self.ready(plan):  # built by the run this one waited for
                progress(f"app dependencies: reusing environment {plan.label}, just built")
                return python
            self._build(plan, progress, cancel or threading.Event())
        return python

    @contextlib.contextmanager
    def _locked(
        self, plan: EnvPlan, progress: Callable[[str], None], cancel: threading.Event
    ) -> Iterator[None]:
        fd = os.open(self.directory / f"{plan.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        progress(f"app dependencies: waiting for environment {plan.label}, "
                                 "which another run is installing")  # fmt: skip
                        told = True
                    if cancel.wait(_LOCK_POLL):
                        raise EnvError("installing the app's dependencies was cancelled") from None
            yield
        finally:
            os.close(fd)  # the lock goes with the descriptor

    def _build(
        self, plan: EnvPlan, progress: Callable[[str], None], cancel: threading.Event
    ) -> None:
        env = self.directory / plan.key
        shutil.rmtree(env, ignore_errors=True)  # half built by a process that died
        started = self._clock.monotonic()
        progress(
            f"app dependencies: installing {', '.join(plan.missing)} into environment {plan.label}"
        )
        try:
            venv.EnvBuilder(symlinks=True, with_pip=False, clear=True).create(env)
            python = self.python(plan)
            site_dir = Path(
                subprocess.run(
                    [python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    check=True, capture_output=True, text=True, timeout=60,
                ).stdout.strip()
            )  # fmt: skip
            (site_dir / _HOST_PTH).write_text(
                "".join(
                    f"import site; site.addsitedir({directory!r})\n"
                    for directory in host_site_directories()
                )
            )
            if cancel.is_set():
                raise EnvError("installing the app's dependencies was cancelled")
            self._pip(env, python, plan, progress, cancel)
            left = self._unmet_inside(python, plan)
            if left:
                raise EnvError(
                    f"pip finished, but environment {plan.label} still lacks {', '.join(left)}"
                )
            marker = env / f"{_READY}.tmp"
            marker.write_text(json.dumps({"requirements": list(plan.requirements),
                                          "flwrmtls": __version__}) + "\n")  # fmt: skip
            os.replace(marker, env / _READY)
        except BaseException as error:
            shutil.rmtree(env, ignore_errors=True)
            if isinstance(error, OSError | subprocess.SubprocessError):
                raise EnvError(f"environment {plan.label} could not be made: {error}") from None
            raise
        seconds = self._clock.monotonic() - started
        progress(f"app dependencies: environment {plan.label} ready in {seconds:.0f} s")

    def _pip(
        self,
        env: Path,
        python: str,
        plan: EnvPlan,
        progress: Callable[[str], None],
        cancel: threading.Event,
    ) -> None:
        command = [
            python, "-I", "-m", "pip", "install", "--only-binary", ":all:", "--no-input",
            "--disable-pip-version-check", "--no-warn-script-location", "--progress-bar", "off",
            "--", *plan.requirements,
        ]  # fmt: skip
        try:
            process = subprocess.Popen(
                command, cwd=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, errors="replace",
            )  # fmt: skip
        except OSError as error:
            raise EnvError(f"pip could not start: {error}") from None
        finished = threading.Event()
        stopped: list[str] = []

        def watch() -> None:
            deadline = self._clock.monotonic() + self._timeout
            while not finished.wait(_LOCK_POLL):
                if cancel.is_set() or self._clock.monotonic() > deadline:
                    stopped.append("cancelled" if cancel.is_set() else
                                   f"stopped after {self._timeout:.0f} s")  # fmt: skip
                    process.kill()
                    return

        watcher = threading.Thread(target=watch, name="pip-watch", daemon=True)
        watcher.start()
        shown, errors, last = 0, [], ""
        assert process.stdout is not None
        try:
            for raw in process.stdout:
                line = raw.rstrip()
                if not line:
                    continue
                log.debug("pip: %s", line)
                last = line
                if line.startswith("ERROR:"):
                    errors.append(line)
                if line.startswith(_SHOWN) and shown < PROGRESS_LINES:
                    progress(f"pip: {line}")
                    shown += 1
            code = process.wait()
        finally:
            finished.set()
            watcher.join()
            if process.poll() is None:
                process.kill()
                process.wait()
        if stopped:
            raise EnvError(f"installing the app's dependencies was {stopped[0]}")
        if code != 0:
            why = errors[-1] if errors else last or f"pip exited with {code}"
            raise EnvError(f"pip could not install {', '.join(plan.missing)}: {why}")

    @staticmethod
    def _unmet_inside(python: str, plan: EnvPlan) -> list[str]:
        """The requirements the built environment still lacks, asked from inside it."""
        answer = subprocess.run(
            [python, "-I", "-c", _CHECK], input=json.dumps(list(plan.requirements)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if answer.returncode != 0:
            tail = (answer.stderr.strip().splitlines() or ["no output"])[-1]
            raise EnvError(f"environment {plan.label} cannot run flwrmtls: {tail}")
        left: list[str] = json.loads(answer.stdout)
        return left
