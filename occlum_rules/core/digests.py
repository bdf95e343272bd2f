"""Content digests with a stat cache.

Incremental builds are decided by content (sha256), never by mtime alone; but re-hashing a
1 GB image on every null build would make the cache useless. A file whose (inode, size,
mtime_ns, ctime_ns) is unchanged since we hashed it keeps its digest. The cache is a plain
dict persisted with ``marshal``: losing it only costs time, never correctness.

A build holds an entry for every file of every image it made (sources, image copy, SEFS
nodes) until it ends, so an entry is one 64-byte ``bytes`` (the packed stamp and the raw
digest) instead of a tuple of four ints and a hex string: a third of the memory, which on a
4 GiB image is tens of MiB of the build's peak RSS. Entries of another layout (a file written
before this one) are misses, never errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import stat as statmod
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.marshal_frames import DICT_OPEN, DictEncoder

CHUNK = 1 << 20


_THREAD = threading.local()


def chunk_buffer() -> memoryview:
    """This thread's buffer of CHUNK bytes, to read files a chunk at a time into (and not
    to hold across a call that may use it too). A fresh 1 MiB ``bytes`` per read is 256
    page faults, since big allocations are mappings of their own (``core.heap``): half a
    second for each gigabyte read, hashed or copied."""
    buf = getattr(_THREAD, "buf", None)
    if buf is None:
        buf = _THREAD.buf = memoryview(bytearray(CHUNK))
    return buf


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    buf = chunk_buffer()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


class Reader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class StampSink(Protocol):
    """Where :func:`tree_entries` puts each path's stamp (a dict, or anything that takes
    items)."""

    def __setitem__(self, path: str, stamp: tuple[int, int, int], /) -> None: ...


def sha256_reader(f: Reader) -> str:
    """sha256 of what ``f`` yields until its end (a file, or a decompressing stream)."""
    h = hashlib.sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stat_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What says a file is unchanged since it was hashed: inode, size, mtime, ctime."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def content_stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What says a build's own output still holds the bytes it wrote: inode, size, mtime.
    Not the ctime: storing the output in the local store (a hard link) moves it."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


_STAMP = struct.Struct("<Qqqq")  # inode, size, mtime_ns, ctime_ns
_FILE_STAMP = struct.Struct("<QQqqq")  # device, then _STAMP's fields


def _packed_stamp(st: os.stat_result) -> bytes:
    return _STAMP.pack(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_stamp(st: os.stat_result) -> bytes:
    """A stat taken once, kept as 40 bytes (device, inode, size, mtime, ctime) instead of an
    ``os.stat_result`` (~450 bytes with its ints): copy_bom's planning walk hands it to ELF
    discovery and to the copy, which each made a stat of every source of a 20k-file image
    again (3 µs each here, a tenth of a one-file rebuild). See :meth:`DigestCache.known_at`."""
    return _FILE_STAMP.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_stamp_fields(stamp: bytes) -> tuple[int, int, int, int, int]:
    """(device, inode, size, mtime_ns, ctime_ns) of a :func:`file_stamp`."""
    return _FILE_STAMP.unpack(stamp)


def _entry(st: os.stat_result, digest: str) -> bytes:
    return _packed_stamp(st) + bytes.fromhex(digest)


def _hit(entry: object, st: os.stat_result) -> str | None:
    """The digest an entry holds if it is of this layout and ``st`` is its stamp."""
    if (type(entry) is bytes and len(entry) == _STAMP.size + 32
            and entry[:_STAMP.size] == _packed_stamp(st)):
        return entry[_STAMP.size:].hex()
    return None


class _Shard:
    """One persisted dict of the cache; loaded on first use.

    On disk it is a base file (a marshal dict) and a journal beside it (``<base>.log``) of
    the entries learnt since the base was written, appended one frame per save. The engine
    saves after every action, and rewriting a shard of an image's 20k-80k outputs for an
    action that learnt ten new digests was a quarter of an incremental build's engine time;
    an append costs what was learnt. When the journal outgrows the base (and 4 MiB), the next
    save folds it into a new base. A torn append (a killed build) ends the journal at its
    last whole frame, and the next save writes a new base rather than append behind it.
    Losing entries only ever costs a re-hash: each carries the stamp it is valid for."""

    def __init__(self, path: Path | None):
        self.path = path
        self.log = path.with_name(path.name + ".log") if path is not None else None
        self.entries: dict[str, bytes] | None = None
        # keys learnt since the last save (a list: a dict beside the entries of a 4 GiB
        # image's outputs would be ~15 MiB of the build's peak RSS; a key may repeat)
        self.fresh: list[str] = []
        self.seen: tuple | None = None  # the base's stamp when we last read or wrote it
        self.log_seen: tuple | None = None  # (inode, size) of the journal as we left it
        self.log_whole = True  # the journal ends at a whole frame

    def file_stamp(self) -> tuple | None:
        if self.path is None:
            return None
        try:
            return stat_stamp(os.stat(self.path))
        except OSError:
            return None

    def _log_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.log) if self.log is not None else None
        except OSError:
            return None
        return None if st is None else (st.st_ino, st.st_size)

    def read(self) -> dict[str, bytes]:
        """Base and journal as they are on disk now (later frames win)."""
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as f:
                data = marshal.loads(f.read())  # marshal.load(f) reads in tiny pieces
        except (OSError, EOFError, ValueError, TypeError):
            data = {}
        entries = data if isinstance(data, dict) else {}
        self.log_whole = _read_journal(self.log, entries)
        return entries

    def load(self) -> dict[str, bytes]:
        if self.entries is None:
            self.seen = self.file_stamp()
            self.log_seen = self._log_stamp()
            self.entries = self.read() if self.path is not None else {}
        return self.entries

    def learn(self, key: str, entry: bytes) -> None:
        self.load()[key] = entry
        self.fresh.append(key)

    def save(self) -> None:
        if not self.fresh or self.path is None or self.entries is None:
            return
        try:
            log = self._log_stamp()
            base_size = (self.seen or (0, 0, 0, 0))[1]
            if self.log_whole and (log or (0, 0))[1] <= max(_FOLD_AT, base_size):
                self._append(log)
            else:
                self._fold()
            self.fresh = []
        except OSError:
            pass

    def _append(self, before: tuple | None) -> None:
        """``before``: the journal's (inode, size) just now."""
        assert self.log is not None and self.entries is not None
        os.makedirs(self.log.parent, exist_ok=True)
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for frame in _frames(self.entries, self.fresh):
                os.write(fd, frame)  # one write per frame: appends of two builds never mix
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if before == self.log_seen:  # nobody else appended meanwhile: we know it all
            self.log_seen = (st.st_ino, st.st_size)

    def _fold(self) -> None:
        """A new base holding everything, and no journal."""
        assert self.path is not None and self.log is not None and self.entries is not None
        if self.file_stamp() != self.seen or self._log_stamp() != self.log_seen:
            ours = set(self.fresh)
            for key, value in self.read().items():  # another process wrote: keep its entries
                if key not in ours:  # ours are the newer
                    self.entries[key] = value
        _write_entries(self.path, self.entries)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log)
        self.seen = self.file_stamp()
        self.log_seen = None
        self.log_whole = True


