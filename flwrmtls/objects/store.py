"""A directory of objects, each named by the hex SHA-256 of its bytes.

Rules:

* An object id is exactly 64 lowercase hex digits; anything else is refused (so an id can
  never name a path outside the store).
* Writes go to a temporary file and are renamed into place only once the bytes hash to the
  id and have the announced size: a reader never sees a partial or wrong object. Two
  exceptions, each checked once on its host by the reader that uses the bytes:
  :meth:`ObjectStore.put_hashed` stores bytes whose id the writing process has just
  computed from them itself, and an unverified writer (``verify=False``: a node's fetches
  from the link) checks the size only; their readers check the hash
  (:meth:`ObjectStore.read_verified`: a node's ClientApp, or the node before it serves one).
* Each object is hashed once per host: by its receiver from another host (the link, for a
  node's upload; a node's ClientApp for what the node fetched) or by the process that made
  it. A reader whose bytes were verified on this host (the link's ServerApp reading replies
  the link checked) maps them without hashing again (:meth:`ObjectStore.map`).
* Storing an object that exists is a no-op: a model broadcast to many nodes is one file.
* A reader that finds bytes that do not hash to their id gets :class:`CorruptObject` (a
  ValueError). A reader that can have the object fetched again (a node's ClientApp, from the
  link through its node) deletes the file first (``discard=True``), so that the fetch finds
  it missing; the link's own objects cannot be fetched again and are left as they are.
* A process that dies while writing leaves its temporary file (``.incoming-*``) behind:
  :meth:`ObjectStore.partial_writes` lists them, for a start-up to delete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CHUNK_SIZE",
    "CorruptObject",
    "ObjectStore",
    "ObjectWriter",
    "check_object_id",
    "object_id_of",
]

CHUNK_SIZE = 1 << 20
"""Bytes per chunk on the wire: far below gRPC's default 4 MiB message limit."""

_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None

_OBJECT_ID = re.compile(r"^[0-9a-f]{64}$")
_PARTIAL_PREFIX = ".incoming-"


class CorruptObject(ValueError):
    """Stored bytes that do not hash to the id they are stored under."""

    def __init__(self, object_id: str) -> None:
        super().__init__(f"object {object_id}: stored bytes do not match their SHA-256")
        self.object_id = object_id


def check_object_id(object_id: str) -> str:
    if not _OBJECT_ID.match(object_id):
        raise ValueError(f"{object_id[:80]!r} is not an object id (64 lowercase hex digits)")
    return object_id


