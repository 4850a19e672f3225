"""The other systems' virtualenvs: Flower and NVIDIA FLARE each in its own, beside bench/.

Rules: a virtualenv is made once and reused while its stamp file (``.installed``) names the
same requirements; installs go through pip from the package index, nothing else; a failed
install is one :class:`BenchError` with pip's last lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import BenchError, progress

__all__ = ["BENCH_DIR", "ensure_venv", "pip_install"]

BENCH_DIR = Path(__file__).resolve().parents[1]
STAMP_NAME = ".installed"


def pip_install(python: Path, *args: str) -> None:
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"pip install {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def ensure_venv(
    venv: Path,
    requirement: str,
    install: Callable[[Path], Sequence[str]],
) -> Path:
    """``venv`` with ``requirement`` installed by ``install(python)`` (which returns what else
    it installed), unless its stamp already says so; returns its ``bin/``."""
    stamp = venv / STAMP_NAME
    python = venv / "bin" / "python"
    if stamp.exists() and python.exists() and stamp.read_text().splitlines()[:1] == [requirement]:
        return venv / "bin"
    progress(f"making {venv} ({requirement}, once)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    extra = install(python)
    stamp.write_text("\n".join([requirement, *extra]) + "\n", encoding="utf-8")
    return venv / "bin"


def installed_version(bin_dir: Path, module: str) -> str:
    """``module.__version__`` as the virtualenv's python sees it, or ``unknown``."""
    script = f"import {module}, json; print(json.dumps({module}.__version__))"
    result = subprocess.run(
        [str(bin_dir / "python"), "-c", script], capture_output=True, text=True, check=False
    )
    try:
        return str(json.loads(result.stdout.strip().splitlines()[-1]))
    except (json.JSONDecodeError, IndexError):
        return "unknown"
