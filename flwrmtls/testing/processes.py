"""The link, nodes and the CLI as real subprocesses, for end-to-end tests and the demo.

Each process writes its log to a file; helpers wait (bounded) for a line that says it is
ready, and fail with the log's tail when it exits or times out instead. The link and nodes
start as their console scripts would (``python -P``: their working directory is not on
``sys.path``), in the working directory given (default: the caller's).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CliProcess", "CliResult", "LinkProcess", "ManagedProcess", "NodeProcess", "run_cli"]

_PORTS = re.compile(r"Fleet API on \S+ \(port (\d+)\), Control API on \S+ \(port (\d+)\)")


class ManagedProcess:
    """A child process with its output in ``log_path``."""

    module = ""
    ready_pattern = re.compile("")

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.args = list(args)
        self.log_path = log_path
        self.cwd = cwd
        self._env = {**os.environ, **(env or {})}
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", self.module, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self.cwd,
            )

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches ``pattern``; raise if the process exits first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.log)
            if match:
                return match
            if self.process is not None and self.process.poll() is not None:
                match = regex.search(self.log)
                if match:
                    return match
                raise RuntimeError(
                    f"{self.module} exited with {self.process.returncode} before "
                    f"{regex.pattern!r}:\n{self.log[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.module}: no {regex.pattern!r} in {timeout}s:\n{self.log[-3000:]}"
        )

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def signal_stop(self) -> None:
        """SIGTERM, without waiting (several processes can then stop at once)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


class LinkProcess(ManagedProcess):
    module = "flwrmtls.link.main"
    fleet_port = 0
    control_port = 0

    def start_and_wait(self, timeout: float = 30.0) -> None:
        self.start()
        match = self.wait_for(_PORTS, timeout)
        self.fleet_port, self.control_port = int(match.group(1)), int(match.group(2))


class NodeProcess(ManagedProcess):
    module = "flwrmtls.node.main"

    def wait_active(self, timeout: float = 30.0) -> int:
        """Wait until the node is active; return its node id."""
        return int(self.wait_for(r"node active: node id (\d+)", timeout).group(1))


class CliProcess(ManagedProcess):
    """``flwrmtls ARGS`` left running (``run --stream``, ``log --stream``), output to a file."""

    module = "flwrmtls.cli.main"


class CliResult:
    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr


def run_cli(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> CliResult:
    """Run ``flwrmtls ARGS`` as a user would, capturing its output."""
    completed = subprocess.run(
        [sys.executable, "-m", "flwrmtls.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return CliResult(completed)
