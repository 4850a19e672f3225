"""``flwrmtls new``: the command, the names it derives, and the template shipped as data."""

from __future__ import annotations

import glob
import tomllib
from importlib import resources
from pathlib import Path

import pytest

import flwrmtls
from flwrmtls.app.bundle import read_app_config
from flwrmtls.app.bundling import build_bundle
from flwrmtls.app.templates import package_name, project_name, write_app
from flwrmtls.errors import InputError
from flwrmtls.testing.processes import run_cli

REPOSITORY = Path(flwrmtls.__file__).parent.parent


def test_new_through_the_command_line(tmp_path: Path) -> None:
    created = run_cli(["new", "my-fl-app"], cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    app_dir = tmp_path / "my-fl-app"
    assert "created app 'my-fl-app' (package my_fl_app)" in created.stdout
    for path in ["pyproject.toml", "README.md", "my_fl_app/client_app.py", "my_fl_app/task.py"]:
        assert f"  {path}\n" in created.stdout
        assert (app_dir / path).is_file()
    assert "flwrmtls run my-fl-app --stream" in created.stdout
    assert "partition-id=0 num-partitions=2" in created.stdout
    config = read_app_config(app_dir)
    assert config.name == "my-fl-app"
    assert config.serverapp == "my_fl_app.server_app:app"
    assert config.clientapp == "my_fl_app.client_app:app"
    assert config.default_config == {
        "num-server-rounds": 3,
        "fraction-train": 1.0,
        "local-epochs": 3,
        "lr": 1.0,
        "batch-size": 64,
        "min-nodes": 2,
    }
    build_bundle(app_dir)  # it bundles

    again = run_cli(["new", "my-fl-app"], cwd=tmp_path)
    assert again.returncode == 1
    assert (
        again.stderr == f"flwrmtls: error: {app_dir} already exists and is not an empty directory\n"
    )
    assert "Traceback" not in again.stdout + again.stderr


def test_new_with_a_name(tmp_path: Path) -> None:
    written = write_app(tmp_path / "2 Fancy-App!", name="fancy")
    assert (written.name, written.package) == ("fancy", "app_2_fancy_app")
    text = (written.app_dir / "pyproject.toml").read_text()
    assert "$" not in text
    assert tomllib.loads(text)["tool"]["setuptools"]["packages"] == ["app_2_fancy_app"]
    readme = (written.app_dir / "README.md").read_text()
    assert readme.startswith("# fancy\n")
    assert "app_2_fancy_app/" in readme


def test_new_into_an_empty_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "empty_dir").mkdir()
    created = run_cli(["new", "empty_dir"], cwd=tmp_path)  # python -m: the cwd is on sys.path
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "empty_dir" / "empty_dir" / "task.py").is_file()


@pytest.mark.parametrize(
    ("directory", "name", "message"),
    [
        ("json", None, "'json', which is the name of an installed module"),
        ("ok-app", "bad name", "--name 'bad name'"),
        ("ok-app", "-leading", "--name '-leading'"),
    ],
)
def test_new_refuses(tmp_path: Path, directory: str, name: str | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        write_app(tmp_path / directory, name)
    assert not (tmp_path / directory).exists()


def test_new_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(InputError, match="already exists and is not an empty directory"):
        write_app(tmp_path / "taken")


@pytest.mark.parametrize(
    ("text", "package", "project"),
    [
        ("my-app", "my_app", "my-app"),
        ("My App 2", "my_app_2", "my-app-2"),
        ("123", "app_123", "123"),
        ("class", "class_app", "class"),
        ("émoji✨", "moji", "moji"),
        ("---", "app", "app"),
    ],
)
def test_derived_names(text: str, package: str, project: str) -> None:
    assert package_name(text) == package
    assert package.isidentifier()
    assert project_name(text) == project


def test_the_generated_package_is_the_template_verbatim(tmp_path: Path) -> None:
    written = write_app(tmp_path / "verbatim")
    template = resources.files("flwrmtls.app.templates").joinpath("quickstart", "package")
    for module in ["__init__.py", "client_app.py", "server_app.py", "task.py"]:
        assert (written.app_dir / "verbatim" / module).read_text() == (
            template.joinpath(module).read_text()
        )


def test_package_data_ships_every_template_file() -> None:
    """A regular install ships what [tool.setuptools.package-data] names: every file of the
    template must match one of its patterns."""
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["flwrmtls"]
    package_dir = REPOSITORY / "flwrmtls"
    shipped = {
        Path(match)
        for pattern in patterns
        for match in glob.glob(pattern, root_dir=package_dir, recursive=True)
    }
    template_dir = package_dir / "app" / "templates" / "quickstart"
    needed = {
        path.relative_to(package_dir)
        for path in template_dir.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path != template_dir / "__init__.py"  # the template directory's own marker
    }
    assert {p.name for p in needed} >= {"pyproject.toml.tmpl", "README.md.tmpl", "task.py"}
    assert needed <= shipped, needed - shipped
