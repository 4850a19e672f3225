"""Fixtures for the deployment tests: real link and node processes (see tests/e2e)."""

from tests.e2e.deployment import deployment

__all__ = ["deployment"]
