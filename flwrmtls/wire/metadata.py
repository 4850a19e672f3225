"""Names of the gRPC metadata flwrmtls uses, importable without the auth machinery (the app
processes start faster without it)."""

__all__ = ["OBJECT_KEY", "REFUSAL_KEY", "RUN_TOKEN_KEY", "object_declaration"]

RUN_TOKEN_KEY = "flwrmtls-run-token"  # noqa: S105 - a metadata key, not a secret
"""An app process's run token, on every AppIo call."""

REFUSAL_KEY = "flwrmtls-refusal"
"""Trailing metadata naming why the link refused a call."""

OBJECT_KEY = "flwrmtls-object"
"""An object upload's declaration, ``<sha256 hex>:<size>``: what an EC-key node signs for a
client-streaming call (see :mod:`flwrmtls.auth.callsigning`)."""


def object_declaration(object_id: str, size: int) -> str:
    """The ``flwrmtls-object`` value for an upload of ``object_id`` (``size`` bytes)."""
    return f"{object_id}:{size}"
