"""The policy table covers every generated method and denies what it does not list."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest

from flwrmtls import proto
from flwrmtls.auth.identity import PrincipalKind
from flwrmtls.auth.policy import POLICY, is_permitted


def _generated_modules() -> list[Any]:
    """Every generated ``*_pb2`` module: a new .proto is covered without naming it here."""
    names = [m.name for m in pkgutil.iter_modules(proto.__path__) if m.name.endswith("_pb2")]
    return [importlib.import_module(f"flwrmtls.proto.{name}") for name in sorted(names)]


def _generated_methods() -> set[str]:
    methods = set()
    for module in _generated_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.add(f"/{service.full_name}/{method.name}")
    return methods


def test_table_lists_exactly_the_generated_methods() -> None:
    generated = _generated_methods()
    assert generated, "no generated methods found"
    assert set(POLICY) == generated


def test_unlisted_method_is_denied_to_everyone() -> None:
    for kind in PrincipalKind:
        assert not is_permitted("/flwrmtls.proto.Fleet/Unknown", kind)


@pytest.mark.parametrize("method", sorted(m for m in POLICY if "/flwrmtls.proto.Fleet/" in m))
def test_fleet_is_for_nodes_only(method: str) -> None:
    assert is_permitted(method, PrincipalKind.NODE)
    assert not is_permitted(method, PrincipalKind.OPERATOR)
    assert not is_permitted(method, PrincipalKind.USER)


def test_listing_nodes_is_for_operators() -> None:
    method = "/flwrmtls.proto.Control/ListNodes"
    assert is_permitted(method, PrincipalKind.OPERATOR)
    assert not is_permitted(method, PrincipalKind.NODE)
    assert not is_permitted(method, PrincipalKind.USER)


def test_anonymous_callers_reach_fleet_and_control_but_never_app_io() -> None:
    for method in POLICY:
        app_io = "AppIo/" in method
        assert is_permitted(method, PrincipalKind.ANONYMOUS) is not app_io, method


@pytest.mark.parametrize("method", sorted(m for m in POLICY if "AppIo/" in m))
def test_app_io_is_for_its_app_process_only(method: str) -> None:
    own = PrincipalKind.SERVERAPP if "ServerAppIo" in method else PrincipalKind.CLIENTAPP
    assert is_permitted(method, own)
    for kind in PrincipalKind:
        if kind is not own:
            assert not is_permitted(method, kind), (method, kind)


def test_users_start_and_follow_runs_but_do_not_list_nodes() -> None:
    for method in ("StartRun", "ListRuns", "StreamLogs", "StopRun"):
        assert is_permitted(f"/flwrmtls.proto.Control/{method}", PrincipalKind.USER)
        assert not is_permitted(f"/flwrmtls.proto.Control/{method}", PrincipalKind.NODE)
