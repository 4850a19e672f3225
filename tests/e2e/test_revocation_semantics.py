"""CRLs mean what RFC 5280 says, through the real link (issue 10, part 1).

As a holder of a revoked certificate: every test presents certificates over real mTLS to a real
link (``running_link`` + ``node_client``) whose ``--ssl-crl-file`` is a directory of CRLs built
with cryptography's CRL builder and signed by the test CA's real keys. Each attack (a revoked
certificate that must stay out) stands beside its control (a good certificate that gets in).
The link's own checks run on an injected clock started at the real time, so a test can move
past a CRL's nextUpdate while the TLS handshake (real time) still accepts the certificates.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flwrmtls.auth.crlcoverage import CoverageState
from flwrmtls.errors import InputError, Refused
from flwrmtls.link.server import Link
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import LinkProcess
from tests.auth.crl_builders import (
    idp,
    issuing_ca,
    make_ca,
    make_crl,
    make_leaf,
    root_ca,
    write_crl,
)
from tests.e2e.deployment import Deployment
from tests.e2e.openssl_crl import OpensslCrlIssuer
from tests.e2e.test_startup_errors import assert_one_line, link_tls, run

REVOKED = "certificate revoked"
UNAVAILABLE = "CRL"  # every crl-unavailable refusal names the link's CRL(s)
ADMITTED = "admitted"
HOLD = x509.ReasonFlags.certificate_hold
KEY_COMPROMISE = x509.ReasonFlags.key_compromise
REMOVE = x509.ReasonFlags.remove_from_crl

_databases = itertools.count()


@contextmanager
def crl_link(
    tmp_path: Path,
    pki: TestPki,
    crls: Path,
    *,
    clock: FakeClock | None = None,
    client_ca: Path | None = None,
) -> Iterator[Link]:
    server_chain, server_key = pki.paths("server")
    config = mtls_config(
        tmp_path / f"link-{next(_databases)}.db",
        server_chain=server_chain,
        server_key=server_key,
        client_ca=client_ca or pki.trust_bundle_path,
        crl=crls,
    )
    with running_link(config, clock or FakeClock(datetime.now(UTC))) as link:
        yield link


def outcome(link: Link, pki: TestPki, chain: Path, key: Path) -> str:
    """``admitted``, or the refusal the link sent to a node presenting ``chain``/``key``."""
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
    )
    try:
        client.activate()
    except Refused as refused:
        return str(refused)
    finally:
        channel.close()
    return ADMITTED


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for the link's file poll (about once a second) to have done ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def node_3(pki: TestPki) -> tuple[Path, Path]:
    issued = pki.ca.issue_node("node-3", organization="Hospital C")
    return issued.chain_path, issued.key_path


def serial(chain: Path) -> int:
    return x509.load_pem_x509_certificates(chain.read_bytes())[0].serial_number


def states(link: Link) -> dict[tuple[str, str], CoverageState]:
    now = link.clock.now()
    return {(row.issuer, row.scope): row.state for row in link.revocation_coverage(now)}


# --- delta CRLs -------------------------------------------------------------------------------


def test_a_delta_crl_adds_to_its_base_and_never_replaces_it(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    ca = issuing_ca(fresh_pki)
    in_base, in_delta, good = (
        fresh_pki.paths("node-1"),
        fresh_pki.paths("node-2"),
        node_3(fresh_pki),
    )
    crls = tmp_path / "crls"
    write_crl(crls / "base.crl", make_crl(ca, number=10, revoked=[(serial(in_base[0]), None)]))
    write_crl(
        crls / "delta.crl",
        make_crl(ca, number=11, base=10, revoked=[(serial(in_delta[0]), KEY_COMPROMISE)]),
    )
    with crl_link(tmp_path, fresh_pki, crls) as link:
        # The attack: before, the delta (higher CRL number) replaced the base, so a
        # certificate revoked only in the base was admitted again.
        assert REVOKED in outcome(link, fresh_pki, *in_base)
        assert REVOKED in outcome(link, fresh_pki, *in_delta)
        assert outcome(link, fresh_pki, *good) == ADMITTED  # control


def test_a_delta_crl_without_its_base_fails_closed(tmp_path: Path, fresh_pki: TestPki) -> None:
    ca = issuing_ca(fresh_pki)
    revoked_in_base, good = fresh_pki.paths("node-1"), fresh_pki.paths("node-2")
    crls = tmp_path / "crls"
    write_crl(crls / "delta.crl", make_crl(ca, number=21, base=20))
    with crl_link(tmp_path, fresh_pki, crls) as link:
        # The attack: the base (#20) is missing, so what it revokes is unknown; before, the
        # delta stood in for a complete CRL and everyone it did not name got in.
        refused = outcome(link, fresh_pki, *revoked_in_base)
        assert "needs its base CRL #20" in refused
        assert "needs its base CRL #20" in outcome(link, fresh_pki, *good)
        # The control: the base arrives, the link applies the delta on it.
        write_crl(
            crls / "base.crl", make_crl(ca, number=20, revoked=[(serial(revoked_in_base[0]), None)])
        )
        eventually(lambda: outcome(link, fresh_pki, *good) == ADMITTED, "base CRL taken")
        assert REVOKED in outcome(link, fresh_pki, *revoked_in_base)


def test_a_delta_naming_a_newer_base_than_the_link_has_fails_closed(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    ca = issuing_ca(fresh_pki)
    good = fresh_pki.paths("node-2")
    crls = tmp_path / "crls"
    write_crl(crls / "base.crl", make_crl(ca, number=5))
    write_crl(crls / "delta.crl", make_crl(ca, number=31, base=30))  # base #30 never arrived
    with crl_link(tmp_path, fresh_pki, crls) as link:
        assert "needs base CRL #30 or newer" in outcome(link, fresh_pki, *good)
        write_crl(crls / "delta.crl", make_crl(ca, number=6, base=5))  # control: a matching one
        eventually(lambda: outcome(link, fresh_pki, *good) == ADMITTED, "matching delta taken")


def test_remove_from_crl_releases_a_hold_but_never_a_revocation(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    ca = issuing_ca(fresh_pki)
    held, compromised = fresh_pki.paths("node-1"), fresh_pki.paths("node-2")
    crls = tmp_path / "crls"
    write_crl(
        crls / "base.crl",
        make_crl(
            ca,
            number=1,
            revoked=[(serial(held[0]), HOLD), (serial(compromised[0]), KEY_COMPROMISE)],
        ),
    )
    with crl_link(tmp_path, fresh_pki, crls) as link:
        assert "reason certificateHold" in outcome(link, fresh_pki, *held)
        write_crl(
            crls / "delta.crl",
            make_crl(
                ca,
                number=2,
                base=1,
                revoked=[(serial(held[0]), REMOVE), (serial(compromised[0]), REMOVE)],
            ),
        )
        # The control: the hold is released by the delta.
        eventually(lambda: outcome(link, fresh_pki, *held) == ADMITTED, "hold released")
        # The attack: a key-compromise revocation stays, whatever a delta says.
        assert "reason keyCompromise" in outcome(link, fresh_pki, *compromised)


def test_a_stale_delta_fails_closed_even_with_a_current_base(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    ca = issuing_ca(fresh_pki)
    good = fresh_pki.paths("node-2")
    now = datetime.now(UTC)
    crls = tmp_path / "crls"
    write_crl(crls / "base.crl", make_crl(ca, number=1, next_update=now + timedelta(days=7)))
    write_crl(
        crls / "delta.crl", make_crl(ca, number=2, base=1, next_update=now + timedelta(hours=1))
    )
    clock = FakeClock(now)
    with crl_link(tmp_path, fresh_pki, crls, clock=clock) as link:
        assert outcome(link, fresh_pki, *good) == ADMITTED  # control: both current
        clock.advance(2 * 3600)
        assert "expired" in outcome(link, fresh_pki, *good)


# --- partitioned CRLs (IssuingDistributionPoint) ----------------------------------------------


def test_every_partition_of_an_issuer_counts(tmp_path: Path, fresh_pki: TestPki) -> None:
    ca = issuing_ca(fresh_pki)
    leaves = tmp_path / "leaves"
    p1, p2, p3 = "http://crl.test/p1.crl", "http://crl.test/p2.crl", "http://crl.test/p3.crl"
    revoked_1 = make_leaf(ca, leaves, "revoked-1", distribution_points=[p1])
    revoked_2 = make_leaf(ca, leaves, "revoked-2", distribution_points=[p2])
    good_1 = make_leaf(ca, leaves, "good-1", distribution_points=[p1])
    good_2 = make_leaf(ca, leaves, "good-2", distribution_points=[p2])
    orphan = make_leaf(ca, leaves, "orphan", distribution_points=[p3])
    crls = tmp_path / "crls"
    write_crl(
        crls / "p1.crl",
        make_crl(ca, number=7, scope=idp(p1), revoked=[(revoked_1[2].serial_number, None)]),
    )
    write_crl(
        crls / "p2.crl",
        make_crl(ca, number=3, scope=idp(p2), revoked=[(revoked_2[2].serial_number, None)]),
    )
    with crl_link(tmp_path, fresh_pki, crls) as link:
        # The attack: before, one CRL per issuer was kept, so one partition's revocations
        # were dropped; a certificate of a partition without a CRL was not checked at all.
        assert REVOKED in outcome(link, fresh_pki, *revoked_1[:2])
        assert REVOKED in outcome(link, fresh_pki, *revoked_2[:2])
        assert "partition has none" in outcome(link, fresh_pki, *orphan[:2])
        # The controls: good certificates of both partitions.
        assert outcome(link, fresh_pki, *good_1[:2]) == ADMITTED
        assert outcome(link, fresh_pki, *good_2[:2]) == ADMITTED


def test_a_root_crl_for_ca_certificates_revokes_the_intermediate(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    root, issuing = root_ca(fresh_pki), issuing_ca(fresh_pki)
    node = fresh_pki.paths("node-1")
    crls = tmp_path / "crls"
    write_crl(crls / "issuing.crl", make_crl(issuing, number=1, scope=idp(only_user=True)))
    write_crl(crls / "root.crl", make_crl(root, number=1, scope=idp(only_ca=True)))
    with crl_link(tmp_path, fresh_pki, crls) as link:
        assert outcome(link, fresh_pki, *node) == ADMITTED  # control: nothing revoked
        write_crl(
            crls / "root.crl",
            make_crl(
                root,
                number=2,
                scope=idp(only_ca=True),
                revoked=[(issuing.certificate.serial_number, x509.ReasonFlags.ca_compromise)],
            ),
        )
        # The attack: a node under a revoked intermediate, its own certificate not revoked.
        eventually(lambda: REVOKED in outcome(link, fresh_pki, *node), "intermediate revoked")
        assert "reason cACompromise" in outcome(link, fresh_pki, *node)


# --- CRLs the link refuses --------------------------------------------------------------------


def test_an_issuer_without_crl_sign_cannot_vouch_for_its_crls(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    no_crl_sign = make_ca("no cRLSign CA", crl_sign=False)
    with_crl_sign = make_ca("cRLSign CA")
    leaves = tmp_path / "leaves"
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        b"".join(
            c.public_bytes(serialization.Encoding.PEM)
            for c in (no_crl_sign.certificate, with_crl_sign.certificate)
        )
    )
    under_no, under_with = (
        make_leaf(ca, leaves, name)[:2]
        for ca, name in ((no_crl_sign, "under-no"), (with_crl_sign, "under-with"))
    )
    crls = tmp_path / "crls"
    write_crl(crls / "no.crl", make_crl(no_crl_sign, number=1))
    write_crl(crls / "with.crl", make_crl(with_crl_sign, number=1))
    with crl_link(tmp_path, fresh_pki, crls, client_ca=bundle) as link:
        # The attack: the CRL verifies with a key that may not sign CRLs; it proves nothing.
        assert "lacks cRLSign" in outcome(link, fresh_pki, *under_no)
        assert outcome(link, fresh_pki, *under_with) == ADMITTED  # control


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown-critical-extension", "unknown critical extension 1.3.6.1.4.1.55555.1"),
        ("unknown-critical-entry-extension", "unknown critical extension 1.3.6.1.4.1.55555.2"),
        ("indirect", "is an indirect CRL"),
        ("only-some-reasons", "covers only some revocation reasons"),
        ("issued-in-the-future", "was issued in the future"),
    ],
)
def test_the_link_refuses_to_start_with_a_crl_it_cannot_honour(
    tmp_path: Path, fresh_pki: TestPki, case: str, expected: str
) -> None:
    ca = issuing_ca(fresh_pki)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    entry_unknown = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00"
    )
    revoked = [(serial(fresh_pki.paths("node-1")[0]), None)]
    crl = {
        "unknown-critical-extension": lambda: make_crl(ca, number=1, extensions=[(unknown, True)]),
        "unknown-critical-entry-extension": lambda: make_crl(
            ca, number=1, revoked=revoked, entry_extensions=[(entry_unknown, True)]
        ),
        "indirect": lambda: make_crl(ca, number=1, scope=idp(indirect=True)),
        "only-some-reasons": lambda: make_crl(
            ca, number=1, scope=idp(only_some_reasons=frozenset({KEY_COMPROMISE}))
        ),
        "issued-in-the-future": lambda: make_crl(
            ca, number=1, this_update=datetime.now(UTC) + timedelta(days=1)
        ),
    }[case]()
    crls = tmp_path / "crls"
    write_crl(crls / "refused.crl", crl)
    with pytest.raises(InputError, match=expected) as refused, crl_link(tmp_path, fresh_pki, crls):
        pass
    assert str(crls / "refused.crl") in str(refused.value)
    # The control: the same issuer's plain CRL starts the link and revokes.
    write_crl(crls / "refused.crl", make_crl(ca, number=1, revoked=revoked))
    with crl_link(tmp_path, fresh_pki, crls) as link:
        assert REVOKED in outcome(link, fresh_pki, *fresh_pki.paths("node-1"))
        assert outcome(link, fresh_pki, *fresh_pki.paths("node-2")) == ADMITTED


# --- files that vanish, break or go stale while the link runs ---------------------------------


@pytest.mark.parametrize("what", ["vanishes", "breaks"])
def test_a_crl_file_that_vanishes_or_breaks_keeps_its_crl_until_next_update(
    tmp_path: Path, fresh_pki: TestPki, what: str
) -> None:
    ca = issuing_ca(fresh_pki)
    revoked, good = fresh_pki.paths("node-1"), fresh_pki.paths("node-2")
    now = datetime.now(UTC)
    crls = tmp_path / "crls"
    crl_file = write_crl(
        crls / "issuing.crl",
        make_crl(
            ca, number=4, revoked=[(serial(revoked[0]), None)], next_update=now + timedelta(days=1)
        ),
    )
    clock = FakeClock(now)
    issuer = (ca.certificate.subject.rfc4514_string(), "all certificates")
    with crl_link(tmp_path, fresh_pki, crls, clock=clock) as link:
        assert REVOKED in outcome(link, fresh_pki, *revoked)
        if what == "vanishes":
            crl_file.unlink()
        else:
            crl_file.write_bytes(b"-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n")
        eventually(lambda: states(link).get(issuer) is CoverageState.KEPT, f"file {what}")
        # The attack: before, a vanished file made the issuer unchecked at once.
        assert REVOKED in outcome(link, fresh_pki, *revoked)
        assert outcome(link, fresh_pki, *good) == ADMITTED  # control: still current
        clock.advance(2 * 86400)  # past the kept CRL's next update: fail closed
        assert "expired" in outcome(link, fresh_pki, *good)
        assert states(link)[issuer] is CoverageState.EXPIRED


def test_coverage_names_unchecked_issuers(tmp_path: Path, fresh_pki: TestPki) -> None:
    crls = tmp_path / "crls"
    write_crl(crls / "issuing.crl", make_crl(issuing_ca(fresh_pki), number=1))
    with crl_link(tmp_path, fresh_pki, crls) as link:
        assert outcome(link, fresh_pki, *fresh_pki.paths("node-1")) == ADMITTED
        rows = {row.issuer: row for row in link.revocation_coverage(link.clock.now())}
    issuing_name = fresh_pki.ca.issuing_certificate.subject.rfc4514_string()
    root_name = fresh_pki.ca.root_certificate.subject.rfc4514_string()
    assert rows[issuing_name].state is CoverageState.CURRENT
    assert rows[issuing_name].sources == (str(crls / "issuing.crl"),)
    assert rows[root_name].state is CoverageState.NOT_CHECKED  # the root has no CRL here


# --- CRLs as the openssl CLI writes them ------------------------------------------------------


def test_openssl_base_and_delta_crls_revoke_together(tmp_path: Path, fresh_pki: TestPki) -> None:
    in_base, in_delta, good = (
        fresh_pki.paths("node-1"),
        fresh_pki.paths("node-2"),
        node_3(fresh_pki),
    )
    files = fresh_pki.ca.files
    issuer = OpensslCrlIssuer(tmp_path / "openssl-ca", files.issuing_certificate, files.issuing_key)
    crls = tmp_path / "crls"
    crls.mkdir()
    issuer.revoke(in_base[0])
    base = issuer.complete(crls / "base.crl")
    issuer.revoke(in_delta[0], "keyCompromise")
    newer = issuer.complete(tmp_path / "full-2.crl")  # not given to the link
    issuer.delta(base, newer, crls / "delta.crl")
    with crl_link(tmp_path, fresh_pki, crls) as link:
        assert REVOKED in outcome(link, fresh_pki, *in_base)  # only in the base
        assert "reason keyCompromise" in outcome(link, fresh_pki, *in_delta)  # only in the delta
        assert outcome(link, fresh_pki, *good) == ADMITTED
        row = next(r for r in link.revocation_coverage(link.clock.now()) if r.kind != "none")
    assert (row.kind, row.crl_number, row.delta_crl_number) == ("complete+delta", 1, 2)


def test_openssl_partitioned_crls_each_count(tmp_path: Path, fresh_pki: TestPki) -> None:
    ca = issuing_ca(fresh_pki)
    files = fresh_pki.ca.files
    p1, p2 = "http://crl.test/openssl-p1.crl", "http://crl.test/openssl-p2.crl"
    leaves = tmp_path / "leaves"
    revoked_1 = make_leaf(ca, leaves, "revoked-1", distribution_points=[p1])
    revoked_2 = make_leaf(ca, leaves, "revoked-2", distribution_points=[p2])
    good_2 = make_leaf(ca, leaves, "good-2", distribution_points=[p2])
    crls = tmp_path / "crls"
    crls.mkdir()
    for index, (point, leaf) in enumerate(((p1, revoked_1), (p2, revoked_2))):
        partition = OpensslCrlIssuer(
            tmp_path / f"openssl-p{index}", files.issuing_certificate, files.issuing_key
        )
        partition.revoke(leaf[0])
        partition.complete(
            crls / f"p{index}.crl",
            crl_extensions=(
                f"issuingDistributionPoint = critical, @idp\n[idp]\nfullname = URI:{point}"
            ),
        )
    with crl_link(tmp_path, fresh_pki, crls) as link:
        assert REVOKED in outcome(link, fresh_pki, *revoked_1[:2])
        assert REVOKED in outcome(link, fresh_pki, *revoked_2[:2])
        assert outcome(link, fresh_pki, *good_2[:2]) == ADMITTED


# --- what the operator sees: real link and CLI processes --------------------------------------


def test_supernode_list_shows_revocation_coverage(deployment: Deployment, tmp_path: Path) -> None:
    pki = deployment.pki
    ca = issuing_ca(pki)
    crls = tmp_path / "crls"
    write_crl(crls / "base.crl", make_crl(ca, number=10))
    write_crl(crls / "delta.crl", make_crl(ca, number=11, base=10))
    args = deployment.link_args()
    args[args.index("--ssl-crl-file") + 1] = str(crls)
    link = deployment.start_link(args)
    issuing = pki.ca.issuing_certificate.subject.rfc4514_string()
    root = pki.ca.root_certificate.subject.rfc4514_string()
    link.wait_for(f"revocation: issuer {issuing} .*complete\\+delta CRL #10 \\+ delta #11")
    link.wait_for(f"issuer {root} is NOT revocation-checked")
    deployment.profile(link.control_port)
    table = deployment.cli("supernode", "list")
    assert table.returncode == 0, table.stderr
    assert "Revocation (per issuer of client certificates):" in table.stdout
    assert "complete+delta #10 + delta #11" in table.stdout
    assert "not-checked" in table.stdout
    # Scripts: `supernode list --format json` is still the list of nodes; the coverage has its
    # own command.
    assert isinstance(
        json.loads(deployment.cli("supernode", "list", "--format", "json").stdout), list
    )
    coverage = json.loads(deployment.cli("supernode", "revocation", "--format", "json").stdout)
    by_issuer = {row["issuer"]: row for row in coverage}
    assert by_issuer[issuing]["kind"] == "complete+delta"
    assert by_issuer[issuing]["state"] == "current"
    assert sorted(by_issuer[issuing]["sources"]) == [
        str(crls / "base.crl"),
        str(crls / "delta.crl"),
    ]
    assert (by_issuer[issuing]["crl_number"], by_issuer[issuing]["delta_crl_number"]) == (10, 11)
    assert by_issuer[root]["state"] == "not-checked"
    # The base vanishes: the link keeps it, and says so, until its next update.
    (crls / "base.crl").unlink()
    link.wait_for("base.crl vanished; its CRLs stay in force")
    kept = json.loads(deployment.cli("supernode", "revocation", "--format", "json").stdout)
    assert {row["issuer"]: row for row in kept}[issuing]["state"] == "kept"


def test_the_link_process_refuses_an_unusable_crl_with_one_line(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    ca = issuing_ca(fresh_pki)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    crls = tmp_path / "crls"
    write_crl(crls / "odd.crl", make_crl(ca, number=1, extensions=[(unknown, True)]))
    args = [
        *link_tls(fresh_pki, tmp_path),
        "--ssl-require-client-auth",
        "--ssl-crl-file",
        str(crls),
    ]
    assert_one_line(
        run("flwrmtls.link.main", args, tmp_path),
        f"{crls / 'odd.crl'}: the CRL of {ca.certificate.subject.rfc4514_string()} has an "
        "unknown critical extension 1.3.6.1.4.1.55555.1",
    )
    write_crl(crls / "odd.crl", make_crl(ca, number=1))  # control: the link starts
    link = LinkProcess(args, tmp_path / "link.log")
    link.start_and_wait()
    assert link.stop() == 0