def object_id_of(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectWriter:
    """Receives one object's chunks in order; :meth:`finish` verifies and publishes it."""

    def __init__(
        self, store: ObjectStore, object_id: str, total_size: int, *, verify: bool = True
    ) -> None:
        self._store = store
        self.object_id = check_object_id(object_id)
        self.total_size = total_size
        self._hash = hashlib.sha256() if verify else None
        self._written = 0
        fd, name = tempfile.mkstemp(dir=store.directory, prefix=_PARTIAL_PREFIX)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._temp = Path(name)

    def write(self, offset: int, data: bytes) -> None:
        if offset != self._written:
            raise ValueError(
                f"object {self.object_id}: chunk at {offset}, expected {self._written}"
            )
        if self._written + len(data) > self.total_size:
            raise ValueError(f"object {self.object_id}: more bytes than announced")
        self._file.write(data)
        if self._hash is not None:
            self._hash.update(data)
        self._written += len(data)

    def finish(self) -> None:
        self._file.close()
        try:
            if self._written != self.total_size:
                raise ValueError(
                    f"object {self.object_id}: {self._written} of {self.total_size} bytes arrived"
                )
            if self._hash is not None and self._hash.hexdigest() != self.object_id:
                raise ValueError(f"object {self.object_id}: bytes do not match their SHA-256")
            target = self._store.path(self.object_id)
            target.parent.mkdir(exist_ok=True)
            os.replace(self._temp, target)
        finally:
            self._temp.unlink(missing_ok=True)

    def abort(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


class ObjectStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, object_id: str) -> Path:
        check_object_id(object_id)
        return self.directory / object_id[:2] / object_id

    def has(self, object_id: str) -> bool:
        return self.path(object_id).is_file()

    def missing(self, object_ids: Iterable[str]) -> list[str]:
        return [object_id for object_id in dict.fromkeys(object_ids) if not self.has(object_id)]

    def size(self, object_id: str) -> int:
        return self.path(object_id).stat().st_size

    def put(self, data: bytes | memoryview) -> str:
        """Store ``data`` (if new) and return its id."""
        return self.put_hashed(data, object_id_of(data))

    def put_hashed(self, data: bytes | memoryview, object_id: str) -> str:
        """Store ``data`` under ``object_id``, which this process computed from these very
        bytes (the encoder names every array it encodes): they are not hashed a second time.
        Readers in other processes check the hash anyway (:meth:`read_verified`, a receiving
        :class:`ObjectWriter`), so a wrong id can never pass for the right bytes."""
        check_object_id(object_id)
        if self.has(object_id):
            return object_id
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=_PARTIAL_PREFIX)
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            target = self.path(object_id)
            target.parent.mkdir(exist_ok=True)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return object_id

    def writer(self, object_id: str, total_size: int, *, verify: bool = True) -> ObjectWriter:
        """A writer for one object; ``verify=False`` checks its size only (its reader hashes)."""
        return ObjectWriter(self, object_id, total_size, verify=verify)

    def read(self, object_id: str) -> bytes:
        return self.path(object_id).read_bytes()

    def map(self, object_id: str) -> memoryview:
        """The object's bytes, read-only and not copied (the file mapped into memory), not
        checked: for a reader on the host that verified them. The mapping lives as long as
        the view (and arrays over it); deleting the file meanwhile does not disturb it."""
        with self.path(object_id).open("rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))

    def open_for_streaming(self, object_id: str) -> tuple[BinaryIO, int]:
        """The object's file, open for reading (unbuffered: each read is one copy), and its size
        now. Only a regular file, never through a symbolic link: an app process shares its
        host's store, and what it puts at an object's path (a FIFO whose open would block, a
        link to another file) is :class:`FileNotFoundError`, as a missing object is."""
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path(object_id), flags | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:
            if error.errno == errno.ELOOP:  # a symbolic link (O_NOFOLLOW)
                raise FileNotFoundError(f"object {object_id}: not a regular file") from None
            raise
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise FileNotFoundError(f"object {object_id}: not a regular file")
            file: BinaryIO = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        return file, status.st_size

    @staticmethod
    def read_chunks(file: BinaryIO, offset: int, total: int, count: int) -> list[bytes]:
        """Up to ``count`` chunks of ``file`` from ``offset``, never past ``total`` (its size
        when opened: a file that grew since sends what it held); fewer, or none, when the file
        was cut short since. May wait for the disk: for a worker thread."""
        chunks: list[bytes] = []
        while len(chunks) < count and offset < total:
            data = os.pread(file.fileno(), min(CHUNK_SIZE, total - offset), offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
        return chunks

    @staticmethod
    def read_cached(file: BinaryIO, offset: int, buffer: bytearray) -> bytes | None:
        """``len(buffer)`` bytes of ``file`` from ``offset`` if the page cache holds them all
        now, else None, never waiting for the disk (``preadv`` with ``RWF_NOWAIT``: Linux; None
        elsewhere, and on a file system without it): what an event loop may read itself."""
        if _RWF_NOWAIT is None:
            return None
        try:
            got = os.preadv(file.fileno(), [buffer], offset, _RWF_NOWAIT)
        except BlockingIOError:
            return None  # some of it is on the disk only
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return None  # a file system that cannot say
            raise
        return bytes(buffer) if got == len(buffer) else None

    def read_verified(self, object_id: str, *, discard: bool = False) -> memoryview:
        """The object's bytes (mapped, not copied), after checking that they hash to its id:
        for the reader that checks them on this host. :class:`CorruptObject` if they do not;
        with ``discard``, the file is deleted first (the object is missing, to be fetched
        again)."""
        data = self.map(object_id)
        if object_id_of(data) != object_id:
            data.release()
            if discard:
                self.delete([object_id])
            raise CorruptObject(object_id)
        return data

    def verify(self, object_id: str, *, discard: bool = False) -> None:
        """:meth:`read_verified` without keeping the bytes (read a chunk at a time)."""
        digest = hashlib.sha256()
        with self.path(object_id).open("rb") as file:
            while data := file.read(CHUNK_SIZE):
                digest.update(data)
        if digest.hexdigest() != object_id:
            if discard:
                self.delete([object_id])
            raise CorruptObject(object_id)

    def chunks(self, object_id: str) -> Iterator[tuple[int, int, bytes]]:
        """(offset, total size, data) for each chunk of a stored object: one empty chunk for an
        empty object; never past the size it had when opened, and fewer bytes (the receiver
        finds the object incomplete) when the file is cut short meanwhile."""
        file, total = self.open_for_streaming(object_id)
        with file:
            if total == 0:
                yield 0, 0, b""
                return
            offset = 0
            while offset < total:
                batch = self.read_chunks(file, offset, total, 1)
                if not batch:
                    return
                data = batch[0]
                yield offset, total, data
                offset += len(data)

    def delete(self, object_ids: Iterable[str]) -> None:
        for object_id in object_ids:
            self.path(object_id).unlink(missing_ok=True)

    def object_ids(self) -> list[str]:
        """Every object stored (not partial uploads)."""
        return [
            path.name
            for path in self.directory.glob("??/*")
            if _OBJECT_ID.match(path.name) and path.parent.name == path.name[:2]
        ]

    def stored_bytes(self) -> int:
        """The bytes of every stored object (not partial uploads), as the directory holds
        them now (whoever wrote them)."""
        total = 0
        with os.scandir(self.directory) as fan_out:
            for sub in fan_out:
                if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(sub.path) as entries:
                    for entry in entries:
                        if _OBJECT_ID.match(entry.name) and entry.name[:2] == sub.name:
                            total += entry.stat(follow_symlinks=False).st_size
        return total

    def partial_writes(self) -> list[Path]:
        """The temporary files of writes in progress, or of writers that died."""
        return [path for path in self.directory.glob(f"{_PARTIAL_PREFIX}*") if path.is_file()]

    def clear(self) -> None:
        """Delete every stored object (and nothing else)."""
        self.delete(self.object_ids())

    def clear_all(self) -> tuple[int, int]:
        """Delete every stored object and every partial upload left by a process that
        stopped mid-write: (objects deleted, bytes freed). Only for a store no process is
        writing to (a node's, before it starts)."""
        count, freed = 0, 0
        for object_id in self.object_ids():
            path = self.path(object_id)
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
            count += 1
        for partial in self.directory.glob(f"{_PARTIAL_PREFIX}*"):
            freed += partial.stat().st_size
            partial.unlink(missing_ok=True)
        for fan_out in self.directory.glob("??"):
            with contextlib.suppress(OSError):  # not empty (not ours), or not a directory
                fan_out.rmdir()
        return count, freed
