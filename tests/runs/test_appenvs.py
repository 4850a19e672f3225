"""App environments, built by real pip into real virtualenvs from wheels the tests write.

pip reads no index here: the environment these tests give it is an operator's pointing it at
a local directory (``PIP_NO_INDEX``, ``PIP_FIND_LINKS``, no pip.conf), so nothing needs the
internet. The environments are built once per session where the test only reads them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from flwrmtls import __version__
from flwrmtls.errors import InputError
from flwrmtls.runs.appenvs import AppEnvs, EnvError, RequirementsMissing, unmet

from .wheels import pip_environment, write_hostile_sdist, write_wheel

DEP = "fmtls-dep-a"


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    house = tmp_path_factory.mktemp("wheelhouse")
    for version in ("1.0", "2.0"):
        write_wheel(house, DEP, version, {"fmtls_dep_a/__init__.py": f"VERSION = {version!r}\n"})
    write_wheel(
        house, "fmtls-dep-b", "1.0", {"fmtls_dep_b/__init__.py": "NAME = 'b'\n"},
        requires=[f"{DEP}==2.0"],
    )  # fmt: skip
    return house


@pytest.fixture(scope="module")
def pip_env(wheelhouse: Path) -> Iterator[None]:
    """This process's pip pointed at the wheelhouse alone, for this module's tests (put
    back before another module's: a test of another module may run next in the same
    process)."""
    saved = dict(os.environ)
    os.environ.update(pip_environment(wheelhouse))
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def envs(pip_env: None, tmp_path_factory: pytest.TempPathFactory) -> AppEnvs:
    """One directory of environments for the tests that only read what is built."""
    return AppEnvs(tmp_path_factory.mktemp("envs") / "app-envs", host="this node")


def _imported(python: str, module: str, attribute: str) -> str:
    """What ``module.attribute`` is in ``python``'s environment, as an app process sees it."""
    return subprocess.run(
        [python, "-I", "-c", f"import {module}; print({module}.{attribute})"],
        check=True, capture_output=True, text=True, cwd="/",
    ).stdout.strip()  # fmt: skip


# -- judging requirements here (pure but for this interpreter's installed packages) ----------


def test_requirements_this_environment_meets_need_no_environment(
    pip_env: None, tmp_path: Path
) -> None:
    envs = AppEnvs(tmp_path / "app-envs", host="this node")
    plan = envs.plan(["numpy>=1.26", "grpcio", f"flwrmtls=={__version__}"], "pyproject.toml")
    assert not plan.needs_env
    assert plan.requirements == ("grpcio", "numpy>=1.26")  # flwrmtls is never installed
    assert envs.prepare(plan, lambda line: None) == sys.executable
    assert not envs.directory.exists()  # nothing made for it


def test_a_marker_that_does_not_hold_here_drops_its_requirement(envs: AppEnvs) -> None:
    plan = envs.plan([f"{DEP}==1.0; python_version < '3'", "numpy"], "pyproject.toml")
    assert not plan.needs_env
    assert plan.requirements == ("numpy",)


def test_an_app_asking_for_another_flwrmtls_cannot_run_here(envs: AppEnvs) -> None:
    with pytest.raises(InputError) as refused:
        envs.plan(["flwrmtls>=99"], "pyproject.toml")
    assert str(refused.value) == (
        f"the app needs flwrmtls>=99, and this node runs flwrmtls {__version__}: ask for a "
        "version range this deployment runs"
    )


def test_the_key_is_the_set_not_its_spelling(envs: AppEnvs) -> None:
    one = envs.plan([f"{DEP}==1.0", "numpy>=1.26"], "pyproject.toml")
    same = envs.plan(["NumPy >= 1.26", "fmtls_dep_a == 1.0"], "pyproject.toml")
    other = envs.plan([f"{DEP}==2.0", "numpy>=1.26"], "pyproject.toml")
    assert one.key == same.key
    assert one.key != other.key
    assert one.missing == (f"{DEP}==1.0",)


