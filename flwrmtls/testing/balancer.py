"""haproxy in TCP mode in front of several links, for tests and benchmarks.

Rules:

* TCP mode only: TLS passes through untouched, so each node's and CLI's certificate is checked
  by a link, never by the balancer (it holds no key).
* One frontend per API (e.g. Fleet and Control), each on a free loopback port, balancing its
  backends round-robin per connection; a backend is checked every ``check_interval`` seconds
  (a TCP connect) and taken out after one failed check, and a connection refused by a dead
  backend is sent to another (``option redispatch``, ``retries``).
* Long polls and streams live long: client and server timeouts are an hour.
* haproxy missing is :class:`BalancerUnavailable` with one line naming the package; a test
  that needs it fails with that line, never skips.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["BalancerUnavailable", "Haproxy"]


class BalancerUnavailable(Exception):
    """haproxy cannot run here; the message says what to install."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Haproxy:
    """``Haproxy({"fleet": [p1, p2], "control": [q1, q2]}, directory)``; ``ports[name]`` is
    where each frontend listens."""

    def __init__(
        self,
        backends: Mapping[str, Sequence[int]],
        directory: Path,
        *,
        check_interval: float = 0.5,
    ) -> None:
        program = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
        )
        if program is None:
            raise BalancerUnavailable(
                "haproxy is not installed: install Debian's haproxy package "
                "(apt-get install haproxy; make test does it as root)"
            )
        self.ports = {name: _free_port() for name in backends}
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "haproxy.cfg"
        self.log_path = directory / "haproxy.log"
        interval = f"{int(check_interval * 1000)}ms"
        lines = [
            "global",
            "    maxconn 4000",
            "defaults",
            "    mode tcp",
            "    timeout connect 2s",
            "    timeout client 1h",
            "    timeout server 1h",
            "    retries 3",
            "    option redispatch",
        ]
        for name, ports in backends.items():
            lines += [
                f"frontend {name}",
                f"    bind 127.0.0.1:{self.ports[name]}",
                f"    default_backend {name}-links",
                f"backend {name}-links",
                "    balance roundrobin",
            ]
            lines += [
                f"    server link-{i} 127.0.0.1:{port} check inter {interval} fall 1 rise 1"
                for i, port in enumerate(ports)
            ]
        self.config_path.write_text("\n".join(lines) + "\n")
        check = subprocess.run(
            [program, "-c", "-q", "-f", str(self.config_path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if check.returncode != 0:
            raise BalancerUnavailable(f"haproxy refused its configuration: {check.stderr.strip()}")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [program, "-db", "-f", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        for port in self.ports.values():
            while True:
                if self.process.poll() is not None:
                    raise BalancerUnavailable(
                        f"haproxy exited: {self.log_path.read_text(errors='replace')[-500:]}"
                    )
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise BalancerUnavailable(
                            f"haproxy does not listen on 127.0.0.1:{port}"
                        ) from None
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
