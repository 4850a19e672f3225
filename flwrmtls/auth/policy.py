"""Who may call which method: one table, denying what it does not list.

Rules:

* Every RPC the link serves has a row. A method without a row is refused before its handler
  runs (fail closed); ``tests/auth/test_policy.py`` proves every generated method has a row.
* A row names the principal kinds allowed: nodes call the Fleet API, operators (and, where
  listed, users) call the Control API. A node certificate cannot drive the CLI API and a CLI
  certificate cannot pose as a node.
* ``ANONYMOUS`` callers exist only on a link without client authentication (started without
  ``--ssl-require-client-auth``, with a loud warning); there nothing tells callers apart, so
  they may call every listed method.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwrmtls.auth.identity import PrincipalKind

__all__ = ["POLICY", "is_permitted", "required_kinds"]

_NODES = frozenset({PrincipalKind.NODE})
_OPERATORS = frozenset({PrincipalKind.OPERATOR})

_FLEET = "/flwrmtls.proto.Fleet/"
_CONTROL = "/flwrmtls.proto.Control/"

POLICY: Mapping[str, frozenset[PrincipalKind]] = {
    _FLEET + "ActivateNode": _NODES,
    _FLEET + "DeactivateNode": _NODES,
    _FLEET + "Heartbeat": _NODES,
    _FLEET + "PullMessages": _NODES,
    _FLEET + "PushMessages": _NODES,
    _CONTROL + "ListNodes": _OPERATORS,
}


def required_kinds(method: str) -> frozenset[PrincipalKind] | None:
    """The kinds allowed to call ``method``; None when the table does not list it."""
    return POLICY.get(method)


def is_permitted(method: str, kind: PrincipalKind) -> bool:
    allowed = POLICY.get(method)
    if allowed is None:
        return False
    return kind is PrincipalKind.ANONYMOUS or kind in allowed