def test_unmet_reads_versions_and_extras() -> None:
    installed = {"a": "1.0", "b": "2.0"}
    requires = {"a": ['b>=2; extra == "x"', 'c; extra == "y"', "d"]}

    def missing(*texts: str) -> list[str]:
        found = unmet(
            [Requirement(text) for text in texts], installed.get,
            lambda name: requires.get(name, []),
        )  # fmt: skip
        return [str(requirement) for requirement in found]

    assert missing("a", "a>=1", "a[x]", "b==2.0") == []
    assert missing("a>1", "a[y]", "e", "b<2") == ["a>1", "a[y]", "e", "b<2"]


# -- with installs disabled ------------------------------------------------------------------


def test_with_installs_disabled_a_missing_requirement_is_named_in_one_line(
    pip_env: None, tmp_path: Path
) -> None:
    disabled = AppEnvs(tmp_path / "app-envs", host="this node", install=False)
    with pytest.raises(RequirementsMissing) as refused:
        disabled.plan(["numpy>=1.26", f"{DEP}==1.0"], "pyproject.toml")
    assert str(refused.value) == (
        f"the app needs {DEP}==1.0, which this node lacks, and this node does not install app "
        "dependencies (--disable-runtime-dependency-installation)"
    )
    assert not (tmp_path / "app-envs").exists()
    # The control: what this environment has runs, installs disabled or not.
    assert not disabled.plan(["numpy>=1.26"], "pyproject.toml").needs_env


# -- building ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(envs: AppEnvs) -> dict[str, str]:
    """Two apps' environments: dep-a 1.0, and dep-b 1.0 (which needs dep-a 2.0)."""
    lines: list[str] = []
    return {
        "1.0": envs.prepare(envs.plan([f"{DEP}==1.0"], "one"), lines.append),
        "b": envs.prepare(envs.plan(["fmtls-dep-b", "numpy"], "two"), lines.append),
    }


def test_two_apps_with_different_needs_get_their_own_environments(
    envs: AppEnvs, built: dict[str, str]
) -> None:
    assert built["1.0"] != built["b"]
    assert _imported(built["1.0"], "fmtls_dep_a", "VERSION") == "1.0"
    assert _imported(built["b"], "fmtls_dep_a", "VERSION") == "2.0"
    assert _imported(built["b"], "fmtls_dep_b", "NAME") == "b"
    # Each sees the node's own packages: flwrmtls (the app process's code) and numpy.
    assert _imported(built["b"], "flwrmtls", "__version__") == __version__
    numpy_here = _imported(sys.executable, "numpy", "__file__")
    assert _imported(built["b"], "numpy", "__file__") == numpy_here
    with pytest.raises(subprocess.CalledProcessError):
        _imported(sys.executable, "fmtls_dep_a", "VERSION")  # the node's own is untouched


def test_an_environment_is_installed_once_and_reused(envs: AppEnvs, built: dict[str, str]) -> None:
    plan = envs.plan([f"{DEP}==1.0"], "again")
    marker = envs.directory / plan.key / "flwrmtls-env.json"
    before = marker.stat().st_mtime_ns
    lines: list[str] = []
    assert envs.prepare(plan, lines.append) == built["1.0"]
    assert lines == [f"app dependencies: reusing environment {plan.label} (nothing installed)"]
    assert marker.stat().st_mtime_ns == before


