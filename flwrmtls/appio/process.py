"""What the ServerApp and ClientApp processes share once started: token, channel, bundle.

Rules:

* An app process is started isolated, in ``/`` (:mod:`flwrmtls.runs.supervisor` says how).
  Once it has its run, it works in the run's own directory, the unpacked bundle
  (:func:`unpack_app`), and imports the app from there and nowhere else
  (:func:`flwrmtls.app.bundle.load_component` puts exactly that directory on ``sys.path``).
* The run token comes on standard input, never on the command line or in the environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from flwrmtls.app.bundle import AppConfig, extract_bundle, read_app_config
from flwrmtls.objects.store import ObjectStore
from flwrmtls.objects.transfer import pull_object_bytes
from flwrmtls.wire.metadata import RUN_TOKEN_KEY

__all__ = [
    "UnpackedApp",
    "configure_logging",
    "open_channel",
    "read_token",
    "shared_store",
    "token_metadata",
    "unpack_app",
]


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def read_token() -> str:
    """The run token, from standard input (the parent writes it there, never on argv)."""
    token = sys.stdin.readline().strip()
    if not token:
        raise SystemExit("no run token on standard input: app processes are started by flwrmtls")
    return token


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((RUN_TOKEN_KEY, token),)


@dataclass(frozen=True)
class UnpackedApp:
    work_dir: Path
    """The temporary directory this process made; :meth:`remove` deletes exactly it."""
    app_dir: Path
    config: AppConfig

    def remove(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def unpack_app(
    stub: object, bundle_hash: str, metadata: tuple[tuple[str, str], ...]
) -> UnpackedApp:
    """Fetch the app bundle by its hash, verify it, unpack it into a new private temporary
    directory, and make that the working directory (the run's own directory)."""
    bundle = pull_object_bytes(stub, bundle_hash, metadata=metadata, timeout=300)
    work_dir = Path(tempfile.mkdtemp(prefix="flwrmtls-app-"))
    try:
        app_dir = extract_bundle(bundle, bundle_hash, work_dir)
        unpacked = UnpackedApp(work_dir, app_dir, read_app_config(app_dir))
        os.chdir(app_dir)
        return unpacked
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise


def shared_store(directory: str) -> ObjectStore | None:
    """The object directory the parent (link or node) shares, when it does and this process
    can read and write it; None means: move objects over the API instead."""
    if not directory or not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        return None
    return ObjectStore(Path(directory))


def open_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(
        address,
        options=[("grpc.max_receive_message_length", 16 << 20)],
    )
