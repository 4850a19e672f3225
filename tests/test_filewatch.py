"""flwrmtls.filewatch: files are compared by content, whatever happens to the path."""

from __future__ import annotations

import os
from pathlib import Path

from flwrmtls.filewatch import FileWatch, content_digest


def test_a_rewrite_is_a_change_once_and_the_same_bytes_are_none(tmp_path: Path) -> None:
    path = tmp_path / "tls.crt"
    path.write_bytes(b"one")
    watch = FileWatch([path])
    assert not watch.changed()  # nothing happened
    path.write_bytes(b"one")  # rewritten with the same bytes: no change
    assert not watch.changed()
    path.write_bytes(b"two")
    assert watch.changed()
    assert not watch.changed()  # told once


def test_a_rename_over_the_file_and_a_symlink_swap_are_changes(tmp_path: Path) -> None:
    # Kubernetes mounts a secret as <dir>/tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>;
    # an update swaps ..data atomically: the path, its size and its mtime may all stay.
    first, second = tmp_path / "..2026_a", tmp_path / "..2026_b"
    first.mkdir()
    second.mkdir()
    (first / "tls.crt").write_bytes(b"AAAA")
    (second / "tls.crt").write_bytes(b"BBBB")
    stat = (first / "tls.crt").stat()
    os.utime(second / "tls.crt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "tls.crt").symlink_to("..data/tls.crt")
    watch = FileWatch([tmp_path / "tls.crt"])
    swap = tmp_path / "..data_tmp"
    swap.symlink_to(second.name)
    swap.replace(tmp_path / "..data")
    assert watch.changed()
    replacement = tmp_path / "new"
    replacement.write_bytes(b"CCCC")
    replacement.replace(second / "tls.crt")
    assert watch.changed()


def test_a_file_gone_and_back_are_changes(tmp_path: Path) -> None:
    key, other = tmp_path / "tls.key", tmp_path / "other"
    key.write_bytes(b"key")
    other.write_bytes(b"x")
    watch = FileWatch([other, key])
    key.unlink()
    assert content_digest(key) == "unreadable: No such file or directory"
    assert watch.changed()
    assert not watch.changed()  # still gone: no news
    key.write_bytes(b"key")
    assert watch.changed()