_PIECE = 1 << 20
_FOLD_AT = 4 << 20  # a journal this big (or bigger than its base) is folded into the base
_FRAME = struct.Struct("<4sII")  # magic, length, crc32 of the marshal dict that follows
_MAGIC = b"DCJ1"


def _frames(entries: dict[str, bytes], keys: list[str]) -> Iterator[bytes]:
    """The journal frames for ``keys`` of ``entries``, each a marshal dict of about a
    megabyte at most."""
    encoder = DictEncoder()
    for key in keys:
        encoder[key] = entries[key]
        if encoder.pending() >= _PIECE:
            yield _frame(encoder.encoded())
    if encoder.pending() > len(DICT_OPEN):  # items since the last frame
        yield _frame(encoder.encoded())


def _frame(body: bytes) -> bytes:
    return _FRAME.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def _read_journal(log: Path | None, entries: dict[str, bytes]) -> bool:
    """Apply the journal's whole frames to ``entries``; False if it ends in a torn one."""
    if log is None:
        return True
    try:
        with open(log, "rb") as f:
            data = f.read()
    except OSError:
        return True
    pos = 0
    while pos < len(data):
        head = data[pos:pos + _FRAME.size]
        if len(head) < _FRAME.size:
            return False
        magic, length, crc = _FRAME.unpack(head)
        body = data[pos + _FRAME.size:pos + _FRAME.size + length]
        if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
            return False
        try:
            frame = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            return False
        if isinstance(frame, dict):
            entries.update(frame)
        pos += _FRAME.size + length
    return True


def _write_entries(path: Path, entries: dict[str, bytes]) -> None:
    """Write ``entries`` as ``marshal.dumps`` would (a dict that ``marshal.loads`` reads),
    a megabyte at a time: the outputs' shard of a 4 GiB image's build holds 160k entries,
    and its whole encoding (~25 MiB) beside the dict was the top of the build's peak RSS."""
    f = AtomicFile(path)
    try:
        encoder = DictEncoder()
        for key, value in entries.items():
            encoder[key] = value
            if encoder.pending() >= _PIECE:
                f.write(encoder.take())
        f.write(encoder.encoded())
    except BaseException:
        f.discard()
        raise
    f.commit()


def _key(path: str | os.PathLike) -> str:
    """One entry per file, not per spelling: copy_bom names the same source as
    ``app01/../shared/x`` and ``app02/../shared/x``, and each spelling was hashed and kept
    again (ten instances of one shared tree made the cache ten times its size, and every
    null build decoded it). Lexical normalisation may join two real files under one key
    (``link/..``); the stamp (inode first) still tells them apart, so that costs a re-hash,
    never a wrong digest."""
    return normal_path(os.fspath(path))


