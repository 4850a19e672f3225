"""Who may call which method: one table, denying what it does not list.

Rules:

* Every RPC a flwrmtls server serves has a row. A method without a row is refused before its
  handler runs (fail closed); ``tests/auth/test_policy.py`` proves every generated method has a
  row.
* A row names the principal kinds allowed: nodes call the Fleet API; operators and users call
  the Control API (listing nodes is for operators); a ServerApp process calls ServerAppIo and a
  ClientApp process calls ClientAppIo, each with its run's token. A node certificate cannot
  drive the CLI API, a CLI certificate cannot pose as a node, and no certificate reaches AppIo.
* The Enrollment API (its own listener) has no credentials to check: its rows let anonymous
  callers in, and its servicer judges each call's join token and rate
  (:mod:`flwrmtls.enroll.servicer`). No other server of the link serves those methods.
* ``ANONYMOUS`` callers exist only on a link without client authentication (started without
  ``--ssl-require-client-auth``, with a loud warning); there nothing tells callers apart, so
  they may call the Fleet and Control rows marked ``open_without_auth``. AppIo rows never are:
  app processes always need their token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwrmtls.auth.identity import PrincipalKind

__all__ = ["POLICY", "Rule", "is_permitted", "refusal_hint", "required_kinds", "wrong_door"]


@dataclass(frozen=True, slots=True)
class Rule:
    kinds: frozenset[PrincipalKind]
    open_without_auth: bool


_NODES = Rule(frozenset({PrincipalKind.NODE}), open_without_auth=True)
_OPERATORS = Rule(frozenset({PrincipalKind.OPERATOR}), open_without_auth=True)
_CLI_USERS = Rule(frozenset({PrincipalKind.OPERATOR, PrincipalKind.USER}), open_without_auth=True)
_ENROLLING = Rule(frozenset({PrincipalKind.ANONYMOUS}), open_without_auth=True)
"""A new site on the Enrollment API: it has no credentials yet (its token is judged there)."""
_SERVERAPP = Rule(frozenset({PrincipalKind.SERVERAPP}), open_without_auth=False)
_CLIENTAPP = Rule(frozenset({PrincipalKind.CLIENTAPP}), open_without_auth=False)


def _rows(service: str, rule: Rule, *methods: str) -> dict[str, Rule]:
    return {f"/flwrmtls.proto.{service}/{method}": rule for method in methods}


POLICY: Mapping[str, Rule] = {
    **_rows(
        "Fleet", _NODES,
        "ActivateNode", "DeactivateNode", "Heartbeat", "PullMessages", "PushMessages", "GetRun",
        "PullObject", "PushObject", "MissingObjects", "PushLogs", "RenewCertificate",
    ),
    **_rows(
        "Control", _OPERATORS,
        "ListNodes", "RegisterNodeKeys", "UnregisterNode", "ReadmitNode", "ListAudit",
        "CreateEnrollToken", "ListEnrollTokens", "RevokeEnrollToken", "ListEnrollRequests",
        "DecideEnrollRequest",
    ),
    **_rows("Control", _CLI_USERS, "StartRun", "ListRuns", "StreamLogs", "StopRun"),
    **_rows(
        "Enrollment", _ENROLLING,
        "GetCaCertificates", "DescribeToken", "RequestCertificate", "CollectCertificate",
    ),
    **_rows(
        "ServerAppIo", _SERVERAPP,
        "GetRun", "GetNodes", "PushMessages", "PullReplies", "PullObject", "PushObject",
        "MissingObjects", "SetRunResult",
    ),
    **_rows(
        "ClientAppIo", _CLIENTAPP,
        "GetRun", "PullMessage", "PushReply", "PullObject", "PushObject", "MissingObjects",
        "PrepareObjects",
    ),
}  # fmt: skip


def required_kinds(method: str) -> frozenset[PrincipalKind] | None:
    """The kinds allowed to call ``method``; None when the table does not list it."""
    rule = POLICY.get(method)
    return None if rule is None else rule.kinds


def is_permitted(method: str, kind: PrincipalKind) -> bool:
    rule = POLICY.get(method)
    if rule is None:
        return False
    if kind is PrincipalKind.ANONYMOUS:
        return rule.open_without_auth
    return kind in rule.kinds


_CLI_CERTIFICATE = (
    "the Control API takes CLI certificates: issue one with a role (`flwrmtls ca issue cli "
    "NAME --role operator`), or, if your CA writes the role in the OU, start the link with "
    "`--cli-role-source ou`"
)
_OPERATOR_CERTIFICATE = "this needs an operator certificate (a role of operator)"
_NODE_CERTIFICATE = (
    "the Fleet API takes node certificates: a CLI certificate cannot join as a node "
    "(`flwrmtls ca issue node NAME`)"
)

_HINTS: Mapping[tuple[str, PrincipalKind], str] = {
    ("Control", PrincipalKind.NODE): _CLI_CERTIFICATE,
    ("Control", PrincipalKind.USER): _OPERATOR_CERTIFICATE,
    ("Fleet", PrincipalKind.OPERATOR): _NODE_CERTIFICATE,
    ("Fleet", PrincipalKind.USER): _NODE_CERTIFICATE,
}
"""(service, kind of a refused caller) -> what to do instead."""


_DOORS: Mapping[str, str] = {
    "Fleet": "the link's Fleet API, where nodes connect (flwrmtls-supernode --superlink "
    "HOST:PORT; the link's --fleet-api-address, default port 9092)",
    "Control": 'the link\'s Control API, where the CLI connects (address = "HOST:PORT" in a '
    "config.toml profile; the link's --control-api-address, default port 9093)",
    "ServerAppIo": "the link's ServerAppIo API, where the link's own ServerApp processes "
    "connect (loopback, --serverappio-api-address)",
    "Enrollment": "the link's Enrollment API, where new sites ask for their certificate with "
    "a join token (flwrmtls-supernode --enroll-token-file; the link's "
    "--enrollment-api-address, default port 9095)",
    "ClientAppIo": "a node's ClientAppIo API, where its own ClientApp processes connect "
    "(loopback, the node's --clientappio-api-address)",
}
"""Each API by service name: who connects to it, and where it listens by default."""


def _service(method: str) -> str:
    return method.rpartition("/")[0].rpartition(".")[2]  # /pkg.Service/Method -> Service


def wrong_door(method: str, serves: str) -> str:
    """What a caller of ``method`` is told by a server of the ``serves`` API, which does not
    serve it: which door this is, and which one the call belongs to."""
    wanted = _service(method)
    here = _DOORS.get(serves, f"the {serves} API")
    there = _DOORS.get(wanted, f"the {wanted} API")
    return f"this address is {here}; {method.rsplit('/', 1)[-1]} belongs to {there}"


def refusal_hint(method: str, kind: PrincipalKind) -> str:
    """What a caller the table refuses should do instead; empty when there is no advice."""
    return _HINTS.get((_service(method), kind), "")
