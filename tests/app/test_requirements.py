"""An app's ``[project] dependencies``: what a run submitter may ask a link or node to install.

The attack: a requirement that is not a package name, and so steers pip itself (an option such
as ``--index-url`` or ``-e``, a URL or a path to fetch from), each refused in one line naming
the entry; beside it, the requirements an app legitimately lists, accepted and written back in
their canonical text. Bundling refuses the same (the CLI), and so does the link's check of a
bundle whoever built it (through the real link: tests/e2e/test_app_dependencies.py).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from flwrmtls.app.bundle import BundleError, bundle_app_config, read_app_config
from flwrmtls.app.bundling import build_bundle, check_bundle
from flwrmtls.app.requirements import MAX_REQUIREMENTS, parse_requirements
from flwrmtls.errors import InputError

ACCEPTED = {
    "numpy>=1.26": "numpy>=1.26",
    "scikit-learn >= 1.3": "scikit-learn>=1.3",
    "torch==2.5.*": "torch==2.5.*",
    "requests[socks,security]>=2,<3": "requests[security,socks]<3,>=2",
    "tomli; python_version < '3.11'": 'tomli; python_version < "3.11"',
    "flwrmtls": "flwrmtls",
}

REFUSED = {
    "--index-url=https://evil.example/simple": "not a PEP 508 requirement",
    "--extra-index-url https://evil.example/simple": "not a PEP 508 requirement",
    "-i https://evil.example/simple": "not a PEP 508 requirement",
    "-e .": "not a PEP 508 requirement",
    "-r /etc/requirements.txt": "not a PEP 508 requirement",
    "./local-package": "not a PEP 508 requirement",
    "/opt/evil.whl": "not a PEP 508 requirement",
    "git+https://evil.example/pkg.git": "not a PEP 508 requirement",
    "numpy\n--index-url https://evil.example/simple": "not a PEP 508 requirement",
    "numpy --index-url=https://evil.example/simple": "not a PEP 508 requirement",
    "numpy @ https://evil.example/numpy-9.9-py3-none-any.whl": "names a URL",
    "numpy @ file:///tmp/numpy-9.9-py3-none-any.whl": "names a URL",
    "pkg @ git+https://evil.example/pkg.git": "names a URL",
    "x" * 201: "longer than 200 characters",
}


@pytest.mark.parametrize(("entry", "canonical"), ACCEPTED.items(), ids=list(ACCEPTED))
def test_a_pep_508_requirement_is_accepted_in_its_canonical_text(
    entry: str, canonical: str
) -> None:
    (requirement,) = parse_requirements([entry], "pyproject.toml")
    assert str(requirement) == canonical


@pytest.mark.parametrize(("entry", "why"), REFUSED.items(), ids=[e[:40] for e in REFUSED])
def test_what_would_steer_pip_is_refused_in_one_line(entry: str, why: str) -> None:
    with pytest.raises(InputError) as refused:
        parse_requirements(["numpy>=1.26", entry], "app/pyproject.toml: [project]")
    message = str(refused.value)
    assert message.startswith("app/pyproject.toml: [project]: ")
    assert why in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ("numpy", "must be a list of strings"),
        ([1.26], "must be a string, not 1.26"),
        (["numpy"] * (MAX_REQUIREMENTS + 1), f"at most {MAX_REQUIREMENTS} are accepted"),
    ],
)
def test_a_dependencies_entry_of_the_wrong_shape_is_refused(entries: object, why: str) -> None:
    with pytest.raises(InputError, match=why):
        parse_requirements(entries, "pyproject.toml")
    assert parse_requirements(None, "pyproject.toml") == ()  # none listed: none needed


def _app(directory: Path, dependencies: str) -> Path:
    (directory / "app").mkdir(parents=True)
    (directory / "app" / "__init__.py").write_text("")
    (directory / "pyproject.toml").write_text(
        f'[project]\nname = "app"\nversion = "1.0"\ndependencies = {dependencies}\n\n'
        '[tool.flwrmtls.app.components]\nserverapp = "app.s:app"\nclientapp = "app.c:app"\n'
    )
    return directory


def test_bundling_refuses_an_app_whose_requirement_steers_pip(tmp_path: Path) -> None:
    hostile = _app(tmp_path / "hostile", '["numpy", "--index-url=https://evil.example/simple"]')
    with pytest.raises(InputError, match=r"pyproject.toml: \[project\]: dependency "):
        read_app_config(hostile)
    good = _app(tmp_path / "good", '["numpy>=1.26", "scikit-learn >= 1.3"]')
    config = read_app_config(good)
    assert config.dependencies == ("numpy>=1.26", "scikit-learn>=1.3")
    assert bundle_app_config(build_bundle(good)) == config


def _handmade_bundle(pyproject: str) -> bytes:
    """A bundle built without the CLI's checks, as a hostile submitter's client would."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in (("pyproject.toml", pyproject), ("app/__init__.py", "")):
            encoded = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(encoded)
            tar.addfile(info, io.BytesIO(encoded))
    return data.getvalue()


def test_the_links_bundle_check_refuses_it_whoever_built_the_bundle() -> None:
    template = (
        '[project]\nname = "app"\nversion = "1.0"\ndependencies = [{}]\n\n'
        '[tool.flwrmtls.app.components]\nserverapp = "app.s:app"\nclientapp = "app.c:app"\n'
    )
    hostile = _handmade_bundle(template.format('"pkg @ https://evil.example/pkg.whl"'))
    with pytest.raises(BundleError) as refused:
        check_bundle(hostile)
    assert str(refused.value).startswith("the bundle's pyproject.toml: [project]: dependency ")
    assert "names a URL" in str(refused.value)
    assert check_bundle(_handmade_bundle(template.format('"pkg>=1"'))).dependencies == ("pkg>=1",)
