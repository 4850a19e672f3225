"""Names of the gRPC metadata flwrmtls uses, importable without the auth machinery (the app
processes start faster without it)."""

__all__ = ["REFUSAL_KEY", "RUN_TOKEN_KEY"]

RUN_TOKEN_KEY = "flwrmtls-run-token"  # noqa: S105 - a metadata key, not a secret
"""An app process's run token, on every AppIo call."""

REFUSAL_KEY = "flwrmtls-refusal"
"""Trailing metadata naming why the link refused a call."""
