"""Private from the moment they exist, whatever the umask of a program that embeds flwrmtls.

The real processes (which also set umask 077) are checked in tests/e2e/test_file_modes.py;
here the same link code runs in this process under an ordinary umask (022), so only the
explicit modes can make it pass.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from flwrmtls.errors import InputError
from flwrmtls.filemodes import open_directory_warning, private_directory, private_file, tighten
from flwrmtls.state.linkstate import LinkState
from flwrmtls.testing.link import mtls_config, running_link
from flwrmtls.testing.pki import TestPki


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def ordinary_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_database_and_sqlites_wal_and_shm_are_private(tmp_path: Path) -> None:
    database = tmp_path / "link.db"
    state = LinkState(database)
    state.runs.create(
        app_name="a", app_version="1", bundle_hash="h", run_config_json="{}", owner="o", now=1.0
    )
    modes = {suffix: mode(Path(f"{database}{suffix}")) for suffix in ("", "-wal", "-shm")}
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    state.close()
    # Control: SQLite left to itself creates all three open to others under this umask.
    plain = tmp_path / "plain.db"
    db = sqlite3.connect(plain, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    assert {mode(Path(f"{plain}{s}")) for s in ("", "-wal", "-shm")} == {0o644}
    db.close()


def test_an_embedded_links_object_directory_is_private(pki: TestPki, tmp_path: Path) -> None:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    with running_link(config) as link:
        assert mode(link.objects.store.directory) == 0o700
        assert mode(Path(link.config.database)) == 0o600


def test_private_directory_creates_0700_and_leaves_an_existing_one(tmp_path: Path) -> None:
    made = tmp_path / "a" / "b"
    private_directory(made)
    assert mode(made) == 0o700
    assert open_directory_warning(made) is None
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o750)
    private_directory(theirs)
    assert mode(theirs) == 0o750  # never changed
    assert open_directory_warning(theirs) == (
        f"{theirs} is open to group or others (mode 0750) and holds flwrmtls state: "
        f"run chmod 700 {theirs}"
    )


def test_private_file_creates_0600_and_tighten_takes_off_only_what_is_open(
    tmp_path: Path,
) -> None:
    created = tmp_path / "new.db"
    private_file(created)
    assert (mode(created), created.read_bytes()) == (0o600, b"")
    old = tmp_path / "old.db"
    old.write_bytes(b"kept")
    os.chmod(old, 0o664)
    private_file(old)
    assert (mode(old), old.read_bytes()) == (0o664, b"kept")  # existing: left to tighten
    assert tighten(old) == f"{old} was open to group or others (mode 0664); set to 0600"
    assert (mode(old), old.read_bytes()) == (0o600, b"kept")
    assert tighten(old) is None  # control: already private, nothing to say
    os.chmod(old, 0o400)
    assert tighten(old) is None
    assert mode(old) == 0o400  # the owner's own choice is kept
    assert tighten(tmp_path / "absent") is None


def test_a_file_that_is_not_a_database_is_refused_and_not_touched(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"the operator's notes, given as --database by mistake" * 20)
    with pytest.raises(InputError, match="cannot open database"):
        LinkState(junk)
    assert mode(junk) == 0o644
