"""App directories and bundles: config errors, deterministic archives, safe extraction,
loading components, merging run config."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flwrmtls.app import ClientApp, ServerApp
from flwrmtls.app.bundle import (
    AppConfig,
    BundleError,
    bundle_hash,
    extract_bundle,
    load_component,
    merge_run_config,
    read_app_config,
)
from flwrmtls.app.bundling import build_bundle, check_bundle
from flwrmtls.errors import InputError
from flwrmtls.keyvalues import Value

PYPROJECT = """\
[project]
name = "demo-app"
version = "1.2.3"

[tool.flwrmtls.app.components]
serverapp = "{package}.apps:server"
clientapp = "{package}.apps:client"

[tool.flwrmtls.app.config]
num-server-rounds = 3
lr = 0.1
use-gpu = false
label = "x"
optimizer.momentum = 0.9
"""

APPS = """\
from flwrmtls.app import ClientApp, ServerApp

server = ServerApp()
client = ClientApp()
not_an_app = 42
ORIGIN = {origin!r}
"""


def make_app(directory: Path, package: str = "demo_pkg", origin: str = "") -> Path:
    (directory / package).mkdir(parents=True)
    (directory / "pyproject.toml").write_text(PYPROJECT.format(package=package))
    (directory / package / "__init__.py").write_text("")
    (directory / package / "apps.py").write_text(APPS.format(origin=origin))
    return directory


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return make_app(tmp_path / "app")


@pytest.fixture
def restore_imports() -> Iterator[None]:
    """load_component changes sys.path and sys.modules: put them back after the test."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def names_in(bundle: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        return tar.getnames()


# -- read_app_config / merge_run_config -----------------------------------------------------


def test_read_app_config(app_dir: Path) -> None:
    assert read_app_config(app_dir) == AppConfig(
        name="demo-app",
        version="1.2.3",
        serverapp="demo_pkg.apps:server",
        clientapp="demo_pkg.apps:client",
        default_config={
            "num-server-rounds": 3,
            "lr": 0.1,
            "use-gpu": False,
            "label": "x",
            "optimizer.momentum": 0.9,
        },
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "demo-app"\n', "", r"\[project\] name is missing"),
        ('version = "1.2.3"\n', "version = 1\n", r"\[project\] version is missing or not a string"),
        ("[project]", "[notproject]", r"missing \[project\]"),
        ("[tool.flwrmtls.app.components]", "[tool.other]", "missing .tool.flwrmtls.app.components"),
        ('"demo_pkg.apps:server"', '"demo_pkg.apps"', "serverapp must be"),
        ('"demo_pkg.apps:client"', '"demo_pkg.apps:"', "clientapp must be"),
        ('label = "x"', "label = [1, 2]", "config. label must be a string, number or boolean"),
        ('label = "x"', "label = 1979-05-27", "config. label must be"),
        ("num-server-rounds = 3", "num-server-rounds = ", "is not valid TOML"),
    ],
)
def test_read_app_config_errors_name_the_file_and_key(
    app_dir: Path, old: str, new: str, message: str
) -> None:
    path = app_dir / "pyproject.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(InputError, match=message) as caught:
        read_app_config(app_dir)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_read_app_config_without_pyproject(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"pyproject\.toml: not found"):
        read_app_config(tmp_path)


def test_merge_run_config() -> None:
    defaults: dict[str, Value] = {"num-server-rounds": 3, "lr": 0.1, "use-gpu": False, "label": "x"}
    merged = merge_run_config(defaults, {"num-server-rounds": 5, "lr": 1})
    assert merged == {"num-server-rounds": 5, "lr": 1.0, "use-gpu": False, "label": "x"}
    assert type(merged["lr"]) is float
    assert defaults["num-server-rounds"] == 3  # not changed in place
    with pytest.raises(
        InputError,
        match=r"unknown key 'rounds' \(known keys: label, lr, num-server-rounds, use-gpu\)",
    ):
        merge_run_config(defaults, {"rounds": 5})
    with pytest.raises(
        InputError, match="num-server-rounds must be of type int like its default 3"
    ):
        merge_run_config(defaults, {"num-server-rounds": "five"})
    with pytest.raises(InputError, match="must be of type int"):
        merge_run_config(defaults, {"num-server-rounds": True})
    with pytest.raises(InputError, match="must be of type bool"):
        merge_run_config(defaults, {"use-gpu": 1})


# -- build_bundle ---------------------------------------------------------------------------


def test_bundles_are_deterministic(app_dir: Path, tmp_path: Path) -> None:
    first = build_bundle(app_dir)
    assert build_bundle(app_dir) == first
    for path in app_dir.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert build_bundle(app_dir) == first  # mtimes do not matter
    moved = make_app(tmp_path / "elsewhere")
    assert build_bundle(moved) == first  # nor where the directory is
    (app_dir / "demo_pkg" / "apps.py").write_text(APPS.format(origin="changed"))
    assert bundle_hash(build_bundle(app_dir)) != bundle_hash(first)  # content does
    assert len(bundle_hash(first)) == 64


