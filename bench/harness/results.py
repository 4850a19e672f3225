"""What a benchmark run records besides its figures, and its JSON on disk.

Rules: every result carries the date, the commit (``+changes`` when the work tree differs),
the machine and the load average, so figures are never read without them; JSON is written
whole to a temporary file and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import cryptography
import grpc
import numpy as np
import psutil

from flwrmtls import __version__ as flwrmtls_version

__all__ = ["envelope", "load_json", "loadavg", "machine_facts", "revision", "save_json"]

REPOSITORY = Path(__file__).resolve().parents[2]


def revision() -> str:
    """The commit of this checkout, with ``+changes`` when tracked files differ from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=False,
                timeout=30,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def loadavg() -> float:
    """The 1-minute load average (other work on the machine slows every system)."""
    return os.getloadavg()[0]


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    from cryptography.hazmat.backends.openssl.backend import backend

    return {
        "flwrmtls": flwrmtls_version,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
        "openssl": str(backend.openssl_version_text()),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
    }


def envelope(benchmark: str, config: dict[str, Any]) -> dict[str, Any]:
    """The start of a result: what ran, where, when, with which settings."""
    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "revision": revision(),
        "machine": machine_facts(),
        "loadavg_start": loadavg(),
        "config": config,
    }


def save_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def load_json(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result
