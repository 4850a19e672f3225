"""Fixtures for end-to-end tests."""

from tests.e2e.deployment import deployment

__all__ = ["deployment"]