def test_bundle_members_are_normalised(app_dir: Path) -> None:
    script = app_dir / "run.py"
    script.write_text("#!/usr/bin/env python\n")
    script.chmod(0o775)
    (app_dir / "demo_pkg" / "apps.py").chmod(0o600)
    bundle = build_bundle(app_dir)
    assert bundle[4:8] == b"\x00\x00\x00\x00"  # gzip mtime
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == sorted(members)
    assert members["run.py"].mode == 0o755
    assert members["demo_pkg/apps.py"].mode == 0o644
    for member in members.values():
        assert member.isreg()
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0,
            0,
            0,
            "",
            "",
        )


def test_bundles_leave_out_caches_and_build_output(app_dir: Path) -> None:
    for relative in [
        ".git/config",
        ".venv/lib/site.py",
        ".env",
        "demo_pkg/__pycache__/apps.cpython-311.pyc",
        "demo_pkg/stale.pyc",
        "build/lib/x.py",
        "dist/demo.whl",
        "demo_app.egg-info/PKG-INFO",
        "demo_pkg/.hidden/notes.txt",
        "venv/pyvenv.cfg",
        "venv/lib/python3.11/site-packages/numpy/__init__.py",
        "demo_pkg/build/kept.py",
    ]:
        path = app_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert names_in(build_bundle(app_dir)) == [
        "demo_pkg/__init__.py",
        "demo_pkg/apps.py",
        "demo_pkg/build/kept.py",
        "pyproject.toml",
    ]


def test_a_symlink_that_would_be_bundled_is_refused(app_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.py").write_text("x")
    (tmp_path / "elsewhere").mkdir()
    (app_dir / "id_rsa").symlink_to(tmp_path / "secret.py")  # not an app file: left out
    build_bundle(app_dir)  # control
    (app_dir / "link.py").symlink_to(tmp_path / "secret.py")
    with pytest.raises(InputError, match=r"link\.py: is a symbolic link"):
        build_bundle(app_dir)
    (app_dir / "link.py").unlink()
    (app_dir / "data").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="data: is a symbolic link to a directory"):
        build_bundle(app_dir)
    (app_dir / ".gitignore").write_text("/data\n")  # an ignored link is not looked at
    assert "data" not in " ".join(names_in(build_bundle(app_dir)))


def test_build_bundle_checks_the_config_first(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"pyproject\.toml: not found"):
        build_bundle(tmp_path)


# -- extract_bundle -------------------------------------------------------------------------


def test_extract_round_trip(app_dir: Path, tmp_path: Path) -> None:
    (app_dir / "run.py").write_text("#!/usr/bin/env python\n")
    (app_dir / "run.py").chmod(0o755)
    bundle = build_bundle(app_dir)
    target = extract_bundle(bundle, bundle_hash(bundle), tmp_path / "out")
    assert target == tmp_path / "out"
    assert read_app_config(target) == read_app_config(app_dir)
    assert (target / "demo_pkg" / "apps.py").read_text() == (
        app_dir / "demo_pkg" / "apps.py"
    ).read_text()
    assert (target / "run.py").stat().st_mode & 0o777 == 0o755
    assert build_bundle(target) == bundle


