"""Which files make an app's bundle (the CLI's selection) and which bundles the link accepts:
each leak beside the app file that still travels."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.app.appfiles import APP_SUFFIXES, IGNORE_FILE, member_problem, select_app_files
from flwrmtls.app.bundle import BundleError
from flwrmtls.app.bundling import build_bundle, check_bundle
from flwrmtls.errors import InputError

from .test_bundle import make_app

KEY_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    .decode()
)


def write(root: Path, relative: str, text: str = "x = 1\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def selected(app_dir: Path) -> list[str]:
    return [f.name for f in select_app_files(app_dir).files]


APP_FILES = ["demo_pkg/__init__.py", "demo_pkg/apps.py", "pyproject.toml"]


def test_only_the_apps_sources_and_configs_are_selected(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    for relative in [
        "certs/ca/root.key", "certs/ca/issuing.key", "certs/ca/revoked.json", "certs/ca.crt",
        "certs/admin.key", "certs/admin.pem", "id_rsa", "data/train.npy", "data/labels.csv",
        "model.pt", "results.json", "kaggle.json", ".env", "notebook.ipynb", "run.sh",
    ]:  # fmt: skip
        write(app, relative)
    for relative in ["conf/base.yaml", "conf/extra.yml", "README.md", "requirements.txt",
                     "setup.cfg", "tox.ini", "docs/index.rst"]:  # fmt: skip
        write(app, relative)
    assert selected(app) == sorted(
        [*APP_FILES, "README.md", "conf/base.yaml", "conf/extra.yml", "docs/index.rst",
         "requirements.txt", "setup.cfg", "tox.ini"]
    )  # fmt: skip
    left_out = {x.name: x.reason for x in select_app_files(app).left_out}
    assert left_out["id_rsa"] == "not an app file type"
    assert left_out["certs/ca/root.key"] == "not an app file type"
    assert left_out[".env"] == "hidden"


def test_gitignore_and_the_apps_ignore_file_leave_files_out(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    write(app, "demo_pkg/secret_config.py")
    write(app, "demo_pkg/generated.py")
    write(app, "scratch/try.py")
    write(app, "conf/local.yaml")
    write(app, "conf/base.yaml")
    assert "demo_pkg/secret_config.py" in selected(app)  # control: nothing ignored yet
    write(app, ".gitignore", "secret_config.py\n/scratch/\nconf/*.yaml\n!conf/base.yaml\n")
    assert selected(app) == sorted([*APP_FILES, "conf/base.yaml", "demo_pkg/generated.py"])
    # The app's own ignore file adds to .gitignore and may take back what it leaves out.
    write(app, IGNORE_FILE, "generated.py\n!conf/local.yaml\n")
    assert selected(app) == sorted([*APP_FILES, "conf/base.yaml", "conf/local.yaml"])
    reasons = {x.name: x.reason for x in select_app_files(app).left_out}
    assert reasons["scratch/"] == "ignored by .gitignore"
    assert reasons["demo_pkg/generated.py"] == f"ignored by {IGNORE_FILE}"


def test_an_ignore_file_in_a_subdirectory_applies_below_it(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    write(app, "demo_pkg/fixtures/big.py")
    write(app, "demo_pkg/fixtures/small.py")
    write(app, "other/big.py")
    write(app, "demo_pkg/fixtures/.gitignore", "*.py\n!small.py\n")
    assert selected(app) == sorted([*APP_FILES, "demo_pkg/fixtures/small.py", "other/big.py"])
    # The deepest matching file decides: the top .gitignore cannot take small.py back out...
    write(app, ".gitignore", "!big.py\n")
    assert "demo_pkg/fixtures/big.py" not in selected(app)
    # ...but it applies where the deeper file says nothing.
    write(app, ".gitignore", "other/\n")
    assert selected(app) == sorted([*APP_FILES, "demo_pkg/fixtures/small.py"])


def test_an_ignore_file_cannot_add_a_file_type_or_a_hidden_file(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    write(app, "data/train.npy")
    write(app, ".secrets/token.py")
    write(app, IGNORE_FILE, "!*.npy\n!.secrets/\n!data/\n")
    assert selected(app) == APP_FILES


def test_virtual_environments_are_left_out_whatever_their_name(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    write(app, "env/pyvenv.cfg", "home = /usr/bin\n")
    write(app, "env/lib/python3.11/site-packages/torch/__init__.py")
    write(app, "tools/helper.py")
    assert selected(app) == sorted([*APP_FILES, "tools/helper.py"])
    assert {"name": "env/", "reason": "virtual environment"} in [
        {"name": x.name, "reason": x.reason} for x in select_app_files(app).left_out
    ]


def test_a_private_key_in_an_app_file_refuses_the_whole_bundle(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    write(app, "demo_pkg/settings.py", "DEBUG = True\n")
    build_bundle(app)  # control
    key = write(app, "demo_pkg/credentials.py", f'KEY = """{KEY_PEM}"""\n')
    with pytest.raises(InputError) as caught:
        build_bundle(app)
    message = str(caught.value)
    assert str(key) in message
    assert "holds a PEM PRIVATE KEY block" in message
    assert "\n" not in message
    assert "MII" not in message  # no key material in the message
    # The same key in a file of no app type is simply not bundled.
    key.rename(app / "credentials.pem")
    assert "credentials.pem" not in selected(app)
    # An ignored file is not read at all.
    (app / "credentials.pem").rename(key)
    write(app, IGNORE_FILE, "credentials.py\n")
    assert "demo_pkg/credentials.py" not in selected(app)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("pkg/model.py", None),
        ("pyproject.toml", None),
        ("conf/a.YAML", None),
        ("data/train.npy", "not an app file type"),
        ("id_rsa", "not an app file type"),
        ("certs/ca/root.key", "not an app file type"),
        ("results.json", "not an app file type"),
        (".env", "hidden"),
        ("pkg/.hidden/x.py", "hidden"),
        ("pkg/__pycache__/x.py", "Python cache"),
        ("pkg.egg-info/SOURCES.txt", "packaging metadata"),
        ("build/lib/x.py", "build output"),
        ("venv/pyvenv.cfg", "virtual environment"),
    ],
)
def test_member_problem(name: str, problem: str | None) -> None:
    assert member_problem(name) == problem


def test_the_allow_list_is_text_only() -> None:
    assert {".py", ".toml", ".md"} <= APP_SUFFIXES  # what Flower's builder takes
    assert not APP_SUFFIXES & {".json", ".key", ".pem", ".npy", ".pt", ".sh", ".ipynb", ""}


# -- the link's check of what a bundle holds --------------------------------------------------


def tarball(files: Mapping[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("member", "content", "message"),
    [
        ("certs/ca/issuing.key", "x", "'certs/ca/issuing.key': not an app file type"),
        ("data/train.npy", b"\x93NUMPY", "'data/train.npy': not an app file type"),
        ("id_rsa", KEY_PEM, "'id_rsa': not an app file type"),
        (".env", "TOKEN=1", "'.env': hidden"),
        ("demo_pkg/key.py", KEY_PEM, "'demo_pkg/key.py' holds a PEM PRIVATE KEY block"),
        ("notes.md", f"here it is:\n{KEY_PEM}", "'notes.md' holds a PEM PRIVATE KEY block"),
    ],
    ids=["ca-key", "data", "ssh-key", "hidden", "key-in-py", "key-in-md"],
)
def test_the_link_refuses_a_bundle_an_honest_cli_would_not_build(
    tmp_path: Path, member: str, content: str | bytes, message: str
) -> None:
    app = make_app(tmp_path / "app")
    honest = {f.name: f.data for f in select_app_files(app).files}
    assert check_bundle(tarball(honest)).name == "demo-app"  # control
    with pytest.raises(BundleError, match=message) as caught:
        check_bundle(tarball({**honest, member: content}))
    assert "\n" not in str(caught.value)
