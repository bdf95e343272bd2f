"""SGX protected files (Intel's protected FS format as forked by Occlum): writer and reader.

Two modes matter to the Occlum build:

* integrity-only (``key=None``): every node key is zero and data is stored in clear, so the
  file is a pure function of (clean name, bytes) — this is what makes Occlum images
  reproducible;
* user key (``key=16 bytes``): node keys come from a CMAC KDF over random nonces, so the
  output is valid but never reproducible (except with an injected counter RNG).

The writer streams: one MHT group (96 data nodes, 384 KiB) at a time, keeping only the
data-entry halves of the few MHT nodes that have children (1/32 of them) in memory, so
multi-GB inputs need a few MB. Layout and crypto follow ``specs/sefs.md`` §1.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from occlum_rules.atomic_write import AtomicFile, detach
from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.primitives import (
    LABEL_MASTER,
    LABEL_METADATA,
    ZERO_IV,
    ZERO_KEY,
    BatchKdf,
    RandomSource,
    derive_key,
    urandom,
)

NODE_SIZE = 4096
MD_USER_DATA_SIZE = 3072  # user bytes kept inside the metadata node
DATA_PER_MHT = 96
CHILD_MHT_PER_MHT = 32
GROUP_BYTES = DATA_PER_MHT * NODE_SIZE
FILE_ID = 0x5347585F46494C45
MAX_NAME = 260
ENCRYPTED_PART_SIZE = 3392
MAX_MASTER_KEY_USAGES = 65536

# plain part: file_id, major, minor, key_id, cpu_svn, isv_svn, use_user_kdk_key,
# attribute_mask, meta_data_gmac, update_flag, integrity_only (packed, 95 bytes)
_PLAIN = struct.Struct("<QBB32s16sHB16s16sBB")
# encrypted part head: clean_filename, size, mc_uuid, mc_value, mht_key, mht_gmac
_ENC_HEAD = struct.Struct("<260sq16sI16s16s")
PLAIN_SIZE = _PLAIN.size  # 95
assert PLAIN_SIZE == 95 and _ENC_HEAD.size + MD_USER_DATA_SIZE == ENCRYPTED_PART_SIZE
_META_PAD = bytes(NODE_SIZE - PLAIN_SIZE - ENCRYPTED_PART_SIZE)

_ZERO_AEAD = AESGCM(ZERO_KEY)
_ZERO_NODE = bytes(NODE_SIZE)


class IntegrityError(UserError):
    """A protected file (or SEFS image) failed verification."""


# --------------------------------------------------------------------------- geometry


def data_node_count(size: int) -> int:
    return 0 if size <= MD_USER_DATA_SIZE else -(-(size - MD_USER_DATA_SIZE) // NODE_SIZE)


def mht_node_count(size: int) -> int:
    nd = data_node_count(size)
    return 0 if nd == 0 else (nd - 1) // DATA_PER_MHT + 1


def protected_size(size: int) -> int:
    """On-disk length of a protected file holding ``size`` user bytes."""
    nd = data_node_count(size)
    if nd == 0:
        return NODE_SIZE
    d = nd - 1
    return (d + 3 + d // DATA_PER_MHT) * NODE_SIZE


def _mht_phys(m: int) -> int:
    return 1 + 97 * m


def _mht_parent(m: int) -> tuple[int, int]:
    """(parent MHT number, offset of m's entry in it) for MHT node ``m`` >= 1."""
    return (m - 1) // CHILD_MHT_PER_MHT, DATA_PER_MHT * 32 + 32 * ((m - 1) % CHILD_MHT_PER_MHT)


def _data_phys(d: int) -> int:
    return d + 2 + d // DATA_PER_MHT


def clean_name_of(path: str | os.PathLike) -> str:
    """The name the format authenticates: what follows the last ``/`` or ``\\``."""
    s = os.fspath(path)
    return s.replace("\\", "/").rsplit("/", 1)[-1]


def _name_field(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= MAX_NAME - 1 or 0 in raw:
        raise UserError(f"protected file name too long or invalid: {name!r}")
    return raw


# --------------------------------------------------------------------------- writer


class _KeySource:
    """Node keys of one writer session, drawn in the SDK's order (for counter-RNG vectors)."""

    def __init__(self, rng: RandomSource):
        self._rng = rng
        self._kdf, self._used = self._new_master(), 0

    def _new_master(self) -> BatchKdf:
        return BatchKdf(derive_key(ZERO_KEY, LABEL_MASTER, 0, self._rng(16)))

    def keys(self, phys_numbers: list[int]) -> list[bytes]:
        """Keys for the given physical nodes, nonces drawn in list order."""
        out: list[bytes] = []
        i = 0
        while i < len(phys_numbers):
            if self._used >= MAX_MASTER_KEY_USAGES:
                self._kdf, self._used = self._new_master(), 0
            take = min(len(phys_numbers) - i, MAX_MASTER_KEY_USAGES - self._used)
            nums = phys_numbers[i : i + take]
            drawn = self._rng(16 * take)  # one draw: same bytes as `take` draws of 16
            nonces = [drawn[16 * k : 16 * k + 16] for k in range(take)]
            out += self._kdf.derive(nums, nonces)
            self._used += take
            i += take
        return out


def _read_exact(read: Callable[[int], bytes], n: int, where: str | None) -> bytes:
    data = read(n) if n else b""
    if len(data) < n:
        parts = [data]
        got = len(data)
        while got < n:
            more = read(n - got)
            if not more:
                raise UserError("file shrank while it was being protected", where)
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


class FdSink:
    """Writes a protected file's pieces straight to a file descriptor."""

    def __init__(self, fd: int):
        self.fd = fd

    def append(self, parts: list) -> None:
        _writev_all(self.fd, parts)

    def pwrite(self, data: bytes, offset: int) -> None:
        os.pwrite(self.fd, data, offset)


def _seal_data(
    chunk: bytes, first: int, keys: _KeySource | None, mht_phys: int | None = None
) -> tuple[bytes, list, bytes | None]:
    """MHT data entries and on-disk pieces for data nodes ``first..`` holding ``chunk``.

    With ``mht_phys`` (encrypted mode, leaf MHT node), that node's key is derived in the
    same batch, right after the data nodes' (the SDK's draw order), and returned third.
    """
    n = len(chunk)
    full = n // NODE_SIZE
    tail = n - full * NODE_SIZE
    pad = bytes(NODE_SIZE - tail) if tail else b""
    mv = memoryview(chunk)
    if keys is None:
        enc = _ZERO_AEAD.encrypt
        tags = [enc(ZERO_IV, b"", mv[i : i + NODE_SIZE]) for i in range(0, full * NODE_SIZE, NODE_SIZE)]
        if tail:
            tags.append(enc(ZERO_IV, b"", chunk[full * NODE_SIZE :] + pad))
        return b"".join(map(ZERO_KEY.__add__, tags)), [chunk, pad], None
    count = full + (1 if tail else 0)
    # the SDK flushes the most recently used node first: highest data node draws first
    phys_desc = [_data_phys(d) for d in range(first + count - 1, first - 1, -1)]
    if mht_phys is not None:
        phys_desc.append(mht_phys)
    drawn = keys.keys(phys_desc)
    mht_key = drawn.pop() if mht_phys is not None else None
    node_keys = drawn[::-1]
    cts = []
    for i, k in enumerate(node_keys):
        node = mv[i * NODE_SIZE : (i + 1) * NODE_SIZE] if i < full else chunk[full * NODE_SIZE :] + pad
        cts.append(AESGCM(k).encrypt(ZERO_IV, node, None))
    entries = b"".join(k + c[-16:] for k, c in zip(node_keys, cts, strict=True))
    return entries, [b"".join(c[:-16] for c in cts)], mht_key


def protect_stream(
    sink,
    clean_name: str,
    read: Callable[[int], bytes],
    size: int,
    *,
    key: bytes | None = None,
    rng: RandomSource | None = None,
    on_data: Callable[[bytes], None] | None = None,
    where: str | None = None,
) -> bytes:
    """Protect ``size`` bytes from ``read(n)`` into ``sink``; returns the root MAC.

    A file that fits in one MHT group (<= 396 KiB, nearly every file of an image) is read
    once and written with a single ``append``; bigger ones stream group by group, with the
    metadata node and the few MHT nodes that have children written last via ``pwrite``.
    ``on_data`` sees every source byte in order (to hash while packing). Reading must give
    exactly ``size`` bytes: a file that changes while it is packed is an error.
    """
    name_raw = _name_field(clean_name)
    keys = _KeySource(rng or urandom) if key is not None else None
    ndata = data_node_count(size)
    nmht = mht_node_count(size)

    if nmht <= 1:
        data = _read_exact(read, size, where)
        if on_data is not None and size:
            on_data(data)
        if read(1):
            raise UserError("file grew while it was being protected", where)
        head = data[:MD_USER_DATA_SIZE]
        if not ndata:
            node0, mac = _meta_node(name_raw, size, head, ZERO_KEY, bytes(16), keys, key)
            sink.append([node0])
            return mac
        entries, payload, k = _seal_data(data[MD_USER_DATA_SIZE:], 0, keys, 1)
        mk, mt, mht = _seal_node(entries + bytes(NODE_SIZE - len(entries)), keys, 1, k)
        node0, mac = _meta_node(name_raw, size, head, mk, mt, keys, key)
        sink.append([node0, mht, *payload])
        return mac

    head = _read_exact(read, MD_USER_DATA_SIZE, where)
    if on_data is not None:
        on_data(head)
    n_internal = -(-(nmht - 1) // CHILD_MHT_PER_MHT)  # MHT nodes that have children
    mht_entries: dict[int, tuple[bytes, bytes]] = {}  # mht number -> (key, tag)
    pending: dict[int, bytes] = {}  # internal mht -> its data-entry bytes
    remaining = size - MD_USER_DATA_SIZE
    sink.append([_ZERO_NODE])  # metadata node, written last
    for m in range(nmht):
        first = m * DATA_PER_MHT
        want = min(remaining, GROUP_BYTES)
        chunk = _read_exact(read, want, where)
        remaining -= want
        if on_data is not None:
            on_data(chunk)
        leaf = m >= n_internal
        entries, payload, k = _seal_data(chunk, first, keys, _mht_phys(m) if leaf else None)
        if not leaf:
            pending[m] = entries
            mht_bytes = _ZERO_NODE
        else:
            k, t, mht_bytes = _seal_node(
                entries + bytes(NODE_SIZE - len(entries)), keys, _mht_phys(m), k
            )
            mht_entries[m] = (k, t)
        sink.append([mht_bytes, *payload])
    if read(1):
        raise UserError("file grew while it was being protected", where)

    for m in range(n_internal - 1, -1, -1):
        node = bytearray(NODE_SIZE)
        entries = pending.pop(m)
        node[: len(entries)] = entries
        for c in range(CHILD_MHT_PER_MHT * m + 1, min(CHILD_MHT_PER_MHT * m + 33, nmht)):
            ck, ct = mht_entries.pop(c)
            off = _mht_parent(c)[1]
            node[off : off + 32] = ck + ct
        k, t, on_disk = _seal_node(bytes(node), keys, _mht_phys(m))
        mht_entries[m] = (k, t)
        sink.pwrite(on_disk, _mht_phys(m) * NODE_SIZE)
    mk, mt = mht_entries[0]
    node0, mac = _meta_node(name_raw, size, head, mk, mt, keys, key)
    sink.pwrite(node0, 0)
    return mac


def _meta_node(
    name_raw: bytes,
    size: int,
    head: bytes,
    mht_key: bytes,
    mht_gmac: bytes,
    keys: _KeySource | None,
    key: bytes | None,
) -> tuple[bytes, bytes]:
    """(metadata node bytes, root MAC)."""
    enc_part = _ENC_HEAD.pack(name_raw, size, b"", 0, mht_key, mht_gmac) + head + bytes(
        MD_USER_DATA_SIZE - len(head)
    )
    if keys is None or key is None:
        mac = _ZERO_AEAD.encrypt(ZERO_IV, b"", enc_part)
        key_id = bytes(32)
        on_disk = enc_part
    else:
        key_id = keys._rng(32)
        meta_key = derive_key(key, LABEL_METADATA, 0, key_id)
        sealed = AESGCM(meta_key).encrypt(ZERO_IV, enc_part, None)
        on_disk, mac = sealed[:-16], sealed[-16:]
    plain = _PLAIN.pack(FILE_ID, 1, 0, key_id, b"", 0, 1, b"", mac, 0, 1 if keys is None else 0)
    return plain + on_disk + _META_PAD, mac


def write_protected(
    out_fd: int,
    clean_name: str,
    src,
    size: int,
    *,
    key: bytes | None = None,
    rng: RandomSource | None = None,
    on_data: Callable[[bytes], None] | None = None,
    where: str | None = None,
) -> bytes:
    """Write a protected file holding ``size`` bytes read from ``src`` (has ``read``) to
    ``out_fd`` (an empty file opened for writing, at offset 0); returns the root MAC."""
    return protect_stream(
        FdSink(out_fd), clean_name, src.read, size, key=key, rng=rng, on_data=on_data, where=where
    )


def patch_integrity_only(path: str | os.PathLike, edits: list[tuple[int, bytes]]) -> bytes:
    """Overwrite byte ranges of an integrity-only protected file in place; new root MAC.

    Only the nodes holding edited bytes, the MHT nodes above them and node 0 are read and
    rewritten, so changing a few records of a multi-MB file costs microseconds, and the
    file ends up byte-identical to writing the new content afresh (in this mode a node
    depends only on its own bytes and its children's MACs). Every node read is checked
    against its parent's MAC first. The size cannot change. Not atomic: callers treat the
    file as unknown until this returns.
    """
    where = os.fspath(path)
    detach(where)  # may be a hard link into the local store
    fd = os.open(where, os.O_RDWR)
    try:
        def read_node(phys: int, tag: bytes) -> bytearray:
            node = os.pread(fd, NODE_SIZE, phys * NODE_SIZE)
            if len(node) != NODE_SIZE or _ZERO_AEAD.encrypt(ZERO_IV, b"", node) != tag:
                raise IntegrityError(f"node {phys} does not match its MAC", where)
            return bytearray(node)

        node0 = bytearray(os.pread(fd, NODE_SIZE, 0))
        if len(node0) != NODE_SIZE:
            raise IntegrityError("not a protected file (too short)", where)
        plain = _PLAIN.unpack_from(node0)
        enc = bytearray(node0[PLAIN_SIZE : PLAIN_SIZE + ENCRYPTED_PART_SIZE])
        if plain[0] != FILE_ID or plain[10] != 1 or _ZERO_AEAD.encrypt(ZERO_IV, b"", bytes(enc)) != plain[8]:
            raise IntegrityError("not an intact integrity-only protected file", where)
        size = _ENC_HEAD.unpack_from(enc)[1]
        mht: dict[int, bytearray] = {}

        def mht_node(m: int) -> bytearray:
            if m not in mht:
                if m == 0:
                    tag = bytes(enc[_ENC_HEAD.size - 16 : _ENC_HEAD.size])
                else:
                    p, off = _mht_parent(m)
                    tag = bytes(mht_node(p)[off + 16 : off + 32])
                mht[m] = read_node(_mht_phys(m), tag)
            return mht[m]

        data: dict[int, bytearray] = {}
        for offset, raw in edits:
            if offset < 0 or offset + len(raw) > size:
                raise ValueError(f"edit at {offset} (+{len(raw)}) outside the file's {size} bytes")
            done = 0
            while done < len(raw):
                at = offset + done
                if at < MD_USER_DATA_SIZE:
                    take = min(len(raw) - done, MD_USER_DATA_SIZE - at)
                    start = _ENC_HEAD.size + at
                    enc[start : start + take] = raw[done : done + take]
                else:
                    d, within = divmod(at - MD_USER_DATA_SIZE, NODE_SIZE)
                    take = min(len(raw) - done, NODE_SIZE - within)
                    if d not in data:
                        leaf = mht_node(d // DATA_PER_MHT)
                        e = 32 * (d % DATA_PER_MHT)
                        data[d] = read_node(_data_phys(d), bytes(leaf[e + 16 : e + 32]))
                    data[d][within : within + take] = raw[done : done + take]
                done += take
        for d, node in data.items():
            e = 32 * (d % DATA_PER_MHT)
            mht[d // DATA_PER_MHT][e + 16 : e + 32] = _ZERO_AEAD.encrypt(ZERO_IV, b"", bytes(node))
            os.pwrite(fd, node, _data_phys(d) * NODE_SIZE)
        for m in sorted(mht, reverse=True):  # children before parents: a parent's number is lower
            tag = _ZERO_AEAD.encrypt(ZERO_IV, b"", bytes(mht[m]))
            if m:
                p, off = _mht_parent(m)
                mht[p][off + 16 : off + 32] = tag
            else:
                enc[_ENC_HEAD.size - 16 : _ENC_HEAD.size] = tag
            os.pwrite(fd, mht[m], _mht_phys(m) * NODE_SIZE)
        mac = _ZERO_AEAD.encrypt(ZERO_IV, b"", bytes(enc))
        node0[: PLAIN_SIZE + ENCRYPTED_PART_SIZE] = _PLAIN.pack(*plain[:8], mac, *plain[9:]) + enc
        os.pwrite(fd, node0, 0)
        return mac
    finally:
        os.close(fd)


def _seal_node(
    node: bytes, keys: _KeySource | None, phys: int, key: bytes | None = None
) -> tuple[bytes, bytes, bytes]:
    """(key, tag, on-disk bytes) of one MHT node (``key``: already derived for it)."""
    if keys is None:
        return ZERO_KEY, _ZERO_AEAD.encrypt(ZERO_IV, b"", node), node
    k = key if key is not None else keys.keys([phys])[0]
    sealed = AESGCM(k).encrypt(ZERO_IV, node, None)
    return k, sealed[-16:], sealed[:-16]


def _writev_all(fd: int, parts: list) -> None:
    n = os.writev(fd, parts)
    total = sum(map(len, parts))
    if n != total:  # rare short write: finish the rest plainly
        rest = b"".join(bytes(p) for p in parts)[n:]
        while rest:
            k = os.write(fd, rest)
            rest = rest[k:]


def protect_file(
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    *,
    key: bytes | None = None,
    rng: RandomSource | None = None,
    clean_name: str | None = None,
) -> bytes:
    """Protect ``src_path`` into ``dst_path`` (written to a temp name, then renamed)."""
    dst = os.fspath(dst_path)
    name = clean_name if clean_name is not None else clean_name_of(dst)
    try:
        with open(src_path, "rb", buffering=0) as src:
            size = os.fstat(src.fileno()).st_size
            with AtomicFile(dst, makedirs=False) as out:
                assert out.fd is not None
                mac = write_protected(out.fd, name, src, size, key=key, rng=rng,
                                      where=os.fspath(src_path))
    except FileNotFoundError as exc:
        raise UserError("no such file", os.fspath(exc.filename or src_path)) from None
    return mac


def protect_bytes(
    data: bytes, clean_name: str, *, key: bytes | None = None, rng: RandomSource | None = None
) -> tuple[bytes, bytes]:
    """(protected file bytes, root MAC) for in-memory data; for small files and tests."""
    import io
    import tempfile

    with tempfile.TemporaryFile() as tf:
        mac = write_protected(tf.fileno(), clean_name, io.BytesIO(data), len(data), key=key, rng=rng)
        tf.seek(0)
        return tf.read(), mac


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class PfsHeader:
    clean_name: str
    size: int
    mac: bytes
    integrity_only: bool
    mht_key: bytes
    mht_gmac: bytes
    head: bytes  # first min(size, 3072) user bytes


def mac_of_protected(path: str | os.PathLike) -> bytes:
    """The stored root MAC (no verification; use :class:`ProtectedFileReader` to verify)."""
    with open(path, "rb") as f:
        plain = f.read(PLAIN_SIZE)
    if len(plain) != PLAIN_SIZE:
        raise IntegrityError("not a protected file (too short)", os.fspath(path))
    return _PLAIN.unpack(plain)[8]


class ProtectedFileReader:
    """Opens a protected file and verifies every node as it streams the plaintext.

    Stricter than the SDK reader: bytes the MACs do not cover (the metadata node's padding
    and fixed plain-part fields, trailing bytes) must have the values the writer puts
    there, so any flipped byte in a file is detected.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        key: bytes | None = None,
        expected_name: str | None = None,
    ):
        self.path = os.fspath(path)
        self._key = key
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise IntegrityError("protected file is missing", self.path) from None
        try:
            self.header = self._read_header(expected_name)
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ProtectedFileReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, what: str) -> IntegrityError:
        return IntegrityError(what, self.path)

    def _read_header(self, expected_name: str | None) -> PfsHeader:
        node = os.pread(self._fd, NODE_SIZE, 0)
        if len(node) != NODE_SIZE:
            raise self._fail("not a protected file (shorter than one node)")
        (file_id, major, minor, key_id, cpu_svn, isv_svn, user_kdk, attr, mac, upd, integ) = (
            _PLAIN.unpack_from(node)
        )
        if file_id != FILE_ID or major != 1 or minor != 0:
            raise self._fail("not a protected file (bad file id or version)")
        if node[PLAIN_SIZE + ENCRYPTED_PART_SIZE :] != _META_PAD:
            raise self._fail("metadata node padding is not zero")
        if upd != 0:
            raise self._fail("file was not closed cleanly (update flag set)")
        if cpu_svn != bytes(16) or isv_svn != 0 or attr != bytes(16) or user_kdk != 1:
            raise self._fail("unexpected key policy fields in the metadata node")
        body = node[PLAIN_SIZE : PLAIN_SIZE + ENCRYPTED_PART_SIZE]
        if integ == 1:
            if self._key is not None:
                raise self._fail("file is integrity-only but a key was given")
            if key_id != bytes(32):
                raise self._fail("integrity-only file has a non-zero key id")
            if _ZERO_AEAD.encrypt(ZERO_IV, b"", body) != mac:
                raise self._fail("metadata MAC mismatch")
            plain_body = body
        elif integ == 0:
            if self._key is None:
                raise self._fail("file is encrypted; a key is needed")
            meta_key = derive_key(self._key, LABEL_METADATA, 0, key_id)
            try:
                plain_body = AESGCM(meta_key).decrypt(ZERO_IV, body + mac, None)
            except InvalidTag:
                raise self._fail("metadata MAC mismatch (wrong key or corrupted)") from None
        else:
            raise self._fail("bad integrity_only flag")
        raw_name, size, mc_uuid, mc_value, mht_key, mht_gmac = _ENC_HEAD.unpack_from(plain_body)
        name_bytes = raw_name.rstrip(b"\0")
        if raw_name[len(name_bytes) :] != bytes(MAX_NAME - len(name_bytes)) or b"\0" in name_bytes:
            raise self._fail("malformed name field")
        name = name_bytes.decode("utf-8", "replace")
        if expected_name is not None and name != expected_name:
            raise self._fail(f"name inside the file is {name!r}, expected {expected_name!r}")
        if size < 0 or mc_uuid != bytes(16) or mc_value != 0:
            raise self._fail("bad size or monotonic-counter fields")
        head = plain_body[_ENC_HEAD.size :]
        n0 = min(size, MD_USER_DATA_SIZE)
        if head[n0:] != bytes(MD_USER_DATA_SIZE - n0):
            raise self._fail("bytes past the end of file are not zero")
        if size <= MD_USER_DATA_SIZE and (mht_key != bytes(16) or mht_gmac != bytes(16)):
            raise self._fail("small file with a root MHT entry")
        if integ == 1 and mht_key != bytes(16):
            raise self._fail("integrity-only file with a non-zero MHT key")
        actual = os.fstat(self._fd).st_size
        if actual != protected_size(size):
            raise self._fail(
                f"file length {actual} does not match its size field ({protected_size(size)} expected)"
            )
        return PfsHeader(name, size, mac, integ == 1, mht_key, mht_gmac, bytes(head[:n0]))

    def _open_node(self, phys: int, key: bytes, tag: bytes) -> bytes:
        raw = os.pread(self._fd, NODE_SIZE, phys * NODE_SIZE)
        if self.header.integrity_only:
            if key != ZERO_KEY or _ZERO_AEAD.encrypt(ZERO_IV, b"", raw) != tag:
                raise self._fail(f"node {phys} MAC mismatch")
            return raw
        try:
            return AESGCM(key).decrypt(ZERO_IV, raw + tag, None)
        except InvalidTag:
            raise self._fail(f"node {phys} MAC mismatch") from None

    def chunks(self) -> Iterator[bytes]:
        """Yield the verified plaintext, in order (the whole file is checked by the end)."""
        h = self.header
        if h.head:
            yield h.head
        size = h.size
        ndata = data_node_count(size)
        nmht = mht_node_count(size)
        expect: dict[int, tuple[bytes, bytes]] = {0: (h.mht_key, h.mht_gmac)} if nmht else {}
        remaining = size - len(h.head)
        integ = h.integrity_only
        enc = _ZERO_AEAD.encrypt
        for m in range(nmht):
            k, t = expect.pop(m)
            mht = self._open_node(_mht_phys(m), k, t)
            first = m * DATA_PER_MHT
            count = min(DATA_PER_MHT, ndata - first)
            used_children = [c for c in range(32 * m + 1, 32 * m + 33) if c < nmht]
            # entries of nodes that do not exist must be zero (the writer never sets them)
            if mht[32 * count : DATA_PER_MHT * 32] != bytes(32 * (DATA_PER_MHT - count)):
                raise self._fail(f"MHT node {m} has entries for missing data nodes")
            child_end = DATA_PER_MHT * 32 + 32 * len(used_children)
            if mht[child_end:] != bytes(NODE_SIZE - child_end):
                raise self._fail(f"MHT node {m} has entries for missing MHT nodes")
            for c in used_children:
                off = _mht_parent(c)[1]
                expect[c] = (mht[off : off + 16], mht[off + 16 : off + 32])
            phys0 = _data_phys(first)
            length = count * NODE_SIZE
            raw = os.pread(self._fd, length, phys0 * NODE_SIZE)
            if len(raw) != length:
                raise self._fail("file is truncated")
            rv = memoryview(raw)
            if integ:
                for i in range(count):
                    if mht[32 * i : 32 * i + 16] != ZERO_KEY or enc(
                        ZERO_IV, b"", rv[i * NODE_SIZE : (i + 1) * NODE_SIZE]
                    ) != mht[32 * i + 16 : 32 * i + 32]:
                        raise self._fail(f"data node {first + i} MAC mismatch")
                plain = raw
            else:
                parts = []
                for i in range(count):
                    try:
                        parts.append(
                            AESGCM(mht[32 * i : 32 * i + 16]).decrypt(
                                ZERO_IV,
                                bytes(rv[i * NODE_SIZE : (i + 1) * NODE_SIZE])
                                + mht[32 * i + 16 : 32 * i + 32],
                                None,
                            )
                        )
                    except InvalidTag:
                        raise self._fail(f"data node {first + i} MAC mismatch") from None
                plain = b"".join(parts)
            take = min(remaining, length)
            if plain[take:] != bytes(length - take):
                raise self._fail("bytes past the end of file are not zero")
            remaining -= take
            yield plain[:take]

    def read_all(self) -> bytes:
        return b"".join(self.chunks())


def read_protected(
    path: str | os.PathLike, *, key: bytes | None = None, expected_name: str | None = None
) -> tuple[bytes, bytes]:
    """(plaintext, root MAC) of a protected file, fully verified. For small files."""
    name = expected_name if expected_name is not None else clean_name_of(path)
    with ProtectedFileReader(path, key=key, expected_name=name) as r:
        return r.read_all(), r.header.mac
