"""How each Fleet listener authenticates nodes: one table, chosen by configuration.

=================  ==================================  ===========================================
mode               TLS handshake                        authenticator
=================  ==================================  ===========================================
certificate        client certificate required          MtlsAuthenticator
key                server TLS only                      EcKeyAuthenticator (registered keys only
                                                        with ``--enable-supernode-auth``)
certificate+key    client certificate required          CertificateAndBoundKey(MtlsAuthenticator,
                                                        EcKeyAuthenticator): the key must be
                                                        registered for the certificate's node
none               server TLS, or plaintext             OpenAuthenticator (development only)
=================  ==================================  ===========================================

The main Fleet listener (``--fleet-api-address``) uses ``--node-auth`` (default: ``certificate``
with ``--ssl-require-client-auth``, else ``key``; ``none`` with ``--insecure``). A second
listener (``--key-fleet-api-address``) always uses ``key``: one link then admits certificate
nodes and EC-key nodes at once, for a migration. (grpcio cannot ask for an optional client
certificate on one port: with client auth off it never requests one.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from flwrmtls.auth.authenticator import Authenticator, OpenAuthenticator
from flwrmtls.auth.compose import BoundNode, CertificateAndBoundKey
from flwrmtls.auth.eckey import EcKeyAuthenticator

__all__ = ["NodeAuth", "build_node_authenticator", "requires_client_certificate"]


class NodeAuth(enum.StrEnum):
    CERTIFICATE = "certificate"
    KEY = "key"
    CERTIFICATE_AND_KEY = "certificate+key"
    NONE = "none"


def requires_client_certificate(mode: NodeAuth) -> bool:
    return mode in (NodeAuth.CERTIFICATE, NodeAuth.CERTIFICATE_AND_KEY)


def build_node_authenticator(
    mode: NodeAuth,
    *,
    certificates: Callable[[], Authenticator],
    keys: Callable[[], EcKeyAuthenticator],
    bound_node: BoundNode,
) -> Authenticator:
    """The authenticator for a listener in ``mode`` (builders are called only if needed).
    ``bound_node``: the node an EC key was registered for (certificate+key)."""
    table: dict[NodeAuth, Callable[[], Authenticator]] = {
        NodeAuth.CERTIFICATE: certificates,
        NodeAuth.KEY: keys,
        NodeAuth.CERTIFICATE_AND_KEY: lambda: CertificateAndBoundKey(
            certificates(), keys(), bound_node
        ),
        NodeAuth.NONE: OpenAuthenticator,
    }
    return table[mode]()