def test_runs_asking_at_once_for_one_environment_install_it_once(
    pip_env: None, tmp_path: Path
) -> None:
    envs = AppEnvs(tmp_path / "app-envs", host="this node")
    plan = envs.plan([f"{DEP}==2.0"], "pyproject.toml")
    lines: list[list[str]] = [[] for _ in range(3)]
    pythons: list[str] = []
    threads = [
        threading.Thread(target=lambda out=out: pythons.append(envs.prepare(plan, out.append)))
        for out in lines
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(pythons) == 3
    assert len(set(pythons)) == 1
    said = [line for out in lines for line in out]
    installing = [line for line in said if line.startswith("app dependencies: installing")]
    assert installing == [f"app dependencies: installing {DEP}==2.0 into environment {plan.label}"]
    assert sum("just built" in line or "(nothing installed)" in line for line in said) == 2
    assert _imported(pythons[0], "fmtls_dep_a", "VERSION") == "2.0"


def test_an_environment_a_crash_left_half_built_is_built_again(
    pip_env: None, tmp_path: Path
) -> None:
    envs = AppEnvs(tmp_path / "app-envs", host="this node")
    plan = envs.plan([f"{DEP}==1.0"], "pyproject.toml")
    half = envs.directory / plan.key
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("not an interpreter")  # no ready marker
    python = envs.prepare(plan, lambda line: None)
    assert _imported(python, "fmtls_dep_a", "VERSION") == "1.0"


def test_pip_failing_fails_the_environment_with_its_own_line(pip_env: None, tmp_path: Path) -> None:
    envs = AppEnvs(tmp_path / "app-envs", host="this node")
    plan = envs.plan([f"{DEP}==3.0"], "pyproject.toml")  # no such version in the wheelhouse
    with pytest.raises(EnvError) as failed:
        envs.prepare(plan, lambda line: None)
    message = str(failed.value)
    assert message.startswith(f"pip could not install {DEP}==3.0: ERROR: ")
    assert "\n" not in message
    assert not (envs.directory / plan.key).exists()  # nothing half built is kept


def test_no_build_backend_of_the_submitters_choosing_runs_while_installing(
    wheelhouse: Path, tmp_path: Path
) -> None:
    """The attack: a requirement only an sdist satisfies, whose build backend (picked by
    whoever published it, which the submitter chooses by name) runs code on the node as soon
    as pip builds it. The control, plain pip, runs it; the node's install never does."""
    house = tmp_path / "house"
    ran = tmp_path / "backend-ran"
    write_hostile_sdist(house, "fmtls-hostile", "1.0", ran)
    env = {**os.environ, **pip_environment(house)}
    control = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--target", str(tmp_path / "t"),
         "fmtls-hostile==1.0"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert control.returncode != 0  # it never builds, but its code ran:
    assert ran.exists()
    ran.unlink()
    saved = dict(os.environ)
    os.environ.update(pip_environment(house))
    try:
        envs = AppEnvs(tmp_path / "app-envs", host="this node")
        with pytest.raises(EnvError, match=r"pip could not install fmtls-hostile==1\.0: ERROR: "):
            envs.prepare(envs.plan(["fmtls-hostile==1.0"], "pyproject.toml"), lambda line: None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert not ran.exists()


def test_an_install_is_cancelled_when_its_run_ends(pip_env: None, tmp_path: Path) -> None:
    envs = AppEnvs(tmp_path / "app-envs", host="this node")
    plan = envs.plan([f"{DEP}==1.0"], "pyproject.toml")
    cancel = threading.Event()
    cancel.set()  # the run ended before pip could finish
    with pytest.raises(EnvError, match="cancelled"):
        envs.prepare(plan, lambda line: None, cancel)
    assert not envs.ready(plan)


def test_each_link_builds_environments_on_its_own_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside a SQLite database; with a PostgreSQL database (several links), in the link's
    own home, never in the objects directory every replica mounts."""
    from flwrmtls.link.config import LinkConfig

    monkeypatch.setenv("FLWRMTLS_HOME", str(tmp_path / "home"))
    sqlite = LinkConfig(database=tmp_path / "link.db", insecure=True)
    assert sqlite.app_envs_directory == tmp_path / "link.db.app-envs"
    shared = LinkConfig(
        database="postgresql://flwrmtls@db:5432/federation", objects_dir=tmp_path / "shared",
        insecure=True,
    )  # fmt: skip
    assert shared.app_envs_directory == tmp_path / "home" / "link.app-envs"