def test_extract_verifies_the_hash(app_dir: Path, tmp_path: Path) -> None:
    bundle = build_bundle(app_dir)
    tampered = bytearray(bundle)
    tampered[len(tampered) // 2] ^= 0xFF
    with pytest.raises(BundleError, match="bundle hash mismatch") as caught:
        extract_bundle(bytes(tampered), bundle_hash(bundle), tmp_path / "out")
    assert isinstance(caught.value, InputError)
    assert isinstance(caught.value, ValueError)
    assert not (tmp_path / "out").exists()
    with pytest.raises(BundleError, match="bundle hash mismatch"):
        extract_bundle(bundle, "0" * 64, tmp_path / "out")


def test_extract_into_a_non_empty_directory_is_refused(app_dir: Path, tmp_path: Path) -> None:
    bundle = build_bundle(app_dir)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        extract_bundle(bundle, bundle_hash(bundle), tmp_path / "out")


def _tarball(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


@pytest.mark.parametrize(
    ("evil", "message"),
    [
        (_member("/etc/evil"), "absolute path"),
        (_member("../evil"), "leaves the app directory"),
        (_member("pkg/../../evil"), "leaves the app directory"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("hard", tarfile.LNKTYPE, "pyproject.toml"), "is a link"),
        (_member("dev", tarfile.CHRTYPE), "device or special file"),
        (_member("fifo", tarfile.FIFOTYPE), "device or special file"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "symlink", "hardlink", "device", "fifo"],
)
def test_extract_refuses_unsafe_members(
    evil: tarfile.TarInfo, message: str, tmp_path: Path
) -> None:
    bundle = _tarball((_member("pyproject.toml"), b"[project]\n"), (evil, b"owned"))
    target = tmp_path / "deep" / "out"
    with pytest.raises(BundleError, match=message):
        extract_bundle(bundle, bundle_hash(bundle), target)
    assert not target.exists()  # nothing written, not even the safe member
    assert not (tmp_path / "deep" / "evil").exists()


def test_extract_of_a_safe_hand_made_tarball(tmp_path: Path) -> None:
    bundle = _tarball((_member("pkg", tarfile.DIRTYPE), b""), (_member("pkg/a.py"), b"x = 1\n"))
    target = extract_bundle(bundle, bundle_hash(bundle), tmp_path / "out")
    assert (target / "pkg" / "a.py").read_text() == "x = 1\n"


def test_extract_refuses_what_is_not_a_tarball(tmp_path: Path) -> None:
    junk = b"not a tarball at all"
    with pytest.raises(BundleError, match=r"not a valid \.tar\.gz"):
        extract_bundle(junk, bundle_hash(junk), tmp_path / "out")


# -- load_component -------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_imports")
def test_load_component(tmp_path: Path) -> None:
    app_dir = make_app(tmp_path / "app", package="pkg_load_ok")
    server = load_component(app_dir, "pkg_load_ok.apps:server", ServerApp)
    client = load_component(app_dir, "pkg_load_ok.apps:client", ClientApp)
    assert isinstance(server, ServerApp)
    assert isinstance(client, ClientApp)


@pytest.mark.usefixtures("restore_imports")
@pytest.mark.parametrize(
    ("reference", "kind", "message"),
    [
        ("pkg_load_err.nothing:app", ServerApp, "module 'pkg_load_err.nothing' not found"),
        ("pkg_absent.apps:app", ServerApp, "module 'pkg_absent' not found"),
        ("pkg_load_err.apps:missing", ServerApp, "has no attribute 'missing'"),
        ("pkg_load_err.apps:not_an_app", ServerApp, "is of type int, not ServerApp"),
        ("pkg_load_err.apps:client", ServerApp, "is of type ClientApp, not ServerApp"),
        ("pkg_load_err.broken:app", ClientApp, "importing pkg_load_err.broken failed: Zero"),
        ("pkg_load_err.needs:app", ClientApp, "failed: ModuleNotFoundError: .*not_installed"),
        ("no colon", ClientApp, "is not a component reference"),
    ],
)
def test_load_component_errors(
    tmp_path: Path, reference: str, kind: type[object], message: str
) -> None:
    app_dir = make_app(tmp_path / "app", package="pkg_load_err")
    (app_dir / "pkg_load_err" / "broken.py").write_text("1 / 0\n")
    (app_dir / "pkg_load_err" / "needs.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(InputError, match=message) as caught:
        load_component(app_dir, reference, kind)
    assert "\n" not in str(caught.value)


@pytest.mark.usefixtures("restore_imports")
def test_two_apps_with_one_package_name_each_load_their_own(tmp_path: Path) -> None:
    first = make_app(tmp_path / "first", package="pkg_twice", origin="first")
    second = make_app(tmp_path / "second", package="pkg_twice", origin="second")
    load_component(first, "pkg_twice.apps:server", ServerApp)
    assert sys.modules["pkg_twice.apps"].ORIGIN == "first"
    load_component(second, "pkg_twice.apps:server", ServerApp)
    assert sys.modules["pkg_twice.apps"].ORIGIN == "second"


@pytest.mark.usefixtures("restore_imports")
def test_an_app_package_may_not_shadow_an_imported_module(tmp_path: Path) -> None:
    app_dir = make_app(tmp_path / "app", package="json")
    import json  # noqa: F401  (imported from the standard library)

    with pytest.raises(InputError, match="'json' has the name of a module already imported"):
        load_component(app_dir, "json.apps:server", ServerApp)
    assert sys.modules["json"].__file__ != str(app_dir / "json" / "__init__.py")


def test_the_link_checks_a_bundle_and_refuses_oversized_ones(
    app_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flwrmtls.app.bundle as bundle_module

    bundle = build_bundle(app_dir)
    config = check_bundle(bundle)
    assert config == bundle_module.read_app_config(app_dir)  # control
    # A bundle declaring more than the limit is refused before its data is read.
    monkeypatch.setattr(bundle_module, "MAX_UNPACKED_BYTES", 100)
    with pytest.raises(bundle_module.BundleError, match="unpacks to more than"):
        check_bundle(bundle)
    with pytest.raises(bundle_module.BundleError, match="unpacks to more than"):
        bundle_module.extract_bundle(
            bundle, bundle_module.bundle_hash(bundle), tmp_path / "unpacked"
        )
