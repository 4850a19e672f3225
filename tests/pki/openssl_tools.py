"""Run the real openssl CLI (and the real flwrmtls CLI) from tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import flwrmtls

__all__ = ["REPOSITORY_ROOT", "openssl", "openssl_verify", "run_flwrmtls"]

REPOSITORY_ROOT = Path(flwrmtls.__file__).resolve().parent.parent
OPENSSL = shutil.which("openssl") or "openssl"


def openssl(*arguments: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``openssl ARGUMENTS`` and return the finished process (never raises on failure)."""
    return subprocess.run(
        [OPENSSL, *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=60,
    )


def openssl_verify(
    trust_bundle: Path,
    issuing_certificate: Path,
    certificate: Path,
    *,
    purpose: str,
    crl: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``openssl verify -CAfile … -untrusted … -purpose …`` (and ``-crl_check`` with a CRL)."""
    crl_arguments: list[str | Path] = [] if crl is None else ["-crl_check", "-CRLfile", crl]
    return openssl(
        "verify",
        "-CAfile",
        trust_bundle,
        "-untrusted",
        issuing_certificate,
        "-purpose",
        purpose,
        *crl_arguments,
        certificate,
    )


def run_flwrmtls(*arguments: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``flwrmtls`` command line in a fresh interpreter, as a user would."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPOSITORY_ROOT), *filter(None, [environment.get("PYTHONPATH")])]
    )
    environment.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "flwrmtls.cli.main", *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        check=False,
        timeout=120,
    )