def normal_path(path: str) -> str:
    """``os.path.normpath``, without its work for an absolute path that is already normal
    (no empty, "." or ".." component, no trailing slash): nearly every path the engine
    looks up, 80k of them in a one-file rebuild of an image."""
    if (type(path) is str and path.startswith("/") and "//" not in path and "/." not in path
            and not path.endswith("/")):
        return path
    return os.path.normpath(path)  # also a plain str of a subclass (a BOM's located strings)


class DigestCache:
    """path -> packed stamp + raw sha256; shared by everything in one process.

    With ``split_prefix`` (the output directory), paths under it live in a second file:
    a null build only checks source and host files, and should not decode an entry for
    every file of every image it built.
    """

    def __init__(self, path: Path | None = None, split_prefix: str | None = None):
        self.path = path
        self._split = split_prefix
        self._main = _Shard(path)
        self._outputs = None
        if split_prefix:
            self._outputs = _Shard(path.with_name(path.name + ".outputs") if path else None)
        self._lock = threading.Lock()

    def _shard(self, key: str) -> _Shard:
        if self._outputs is not None and self._split and key.startswith(self._split):
            return self._outputs
        return self._main

    def digest(self, path: str | os.PathLike, st: os.stat_result | None = None) -> str:
        key = _key(path)
        if st is None:
            st = os.stat(key)
        shard = self._shard(key)
        entries = shard.load()
        hit = _hit(entries.get(key), st)
        if hit is not None:
            return hit
        value = sha256_file(key)
        with self._lock:
            shard.learn(key, _entry(st, value))
        return value

    def known(self, path: str | os.PathLike, st: os.stat_result | None = None) -> str | None:
        """The cached digest of ``path`` if ``st`` (the file's stat now, when not given) is
        still the stamp it was hashed at; never reads the file."""
        key = _key(path)
        if st is None:
            try:
                st = os.stat(key)
            except OSError:
                return None
        return _hit(self._shard(key).load().get(key), st)

    def known_at(self, path: str | os.PathLike, stamp: bytes) -> str | None:
        """:meth:`known` for a :func:`file_stamp` the caller took earlier: the digest the
        file had then, if the cache holds it; never stats or reads the file."""
        key = _key(path)
        entry = self._shard(key).load().get(key)
        if (type(entry) is bytes and len(entry) == _STAMP.size + 32
                and entry[:_STAMP.size] == stamp[_FILE_STAMP.size - _STAMP.size:]):
            return entry[_STAMP.size:].hex()
        return None

    def remember(self, path: str | os.PathLike, digest: str,
                 st: os.stat_result | None = None) -> None:
        """Record a digest the caller just computed while writing (or copying) the file;
        ``st``: the stat the caller saw unchanged from the first byte read to the last."""
        key = _key(path)
        if st is None:
            try:
                st = os.stat(key)
            except OSError:
                return
        shard = self._shard(key)
        with self._lock:
            shard.learn(key, _entry(st, digest))

    def save(self) -> None:
        with self._lock:  # no entry is added while a shard is written
            self._main.save()
            if self._outputs is not None:
                self._outputs.save()


def tree_entries(root: Path, cache: DigestCache | None, rel_prefix: str = "",
                 stamps: StampSink | None = None, stamp_cut: int = 0) -> list[dict]:
    """Describe a directory tree: sorted entries with type, mode, size, sha256 / link target.

    The description is what an output directory *is* for the cache and for action keys, so it
    must not depend on traversal order, mtimes or the absolute location of the tree.
    ``stamps`` (when given) also receives every entry's (size, mtime, mode) under its path
    less ``stamp_cut`` characters: what an up-to-date check compares later, from the same
    stats instead of a second walk.
    """
    entries: list[dict] = []

    def walk(dir_path: str, rel: str) -> None:
        with os.scandir(dir_path) as it:
            items = sorted(it, key=lambda e: e.name)
        for entry in items:
            rel_path = f"{rel}{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stamps is not None:
                stamps[entry.path[stamp_cut:]] = (st.st_size, st.st_mtime_ns, st.st_mode)
            mode = statmod.S_IMODE(st.st_mode)
            if statmod.S_ISLNK(st.st_mode):
                entries.append({"path": rel_path, "type": "symlink",
                                "target": os.readlink(entry.path)})
            elif statmod.S_ISDIR(st.st_mode):
                entries.append({"path": rel_path, "type": "dir", "mode": mode})
                walk(entry.path, rel_path + "/")
            elif statmod.S_ISREG(st.st_mode):
                digest = cache.digest(entry.path, st) if cache else sha256_file(entry.path)
                entries.append({"path": rel_path, "type": "file", "mode": mode,
                                "size": st.st_size, "sha256": digest})
            # sockets, fifos and devices are not build outputs; they are left out on purpose

    walk(os.fspath(root), rel_prefix)
    return entries


def tree_digest(entries: list[dict]) -> str:
    h = hashlib.sha256()
    for e in entries:
        if e["type"] == "file":
            h.update(f"F {e['path']} {e['mode']:o} {e['sha256']}\n".encode())
        elif e["type"] == "dir":
            h.update(f"D {e['path']} {e['mode']:o}\n".encode())
        else:
            h.update(f"L {e['path']} {e['target']}\n".encode())
    return h.hexdigest()
