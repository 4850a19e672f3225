"""The refusal table and the node's mapping of it: pure functions over values.

A cause is read from the code the link states, never from the status alone: a NOT_FOUND
without a code, or with a code whose status is another, ends nothing on the node.
"""

from __future__ import annotations

import grpc
import pytest

from flwrmtls.auth.authenticator import RefusalReason
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.fleet.client import (
    NODE_ERRORS,
    ObjectMissing,
    OverQuota,
    RequestRefused,
    RunUnavailable,
    SessionEnded,
    node_error,
)
from flwrmtls.wire.metadata import REFUSAL_KEY
from flwrmtls.wire.refusals import REFUSALS, Api, Refusal, refusal_of

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def stated(code: str) -> list[tuple[str, str]]:
    return [("other-key", "x"), (REFUSAL_KEY, code)]


@pytest.mark.parametrize(
    ("refusal", "kind", "ends_session"),
    [
        (Refusal.UNKNOWN_SESSION, SessionEnded, True),
        (Refusal.SESSION_SUPERSEDED, SessionEnded, True),
        (Refusal.RUN_ENDED, RunUnavailable, False),
        (Refusal.RUN_NOT_FOR_NODE, RunUnavailable, False),
        (Refusal.NO_OBJECT, ObjectMissing, False),
        (Refusal.OVER_QUOTA, OverQuota, False),
        (Refusal.INVALID_MESSAGE, RequestRefused, False),
        (Refusal.FOREIGN_MESSAGE, RequestRefused, False),
        (Refusal.OBJECTS_NOT_PUSHED, RequestRefused, False),
        (Refusal.INVALID_REQUEST, RequestRefused, False),
    ],
)
def test_each_code_becomes_its_own_error_and_only_session_codes_end_a_session(
    refusal: Refusal, kind: type[FlwrmtlsError], ends_session: bool
) -> None:
    status = REFUSALS[refusal].status
    error = node_error(status, "the link's words", stated(refusal.value))
    assert type(error) is kind
    assert str(error) == "the link's words"
    assert isinstance(error, SessionEnded) is ends_session
    # Without details, the table's meaning is the message.
    assert str(node_error(status, "", stated(refusal.value))) == REFUSALS[refusal].meaning


def test_which_session_code_and_which_run_code() -> None:
    superseded = node_error(grpc.StatusCode.FAILED_PRECONDITION, "", stated("session-superseded"))
    unknown = node_error(NOT_FOUND, "", stated("unknown-session"))
    assert isinstance(superseded, SessionEnded)
    assert superseded.superseded
    assert isinstance(unknown, SessionEnded)
    assert not unknown.superseded
    ended = node_error(NOT_FOUND, "", stated("run-ended"))
    not_mine = node_error(NOT_FOUND, "", stated("run-not-for-node"))
    assert isinstance(ended, RunUnavailable)
    assert ended.ended
    assert isinstance(not_mine, RunUnavailable)
    assert not not_mine.ended


def test_a_status_alone_is_no_refusal() -> None:
    """The old client read every NOT_FOUND as a session that ended ("run 2 has no work for
    this node" ended the session and lost the rest of the batch)."""
    assert node_error(NOT_FOUND, "run 2 has no work for this node", []) is None
    assert node_error(grpc.StatusCode.FAILED_PRECONDITION, "session superseded", []) is None
    # grpc's own RESOURCE_EXHAUSTED (a message over its size limit) is not a storage quota.
    assert node_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger", []) is None
    # Control: the same statuses with their codes are refusals.
    assert isinstance(node_error(NOT_FOUND, "", stated("unknown-session")), SessionEnded)
    assert isinstance(node_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "", stated("over-quota")),
                      OverQuota)  # fmt: skip


def test_a_code_with_another_status_or_an_unknown_code_is_no_refusal() -> None:
    assert refusal_of(grpc.StatusCode.UNAVAILABLE, stated("unknown-session")) is None
    assert refusal_of(grpc.StatusCode.UNAUTHENTICATED, stated("run-ended")) is None
    assert refusal_of(NOT_FOUND, stated("no-such-code")) is None
    assert refusal_of(NOT_FOUND, stated("revoked")) is None  # a credential refusal's code
    assert refusal_of(NOT_FOUND, stated("run-ended")) is Refusal.RUN_ENDED  # control


def test_the_tables_cover_every_code_and_share_none_with_credential_refusals() -> None:
    assert set(REFUSALS) == set(Refusal)
    # The node has its error for every code a Fleet call may carry, and for no other.
    assert set(NODE_ERRORS) == {r for r, row in REFUSALS.items() if Api.FLEET in row.apis}
    assert not {r.value for r in Refusal} & {r.value for r in RefusalReason}


def test_a_code_the_fleet_api_never_states_is_no_node_error() -> None:
    """A Control code reaching a node (a misdirected call) is translated by its status."""
    assert node_error(NOT_FOUND, "no run 3", stated("no-run")) is None
