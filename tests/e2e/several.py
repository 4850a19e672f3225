"""Several link processes on one PostgreSQL database behind haproxy (TCP mode): the pieces an
end-to-end test of replicas needs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flwrmtls.testing.balancer import BalancerUnavailable, Haproxy
from flwrmtls.testing.processes import LinkProcess

from .deployment import Deployment

__all__ = ["SeveralLinks", "balancer", "wait_for"]


def balancer(links: list[LinkProcess], directory: Path) -> Haproxy:
    """haproxy with a Fleet and a Control frontend over ``links``; fails (never skips) the
    test in one line when haproxy is missing."""
    try:
        return Haproxy(
            {
                "fleet": [link.fleet_port for link in links],
                "control": [link.control_port for link in links],
            },
            directory,
        )
    except BalancerUnavailable as error:
        pytest.fail(f"haproxy: {error}", pytrace=False)


def wait_for(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


class SeveralLinks:
    """``count`` link processes on ``database`` sharing one object directory, haproxy in
    front, and the CLI profile ``test`` through it."""

    def __init__(self, deployment: Deployment, database: str, count: int = 2) -> None:
        self.deployment = deployment
        self.objects = deployment.tmp / "shared-objects"
        self.links: list[LinkProcess] = []
        for index in range(count):
            args = deployment.link_args()
            args[args.index("--database") + 1] = database
            args += ["--objects-dir", str(self.objects)]
            self.links.append(deployment.start_link(args, name=f"link-{index}"))
        self.haproxy = balancer(self.links, deployment.tmp / "haproxy")
        self.fleet_port = self.haproxy.ports["fleet"]
        self.control_port = self.haproxy.ports["control"]
        deployment.profile(self.control_port)

    def runs(self) -> list[dict[str, object]]:
        result = self.deployment.cli("ls", "--format", "json")
        assert result.returncode == 0, result.stderr
        listed: list[dict[str, object]] = json.loads(result.stdout)
        return listed

    def holder(self, run_id: int) -> LinkProcess:
        """The link process whose ServerApp runs ``run_id``."""
        wanted = f"run {run_id}: its ServerApp runs beside this link"
        wait_for(lambda: any(wanted in link.log for link in self.links), wanted)
        return next(link for link in self.links if wanted in link.log)

    def stop(self) -> None:
        self.haproxy.stop()
