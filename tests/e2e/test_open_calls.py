"""Open calls lose their credentials with the caller, through a real link on loopback.

A node idle in a long poll, a CLI following a run's logs and an object transfer each hold a
call open. When what admitted the call ends (a CRL revokes the certificate, the client CA
bundle drops its CA, an operator unregisters the node, the certificate expires), the link
answers that open call with the refusal at once, as it would a new call: it does not wait for
the caller's next call. Each refusal sits beside a caller whose credentials stay good and
whose open call goes on.

Bounds: the link re-reads its files and judges open calls about once a second, so a refusal
is expected within a couple of seconds; the tests allow 10 s and hold the calls open for 30 s
(the longest long poll), so they do not depend on the machine's speed, while the code before
this change (which answered only at the caller's next call) fails them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.keyformats import public_key_der
from flwrmtls.auth.nodeauth import NodeAuth
from flwrmtls.errors import Refused
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.reload import TlsFiles
from flwrmtls.link.server import Link
from flwrmtls.objects.store import CHUNK_SIZE, object_id_of
from flwrmtls.objects.transfer import push_objects
from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.proto import control_pb2, control_pb2_grpc, fleet_pb2_grpc, objects_pb2
from flwrmtls.state.runlifecycle import RunStatus
from flwrmtls.testing.link import key_node_client, mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.metadata import REFUSAL_KEY

from .deployment import Deployment
from .probe_app import write_probe_app

LONG_POLL = 30.0
"""The longest a link holds a PullMessages open (its cap)."""
PROMPT = 10.0
"""How soon an open call must be answered with its refusal (the link judges about every 1 s)."""


@contextmanager
def link_for(
    tmp_path: Path, pki: TestPki, *, client_ca: Path | None = None, watch: bool = False
) -> Iterator[Link]:
    """A link trusting ``client_ca`` (default: ``pki``'s root) with ``pki``'s CRL; with
    ``watch`` it re-reads its TLS files (the client CA bundle) as the real link does."""
    chain, key = pki.paths("server")
    ca = client_ca or pki.trust_bundle_path
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=ca, crl=pki.crl_path
    )
    if watch:
        config = dataclasses.replace(config, tls_files=TlsFiles(chain, key, ca))
    with running_link(config) as link:
        yield link


@contextmanager
def node(link: Link, pki: TestPki, chain: Path, key: Path) -> Iterator[FleetClient]:
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
    )
    try:
        yield client
    finally:
        channel.close()


@contextmanager
def polling() -> Iterator[ThreadPoolExecutor]:
    """Threads for long polls; the polls still open at the end are cancelled (not awaited)."""
    with ThreadPoolExecutor(4) as pool:
        try:
            yield pool
        finally:
            _DONE.set()


_DONE = threading.Event()


def long_poll(pool: ThreadPoolExecutor, client: FleetClient, session: Session) -> Future[object]:
    """An idle node's PullMessages, held open by the link for up to LONG_POLL seconds."""
    _DONE.clear()
    return pool.submit(client.pull, session, wait=LONG_POLL, active_run_ids=[], cancel=[_DONE])


def refused_within(future: Future[object], bound: float = PROMPT) -> str:
    """The refusal an open call was answered with, within ``bound`` seconds."""
    with pytest.raises(Refused) as refused:
        future.result(timeout=bound)
    return str(refused.value)


def assert_still_open(future: Future[object], client: FleetClient, session: Session) -> None:
    """The control: its long poll is still waiting, and its next call is admitted."""
    assert not future.done()
    client.heartbeat(session)


def operator_stub(link: Link, chain: Path, key: Path, pki: TestPki) -> control_pb2_grpc.ControlStub:
    identity = load_tls_identity(chain, key, cert_flag="c", key_flag="k")
    channel = grpc.secure_channel(
        f"127.0.0.1:{link.control_port}",
        channel_credentials(pki.trust_bundle_path.read_bytes(), identity),
    )
    return control_pb2_grpc.ControlStub(channel)


# --- a node idle in a long poll -------------------------------------------------------------


def test_a_revoked_node_in_a_long_poll_is_refused_at_once(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """As a node whose certificate was revoked while it waits for work."""
    with (
        link_for(tmp_path, fresh_pki) as link,
        node(link, fresh_pki, *fresh_pki.paths("node-1")) as kept,
        node(link, fresh_pki, *fresh_pki.paths("node-2")) as revoked,
        polling() as pool,
    ):
        kept_session, revoked_session = kept.activate(), revoked.activate()
        kept_poll = long_poll(pool, kept, kept_session)
        revoked_poll = long_poll(pool, revoked, revoked_session)
        time.sleep(0.5)  # both polls are open on the link
        fresh_pki.ca.revoke(certificate_file=fresh_pki.paths("node-2")[0])
        assert "certificate revoked" in refused_within(revoked_poll)
        assert_still_open(kept_poll, kept, kept_session)
        assert "refused" in link_log_of_revocation(link)


def link_log_of_revocation(link: Link) -> str:
    """The audit trail records the refusal of the open call, like any refusal."""
    entries = link.state.audit.entries(limit=50)
    outcomes = [e.record.outcome for e in entries if e.record.method.endswith("PullMessages")]
    assert "revoked" in outcomes
    return "refused"


def test_unregistering_a_node_in_a_long_poll_refuses_it_at_once(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """As an operator removing a node that is idle: it is out now, not at its next call."""
    with (
        link_for(tmp_path, fresh_pki) as link,
        node(link, fresh_pki, *fresh_pki.paths("node-1")) as kept,
        node(link, fresh_pki, *fresh_pki.paths("node-2")) as removed,
        polling() as pool,
    ):
        kept_session, removed_session = kept.activate(), removed.activate()
        kept_poll = long_poll(pool, kept, kept_session)
        removed_poll = long_poll(pool, removed, removed_session)
        time.sleep(0.5)
        operator = operator_stub(link, *fresh_pki.paths("cli-operator"), fresh_pki)
        operator.UnregisterNode(
            control_pb2.UnregisterNodeRequest(node_id=removed_session.node_id), timeout=10
        )
        assert "node unregistered" in refused_within(removed_poll, bound=5.0)
        assert_still_open(kept_poll, kept, kept_session)


def test_unregistering_an_ec_key_node_in_a_long_poll_refuses_it_at_once(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """The same for EC-key nodes (CLI-managed mode): its key is refused from now on."""
    chain, key = fresh_pki.paths("server")
    config = dataclasses.replace(
        mtls_config(
            tmp_path / "link.db", server_chain=chain, server_key=key,
            client_ca=fresh_pki.trust_bundle_path,
        ),
        node_auth=NodeAuth.KEY, enable_supernode_auth=True,
    )  # fmt: skip
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    with running_link(config) as link, polling() as pool:
        operator = operator_stub(link, *fresh_pki.paths("cli-operator"), fresh_pki)
        operator.RegisterNodeKeys(
            control_pb2.RegisterNodeKeysRequest(public_keys=[public_key_der(k) for k in keys]),
            timeout=10,
        )
        (kept, _), (removed, _) = (
            key_node_client(link, root_certificates=fresh_pki.trust_bundle_path, key=k)
            for k in keys
        )
        kept_session, removed_session = kept.activate(), removed.activate()
        kept_poll = long_poll(pool, kept, kept_session)
        removed_poll = long_poll(pool, removed, removed_session)
        time.sleep(0.5)
        operator.UnregisterNode(
            control_pb2.UnregisterNodeRequest(node_id=removed_session.node_id), timeout=10
        )
        assert "node unregistered" in refused_within(removed_poll, bound=5.0)
        assert_still_open(kept_poll, kept, kept_session)


def test_a_client_ca_bundle_that_drops_a_ca_ends_its_nodes_open_calls(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """CA rollover's last step: the old CA's nodes are out at once, the new CA's stay."""
    new_ca = CertificateAuthority.create(tmp_path / "new-ca", name="New CA")
    new_node = new_ca.issue_node("node-9", organization="New Org")
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(
        fresh_pki.trust_bundle_path.read_bytes() + new_ca.trust_bundle_path.read_bytes()
    )
    with (
        link_for(tmp_path, fresh_pki, client_ca=bundle, watch=True) as link,
        node(link, fresh_pki, *fresh_pki.paths("node-1")) as old,
        node(link, fresh_pki, new_node.chain_path, new_node.key_path) as new,
        polling() as pool,
    ):
        old_session, new_session = old.activate(), new.activate()
        old_poll = long_poll(pool, old, old_session)
        new_poll = long_poll(pool, new, new_session)
        time.sleep(0.5)
        staging = tmp_path / "clients.pem.new"
        shutil.copyfile(new_ca.trust_bundle_path, staging)
        staging.replace(bundle)
        assert "not signed by a trusted CA" in refused_within(old_poll)
        assert_still_open(new_poll, new, new_session)


def test_a_certificate_that_expires_during_a_long_poll_is_refused_when_it_expires(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    now = datetime.now(UTC)
    expiring = fresh_pki.ca.issue_node(
        "short-lived",
        options=LeafOptions(
            not_before=now - timedelta(minutes=1), not_after=now + timedelta(seconds=6)
        ),
    )
    with (
        link_for(tmp_path, fresh_pki) as link,
        node(link, fresh_pki, *fresh_pki.paths("node-1")) as kept,
        node(link, fresh_pki, expiring.chain_path, expiring.key_path) as short,
        polling() as pool,
    ):
        kept_session, short_session = kept.activate(), short.activate()
        kept_poll = long_poll(pool, kept, kept_session)
        short_poll = long_poll(pool, short, short_session)
        seconds_left = (
            expiring.certificate.not_valid_after_utc - datetime.now(UTC)
        ).total_seconds()
        assert "certificate expired on" in refused_within(short_poll, bound=seconds_left + PROMPT)
        assert_still_open(kept_poll, kept, kept_session)


# --- streams: a followed log, object transfers ------------------------------------------------


def test_a_revoked_cli_certificate_loses_its_followed_log_stream(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """As a CLI user following a run's logs (``flwrmtls log --stream``) when revoked."""
    revoked_cli = fresh_pki.ca.issue_cli("cli-revoked", role="operator")
    with link_for(tmp_path, fresh_pki) as link:
        runs = link.state.runs
        run_id = runs.create(
            app_name="a", app_version="1", bundle_hash="0" * 64, run_config_json="{}",
            owner="role=operator,CN=cli-operator", now=1.0,
        )  # fmt: skip
        runs.transition(run_id, RunStatus.RUNNING, "", 2.0)
        runs.add_log(run_id, "link", "first line", 3.0)
        request = control_pb2.StreamLogsRequest(run_id=run_id, follow=True)
        kept = operator_stub(link, *fresh_pki.paths("cli-operator"), fresh_pki).StreamLogs(request)
        revoked = operator_stub(
            link, revoked_cli.chain_path, revoked_cli.key_path, fresh_pki
        ).StreamLogs(request)
        assert next(iter(kept)).text == next(iter(revoked)).text == "first line"
        fresh_pki.ca.revoke(certificate_file=revoked_cli.chain_path)
        ended: list[grpc.RpcError] = []

        def follow() -> None:
            try:
                for _ in revoked:
                    pass
            except grpc.RpcError as error:
                ended.append(error)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        follower.join(timeout=PROMPT)
        assert ended, "the revoked CLI's log stream was still open"
        assert ended[0].code() is grpc.StatusCode.UNAUTHENTICATED
        assert "certificate revoked" in (ended[0].details() or "")
        trailers = {m.key: str(m.value) for m in ended[0].trailing_metadata() or ()}
        assert trailers[REFUSAL_KEY] == "revoked"
        assert kept.is_active()  # control: the other operator still follows
        operator = operator_stub(link, *fresh_pki.paths("cli-operator"), fresh_pki)
        [run] = operator.ListRuns(control_pb2.ListRunsRequest(run_id=run_id), timeout=10).runs
        assert run.status == "running"
        kept.cancel()  # type: ignore[no-untyped-call]


def test_a_revoked_nodes_object_upload_is_ended_before_it_is_stored(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    data = bytes(range(256)) * (3 * CHUNK_SIZE // 256)
    object_id = object_id_of(data)
    stalled, released = threading.Event(), threading.Event()

    def chunks(session_id: str, stall: bool) -> Iterator[objects_pb2.ObjectChunk]:
        for offset in range(0, len(data), CHUNK_SIZE):
            yield objects_pb2.ObjectChunk(
                object_id=object_id, total_size=len(data), offset=offset,
                data=data[offset : offset + CHUNK_SIZE], session_id=session_id,
            )  # fmt: skip
            if stall:
                stalled.set()
                released.wait(LONG_POLL)  # a slow uploader: the stream stays open

    with link_for(tmp_path, fresh_pki) as link, ThreadPoolExecutor(1) as pool:
        uploader, channel = node_client(
            link, root_certificates=fresh_pki.trust_bundle_path, chain=fresh_pki.paths("node-2")[0],
            key=fresh_pki.paths("node-2")[1],
        )  # fmt: skip
        session = uploader.activate()
        stub = fleet_pb2_grpc.FleetStub(channel)
        upload = pool.submit(stub.PushObject, chunks(session.session_id, stall=True), timeout=60)
        assert stalled.wait(timeout=PROMPT)
        fresh_pki.ca.revoke(certificate_file=fresh_pki.paths("node-2")[0])
        with pytest.raises(grpc.RpcError) as ended:
            upload.result(timeout=PROMPT)
        released.set()
        assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "certificate revoked" in (ended.value.details() or "")
        assert not link.objects.store.has(object_id)
        channel.close()
        honest, honest_channel = node_client(
            link, root_certificates=fresh_pki.trust_bundle_path, chain=fresh_pki.paths("node-1")[0],
            key=fresh_pki.paths("node-1")[1],
        )  # fmt: skip
        honest_session = honest.activate()  # control: a good node's upload is stored
        fleet_pb2_grpc.FleetStub(honest_channel).PushObject(
            chunks(honest_session.session_id, stall=False), timeout=60
        )
        assert link.objects.store.has(object_id)
        honest_channel.close()


def test_a_revoked_nodes_object_download_is_ended_mid_stream(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    """The link is sending when the refusal comes: the stream ends at the next chunk."""
    data = bytes(range(256)) * (24 * CHUNK_SIZE // 256)
    object_id = object_id_of(data)
    with link_for(tmp_path, fresh_pki) as link:
        downloads = {}
        for name in ("node-1", "node-2"):
            client, channel = node_client(
                link, root_certificates=fresh_pki.trust_bundle_path,
                chain=fresh_pki.paths(name)[0], key=fresh_pki.paths(name)[1],
            )  # fmt: skip
            session = client.activate()
            stub = fleet_pb2_grpc.FleetStub(channel)
            # A node may read what it uploaded itself (its pending uploads): the object to fetch.
            push_objects(stub, {object_id: data}, session_id=session.session_id, timeout=60)
            downloads[name] = stub.PullObject(
                objects_pb2.PullObjectRequest(object_id=object_id, session_id=session.session_id),
                timeout=120,
            )
            next(iter(downloads[name]))  # the first chunk arrived: the stream is open
        fresh_pki.ca.revoke(certificate_file=fresh_pki.paths("node-2")[0])
        time.sleep(3.0)  # a slow reader: the link judged the open call meanwhile
        received = 1
        ended = None
        try:
            for _ in downloads["node-2"]:
                received += 1
        except grpc.RpcError as error:
            ended = error
        assert ended is not None, "the revoked node received the whole object"
        assert ended.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "certificate revoked" in (ended.details() or "")
        assert received < 24  # not the whole object
        assert 1 + sum(1 for _ in downloads["node-1"]) == 24  # control: the whole object


# --- real processes: the node exits, the CLI's log stream ends --------------------------------


def test_an_idle_node_and_a_following_cli_are_out_within_seconds_of_their_revocation(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Heartbeats every 60 s: the revoked node exits within seconds of the CRL file changing
    (not at its next heartbeat, nor when its 20 s long poll would have returned); a CLI
    following a run's logs with a revoked certificate stops with the reason. A node and a CLI
    whose certificates stay good go on."""
    pki = deployment.pki
    pki.ca.issue_cli("cli-revoked", role="operator")
    args = deployment.link_args()
    args[args.index("--heartbeat-interval") + 1] = "60"
    link = deployment.start_link(args)
    deployment.profile(link.control_port, cert="cli-revoked", name="revoked")
    deployment.profile(link.control_port)  # the default again
    kept = deployment.node("node-1", link.fleet_port, "--node-config", "name=a")
    revoked = deployment.node("node-2", link.fleet_port, "--node-config", "name=b")
    kept.wait_active()
    revoked.wait_active()
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli(
        "run", str(app), "--run-config", "sleep-on=a sleep-seconds=120 rounds=1 min-train=1"
    )
    assert started.returncode == 0, started.stderr
    kept.wait_for("ClientApp process")
    follower = cli_process(deployment, "log", "1", "revoked", "--stream")
    time.sleep(1.0)  # the follower's stream and the nodes' long polls are open
    pki.ca.revoke(certificate_file=pki.paths("node-2")[0])
    pki.ca.revoke(certificate_file=pki.paths("cli-revoked")[0])
    assert revoked.wait_exit(timeout=12) == 1
    assert "certificate revoked" in revoked.log
    stdout, stderr = follower.communicate(timeout=12)
    assert follower.returncode == 1, stdout + stderr
    assert "certificate revoked" in stderr
    assert "Traceback" not in stderr
    assert kept.process is not None
    assert kept.process.poll() is None  # control: the good node is still in its round
    listed = deployment.cli("ls", "--run-id", "1", "--format", "json")  # control: the good CLI
    assert listed.returncode == 0, listed.stderr


def cli_process(deployment: Deployment, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flwrmtls.cli.main", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **deployment.env},
    )  # fmt: skip
