"""The Control API from the CLI's side, reached through a connection profile.

A TLS profile must name the CA bundle that verifies the link (``root-certificates``); one
without it is refused before anything connects, never verified against grpc's public CAs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import grpc

from flwrmtls.connectionprofiles import Profile
from flwrmtls.errors import InputError
from flwrmtls.keyvalues import Value, values_to_proto
from flwrmtls.proto import control_pb2, control_pb2_grpc
from flwrmtls.wire.clienttls import ClientNames, load_client_tls
from flwrmtls.wire.credentials import no_root_certificates
from flwrmtls.wire.errors import ConnectionContext, call

__all__ = ["ControlClient"]

_T = TypeVar("_T")
_CALL_TIMEOUT = 15.0
_OPTIONS = [("grpc.max_send_message_length", 64 << 20)]


class ControlClient:
    def __init__(self, profile: Profile, config_file: str) -> None:
        where = f"profile {profile.name!r} of {config_file}"
        if profile.insecure:
            if profile.client_certificate or profile.root_certificates:
                raise InputError(f"{where}: insecure = true cannot be combined with certificates")
            self._channel = grpc.insecure_channel(profile.address, options=_OPTIONS)
            self._ctx = ConnectionContext(
                profile.address, tls=False, has_client_certificate=False, root_certificates=""
            )
        else:
            tls = load_client_tls(
                profile.address,
                roots=profile.root_certificates,
                certfile=profile.client_certificate,
                keyfile=profile.client_private_key,
                names=ClientNames(
                    roots=f"root-certificates ({where})",
                    cert=f"client-certificate ({where})",
                    key=f"client-private-key ({where})",
                    pair=f"client-certificate and client-private-key in {where}",
                ),
                no_roots=no_root_certificates(
                    f"{where} has no root-certificates",
                    f"root-certificates (`flwrmtls config add {profile.name} --address "
                    f"{profile.address} --root-certificates FILE` with its other options)",
                ),
            )
            self._channel = tls.channel(_OPTIONS)
            self._ctx = tls.context()
        self._stub = control_pb2_grpc.ControlStub(self._channel)

    def list_nodes(self, *, verbose: bool = False) -> list[control_pb2.NodeInfo]:
        return list(self.list_nodes_and_revocation(verbose=verbose).nodes)

    def _call(self, invoke: Callable[[], _T]) -> _T:
        """One call; its failure translated (:func:`flwrmtls.wire.errors.call`)."""
        return call(invoke, self._ctx)

    def list_nodes_and_revocation(self, *, verbose: bool = False) -> control_pb2.ListNodesResponse:
        """The nodes, and how the link checks revocation per issuer of client certificates."""
        request = control_pb2.ListNodesRequest(verbose=verbose)
        response: control_pb2.ListNodesResponse = self._call(
            lambda: self._stub.ListNodes(request, timeout=_CALL_TIMEOUT)
        )
        return response

    def register_keys(
        self, public_keys: list[bytes], identity: str = ""
    ) -> list[control_pb2.RegisteredKey]:
        """Register keys; ``identity`` binds them to a certificate node (certificate+key)."""
        request = control_pb2.RegisterNodeKeysRequest(public_keys=public_keys, identity=identity)
        response = self._call(lambda: self._stub.RegisterNodeKeys(request, timeout=_CALL_TIMEOUT))
        return list(response.keys)

    def unregister_node(self, node_id: int) -> control_pb2.UnregisterNodeResponse:
        request = control_pb2.UnregisterNodeRequest(node_id=node_id)
        response: control_pb2.UnregisterNodeResponse = self._call(
            lambda: self._stub.UnregisterNode(request, timeout=_CALL_TIMEOUT)
        )
        return response

    def readmit_node(self, node_id: int) -> str:
        request = control_pb2.ReadmitNodeRequest(node_id=node_id)
        response = self._call(lambda: self._stub.ReadmitNode(request, timeout=_CALL_TIMEOUT))
        return str(response.identity)

    def start_run(self, bundle: bytes, bundle_hash: str, overrides: Mapping[str, Value]) -> int:
        request = control_pb2.StartRunRequest(
            bundle=bundle, bundle_hash=bundle_hash, run_config=values_to_proto(overrides)
        )
        response = self._call(lambda: self._stub.StartRun(request, timeout=_CALL_TIMEOUT * 4))
        return int(response.run_id)

    def list_runs(self, run_id: int = 0) -> list[control_pb2.Run]:
        request = control_pb2.ListRunsRequest(run_id=run_id)
        response = self._call(lambda: self._stub.ListRuns(request, timeout=_CALL_TIMEOUT))
        return list(response.runs)

    def stream_logs(self, run_id: int, *, follow: bool) -> Iterator[control_pb2.LogEntry]:
        """Log entries; the last one carries the run's status (``run_status``)."""
        request = control_pb2.StreamLogsRequest(run_id=run_id, follow=follow)
        entries = self._call(lambda: iter(self._stub.StreamLogs(request)))
        while (entry := self._call(lambda: next(entries, None))) is not None:
            yield entry
            if entry.run_status:
                return

    def stop_run(self, run_id: int) -> str:
        request = control_pb2.StopRunRequest(run_id=run_id)
        response = self._call(lambda: self._stub.StopRun(request, timeout=_CALL_TIMEOUT))
        return str(response.status)

    def list_audit(self, *, limit: int = 0, identity: str = "") -> list[control_pb2.AuditEntry]:
        """The audit trail, newest first (``limit`` 0: the link's default, 100)."""
        request = control_pb2.ListAuditRequest(limit=limit, identity=identity)
        response = self._call(lambda: self._stub.ListAudit(request, timeout=_CALL_TIMEOUT))
        return list(response.entries)

    def create_enroll_token(
        self, identity: control_pb2.EnrollIdentity, ttl_seconds: float
    ) -> control_pb2.CreateEnrollTokenResponse:
        """A new join token: its text is in this answer only."""
        request = control_pb2.CreateEnrollTokenRequest(identity=identity, ttl_seconds=ttl_seconds)
        response: control_pb2.CreateEnrollTokenResponse = self._call(
            lambda: self._stub.CreateEnrollToken(request, timeout=_CALL_TIMEOUT)
        )
        return response

    def list_enroll_tokens(self, *, all: bool = False) -> list[control_pb2.EnrollToken]:
        request = control_pb2.ListEnrollTokensRequest(all=all)
        response = self._call(lambda: self._stub.ListEnrollTokens(request, timeout=_CALL_TIMEOUT))
        return list(response.tokens)

    def revoke_enroll_token(self, token_id: str) -> control_pb2.EnrollToken:
        request = control_pb2.RevokeEnrollTokenRequest(token_id=token_id)
        response = self._call(lambda: self._stub.RevokeEnrollToken(request, timeout=_CALL_TIMEOUT))
        token: control_pb2.EnrollToken = response.token
        return token

    def list_enroll_requests(self, *, all: bool = False) -> list[control_pb2.EnrollRequest]:
        request = control_pb2.ListEnrollRequestsRequest(all=all)
        response = self._call(lambda: self._stub.ListEnrollRequests(request, timeout=_CALL_TIMEOUT))
        return list(response.requests)

    def decide_enroll_request(
        self, request_id: int, *, approve: bool, reason: str = ""
    ) -> control_pb2.EnrollRequest:
        request = control_pb2.DecideEnrollRequestRequest(
            request_id=request_id, approve=approve, reason=reason
        )
        response = self._call(
            lambda: self._stub.DecideEnrollRequest(request, timeout=_CALL_TIMEOUT)
        )
        decided: control_pb2.EnrollRequest = response.request
        return decided

    def close(self) -> None:
        self._channel.close()
