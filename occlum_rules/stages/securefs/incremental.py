"""State of the previous pack, and how to turn the old ``__ROOT`` into the new one.

The state file (written beside ``__ROOT`` after a successful integrity-only pack, deleted
before such a pack changes ``__ROOT``) records, per inode in id order: path, kind, mode,
size, the SHA-256 of its *content* (file bytes, symlink target, or directory entries),
its MAC and the source file's stat key — plus, for manifest-driven packs, the manifest's
own columns — and the stamp (size, mtime) of every file the pack left in ``__ROOT``. It
is trusted only while ``__ROOT`` still holds exactly the image it describes (the same files
with the same stamps, the same metadata MAC); otherwise the pack is a full one. An incremental pack rewrites only what changed, so a file of ``__ROOT`` edited since
(by hand, or through the store's hard link to it) would otherwise stay in the new image,
its MAC no longer the one the metadata holds.

Three ways to an incremental pack, cheapest first:

* manifest rows changed but no path or type did: every inode keeps its id, so only the
  changed files are rewritten and their records patched into the old metadata;
* the same for a directory scan, where unchanged stat keys (taken well after the file's
  last change) stand in for hashes;
* otherwise a plan by content: unchanged files stay, files whose id moved are renamed and
  get a new node 0, new content is written, and metadata is rebuilt.

Why re-use is safe: the SEFS layer names an inode's protected file after its id, and in
integrity-only mode the id enters that file only through the clean name inside its
metadata node (node keys are zero, data is stored in clear). So a file whose content is
unchanged but whose id moved is re-used by renaming it and rewriting node 0: its data and
MHT nodes are byte-identical to what a full pack would write. The result always equals a
full pack of the new tree; the tests compare the two on random edit sequences.

Encrypted images are always packed in full and never get a state: keeping plaintext
hashes beside an encrypted image would let anyone holding the output directory confirm
guesses about its contents, re-using would need the key to re-seal node 0, and the output
is random anyway (fresh nonces), so nothing downstream could be re-used.

The state is stored as a few flat columns (``marshal`` of lists and bytes, after a CRC-32
of the whole file, which catches a torn or damaged file; the state is a cache beside the
image, not a trust boundary): loading 100k inodes then costs milliseconds, where a JSON
list of records costs a large share of an incremental pack. A manifest-driven pack also
keeps the manifest text, so the next one finds changed rows by comparing lines.
"""

from __future__ import annotations

import itertools
import json
import marshal
import operator
import os
import stat
import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from occlum_rules.atomic_write import detach
from occlum_rules.core.digests import file_stamp, file_stamp_fields
from occlum_rules.stages.securefs.pfs import (
    _PLAIN,
    ENCRYPTED_PART_SIZE,
    FILE_ID,
    MAX_NAME,
    NODE_SIZE,
    PLAIN_SIZE,
    mac_of_protected,
)
from occlum_rules.stages.securefs.primitives import ZERO_IV, ZERO_KEY
from occlum_rules.stages.securefs.sefs_format import METADATA_NAME, allocate_ids, inode_file_name
from occlum_rules.state_file import Missing, read_state, write_state
from occlum_rules.state_file import discard_state as discard_state

# The state file's kind and version in the shared framing (occlum_rules/state_file.py).
STATE_KIND = "sefs-pack-state"
STATE_VERSION = 5  # 5: the stamps of __ROOT's files

# A recorded stat key proves "unchanged" only for files whose last change was well before
# the scan that recorded it: timestamps are coarse (kernel tick, or seconds on some file
# systems), so a same-size rewrite right after a scan could keep every stat field equal.
RACY_MARGIN_NS = 2_000_000_000

_ZERO_AEAD = AESGCM(ZERO_KEY)


def join_paths(paths: list[str]) -> bytes:
    return "\0".join(paths).encode("utf-8", "surrogateescape")


@dataclass
class PackState:
    """Columns in inode-id order (position p holds the p-th allocated id)."""

    root_mac: bytes
    scan_started_ns: int
    paths_blob: bytes  # NUL-joined paths (see join_paths); split only when needed
    kinds: bytes
    modes: array  # 'H'
    sizes: array  # 'q'
    contents: bytearray  # sha256 of each inode's protected content, 32 bytes each
    macs: bytearray  # 16 bytes per inode
    stats: array  # 'q', 5 per inode: size, mtime_ns, ctime_ns, ino, dev (zeros: unknown)
    manifest: dict | None = None  # {"text": manifest text, "perm": row -> position (array "i")}
    # 'q', 2 per inode: (size, mtime_ns) of its protected file as the pack left it; the
    # metadata file's after them (see root_stamps)
    file_stamps: array = field(default_factory=lambda: array("q"))
    # not saved: those files as load_state found them, which describe __ROOT to the build
    # engine after an in-place pack without a second walk of it
    found: RootFiles | None = field(default=None, repr=False)
    _paths: list[str] | None = field(default=None, repr=False)
    _by_path: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def paths(self) -> list[str]:
        if self._paths is None:
            self._paths = self.paths_blob.decode("utf-8", "surrogateescape").split("\0")
        return self._paths

    @property
    def by_path(self) -> dict[str, int]:
        if self._by_path is None:
            self._by_path = dict(zip(self.paths, range(len(self.paths)), strict=True))
        return self._by_path

    def mac(self, pos: int) -> bytes:
        return bytes(self.macs[16 * pos : 16 * pos + 16])

    def content(self, pos: int) -> str:
        return self.contents[32 * pos : 32 * pos + 32].hex()

    def stat_key(self, pos: int) -> tuple:
        return tuple(self.stats[5 * pos : 5 * pos + 5])


@dataclass
class RootFiles:
    """The files of ``__ROOT`` in state order (inode files by position, then the metadata
    file), as one listing found them. Kept compact (an ``os.stat_result`` with its ints is
    ~450 bytes; 80k of them on a 4 GiB image)."""

    stamps: list[bytes]  # core.digests.file_stamp of each
    modes: array  # 'I': st_mode of each

    def set(self, pos: int, st: os.stat_result) -> None:
        self.stamps[pos] = file_stamp(st)
        self.modes[pos] = st.st_mode


def root_files(root_dir: str, n: int) -> RootFiles | None:
    """:class:`RootFiles` of ``root_dir``; None when it holds anything else, or misses one
    of them."""
    found = RootFiles([b""] * (n + 1), array("I", [0]) * (n + 1))
    return found if _scan_root(root_dir, n, found.set) else None


def root_stamps(root_dir: str, n: int) -> array | None:
    """What a state records of the files of ``root_dir`` (in :class:`RootFiles` order):
    (size, mtime) of each, what the build engine's stamps of outputs hold too; None as for
    :func:`root_files`. Not the ctime: storing an output in the local store (a hard link)
    moves it. Not the inode: a copy that keeps the times (a workspace copied with ``cp -a``)
    holds the same bytes, and the engine takes it as the same output."""
    out = array("q", [0]) * (2 * (n + 1))

    def keep(pos: int, st: os.stat_result) -> None:
        out[2 * pos] = st.st_size
        out[2 * pos + 1] = st.st_mtime_ns

    return out if _scan_root(root_dir, n, keep) else None


def stamps_of(found: RootFiles) -> array:
    """:func:`root_stamps` of what :func:`root_files` found."""
    out = array("q")
    for stamp in found.stamps:
        out.extend(file_stamp_fields(stamp)[2:4])
    return out


def _scan_root(root_dir: str, n: int, visit: Callable[[int, os.stat_result], None]) -> bool:
    """One listing of ``__ROOT``, each file's stat handed to ``visit`` with its position;
    False when it holds anything but the ``n`` inode files and the metadata file."""
    names = {inode_file_name(i): pos for pos, i in enumerate(allocate_ids(n))}
    names[METADATA_NAME] = n
    seen = 0
    with os.scandir(root_dir) as it:
        for entry in it:
            pos = names.get(entry.name)
            if pos is None:
                return False
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return False
            visit(pos, st)
            seen += 1
    return seen == n + 1


def restamp(state: PackState, root_dir: str, positions: Iterable[int]) -> None:
    """Stat the inode files at ``positions`` and the metadata file again, after an in-place
    pack rewrote them (the others are as load_state found them)."""
    assert state.found is not None
    ids = allocate_ids(len(state))
    for pos in itertools.chain(positions, (len(state),)):
        name = inode_file_name(ids[pos]) if pos < len(state) else METADATA_NAME
        st = os.lstat(os.path.join(root_dir, name))
        state.found.set(pos, st)
        state.file_stamps[2 * pos : 2 * pos + 2] = array("q", (st.st_size, st.st_mtime_ns))


# The big columns are raw sections after a small marshal header that gives their lengths:
# written part by part and sliced on load, never copied into one payload first.
_SECTIONS = ("paths", "kinds", "modes", "sizes", "contents", "macs", "stats", "manifest_text",
             "manifest_perm", "file_stamps")


def save_state(path: str | os.PathLike, state: PackState) -> None:
    sections = {
        "paths": state.paths_blob, "kinds": state.kinds, "modes": state.modes,
        "sizes": state.sizes, "contents": state.contents, "macs": state.macs,
        # manifest-driven packs have no stat keys: store nothing rather than zeros
        "stats": state.stats if state.manifest is None else b"",
        "manifest_text": state.manifest["text"] if state.manifest else b"",
        "manifest_perm": state.manifest["perm"] if state.manifest else b"",
        "file_stamps": state.file_stamps,
    }
    views = [memoryview(sections[name]).cast("B") for name in _SECTIONS]
    header = marshal.dumps({
        "python": list(sys.version_info[:2]),
        "root_mac": state.root_mac,
        "scan_started_ns": state.scan_started_ns,
        "has_manifest": state.manifest is not None,
        "lengths": [len(v) for v in views],
    }, 4)
    write_state(path, STATE_KIND, STATE_VERSION, len(header).to_bytes(4, "little"), header,
                *views)


def _array(code: str, raw) -> array:
    a = array(code)
    a.frombytes(raw)
    return a


def _parse_state(payload: memoryview) -> PackState | str:
    head = int.from_bytes(payload[:4], "little")
    d = marshal.loads(payload[4 : 4 + head])
    if d["python"] != list(sys.version_info[:2]):
        return "pack state written by another Python version"
    lengths = d["lengths"]
    if len(lengths) != len(_SECTIONS) or 4 + head + sum(lengths) != len(payload):
        return "malformed pack state"
    sec, off = {}, 4 + head
    for name, length in zip(_SECTIONS, lengths, strict=True):
        sec[name] = payload[off : off + length]
        off += length
    n = len(sec["kinds"])
    state = PackState(
        d["root_mac"], d["scan_started_ns"], bytes(sec["paths"]), bytes(sec["kinds"]),
        _array("H", sec["modes"]), _array("q", sec["sizes"]), bytearray(sec["contents"]),
        bytearray(sec["macs"]), _array("q", sec["stats"] if len(sec["stats"]) else bytes(40 * n)),
        {"text": bytes(sec["manifest_text"]), "perm": bytes(sec["manifest_perm"])}
        if d["has_manifest"] else None,
        _array("q", sec["file_stamps"]),
    )
    if not (len(state.modes) == len(state.sizes) == n >= 1 and state.paths_blob.count(0) == n - 1
            and len(state.contents) == 32 * n and len(state.macs) == 16 * n
            and len(state.stats) == 5 * n and len(state.file_stamps) == 2 * (n + 1)):
        return "malformed pack state"
    return state


def load_state(path: str | os.PathLike, root_dir: str) -> tuple[PackState | None, str]:
    """(state, "") when the state file is intact and matches ``root_dir``; else (None, why).

    Anything unexpected means "do a full pack": a wrong re-use would silently produce a
    wrong image, while a needless full pack only costs time.
    """
    payload = read_state(path, STATE_KIND, STATE_VERSION)
    if isinstance(payload, Missing):
        if payload.reason == "missing":
            return None, "no previous pack state"
        return None, f"pack state {payload.reason}"
    try:
        state = _parse_state(payload)
    except (EOFError, ValueError, TypeError, KeyError):
        return None, "malformed pack state"
    if isinstance(state, str):
        return None, state
    # The state must describe exactly what is in __ROOT now: the same files, none of them
    # written since (one listing with a stat each).
    try:
        found = root_files(root_dir, len(state))
    except OSError:
        return None, "previous image is missing"
    if found is None:
        return None, "previous image does not match its pack state (files differ)"
    if stamps_of(found) != state.file_stamps:
        return None, "previous image was changed since it was packed"
    state.found = found
    try:
        if mac_of_protected(os.path.join(root_dir, METADATA_NAME)) != state.root_mac:
            return None, "previous image does not match its pack state (root MAC differs)"
    except Exception:  # noqa: BLE001 - any problem reading it means "not reusable"
        return None, "previous image metadata unreadable"
    return state, ""


def stat_proves_unchanged(state: PackState, pos: int, stat_key: tuple | None) -> bool:
    """True when the file's stat key equals the recorded one and was not racy then."""
    if stat_key is None or state.stat_key(pos) != stat_key:
        return False
    _size, mtime_ns, ctime_ns = stat_key[:3]
    return max(mtime_ns, ctime_ns) < state.scan_started_ns - RACY_MARGIN_NS


_BLOCK = 1 << 16


def _common_prefix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b`` (at most ``limit``): block compares,
    then a bisection inside the first differing block, so it runs at memcmp speed."""
    lo = 0
    while lo < limit:
        hi = min(limit, lo + _BLOCK)
        if a[lo:hi] != b[lo:hi]:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if a[lo:mid] == b[lo:mid]:
                    lo = mid
                else:
                    hi = mid
            return lo
        lo = hi
    return limit


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    la, lb, k = len(a), len(b), 0
    while k < limit:
        m = min(limit, k + _BLOCK)
        if a[la - m : la - k] != b[lb - m : lb - k]:
            while m - k > 1:
                mid = (k + m) // 2
                if a[la - mid : la - k] == b[lb - mid : lb - k]:
                    k = mid
                else:
                    m = mid
            return k
        k = m
    return limit


def changed_manifest_rows(new_text: bytes, old_text: bytes) -> list[tuple[int, dict]] | None:
    """(row index, new row) for each manifest row whose line changed since ``old_text``.

    ``old_text`` holds one record per line (see ``stages.bom.encode_manifest``; checked
    when the state was saved). Only the span between the texts' common prefix and common
    suffix is split into lines, and only changed lines are decoded. None when the texts
    cannot be compared row by row: a different row count, a changed line that is not one
    whole record, or a changed path or type (inode ids may move; the caller plans in
    general then).
    """
    if new_text == old_text:
        return []
    if not new_text.startswith(b"[\n") or not new_text.endswith(b"\n]\n"):
        return None
    start = _common_prefix(new_text, old_text, min(len(new_text), len(old_text)))
    k = _common_suffix(new_text, old_text, min(len(new_text), len(old_text)) - start)
    first = new_text.rfind(b"\n", 0, start) + 1
    new_end = new_text.find(b"\n", len(new_text) - k) if k else len(new_text)
    old_end = len(old_text) - (len(new_text) - new_end)
    new, old = new_text[first:new_end].split(b"\n"), old_text[first:old_end].split(b"\n")
    if len(new) != len(old):
        return None
    row0 = new_text.count(b"\n", 0, first) - 1  # line 0 is "["
    last_row = old_text.count(b"\n") - 3
    out = []
    for i in itertools.compress(range(len(new)), map(operator.ne, new, old)):
        row_index, line = row0 + i, new[i]
        if not 0 <= row_index <= last_row or line.endswith(b",") == (row_index == last_row):
            return None
        try:
            row = json.loads(line[:-1] if row_index != last_row else line)
            was = json.loads(old[i][:-1] if row_index != last_row else old[i])
        except ValueError:
            return None
        if type(row) is not dict or (row.get("path"), row.get("type")) != (was["path"], was["type"]):
            return None
        out.append((row_index, row))
    return out


def manifest_lines_are_rows(text: bytes, rows: Sequence) -> bool:
    """True when ``text`` (which decodes to ``rows``) holds exactly one row per line."""
    lines = text.split(b"\n")
    if len(lines) != len(rows) + 3 or lines[0] != b"[" or lines[-2:] != [b"]", b""]:
        return False
    try:
        return all(json.loads(line[:-1] if line.endswith(b",") else line) == row
                   for line, row in zip(lines[1:-2], rows, strict=True))
    except ValueError:
        return False


def rename_protected(path: str, new_name: str) -> bytes:
    """Rewrite node 0 of an integrity-only protected file for a new clean name; new MAC.

    Only the metadata node holds the name; its data and MHT nodes do not depend on it.
    """
    detach(path)  # may be a hard link into the local store
    fd = os.open(path, os.O_RDWR)
    try:
        node = bytearray(os.pread(fd, NODE_SIZE, 0))
        if len(node) != NODE_SIZE or _PLAIN.unpack_from(node)[0] != FILE_ID or node[94] != 1:
            raise ValueError(f"{path}: not an integrity-only protected file")
        raw = new_name.encode()
        if len(raw) >= MAX_NAME - 1:
            raise ValueError("name too long")
        node[PLAIN_SIZE : PLAIN_SIZE + MAX_NAME] = raw.ljust(MAX_NAME, b"\0")
        body = bytes(node[PLAIN_SIZE : PLAIN_SIZE + ENCRYPTED_PART_SIZE])
        mac = _ZERO_AEAD.encrypt(ZERO_IV, b"", body)
        node[77:93] = mac
        os.pwrite(fd, bytes(node[: PLAIN_SIZE + ENCRYPTED_PART_SIZE]), 0)
        return mac
    finally:
        os.close(fd)


@dataclass
class Plan:
    """What to do per new inode id: keep in place, take another old file, or write fresh."""

    keep: dict[int, bytes] = field(default_factory=dict)  # id -> mac (file already right)
    move: dict[int, int] = field(default_factory=dict)  # new id -> old id (rename + node 0)
    copy: dict[int, int] = field(default_factory=dict)  # new id -> old id (copy + node 0)
    write: list[int] = field(default_factory=list)  # new ids written from content
    delete: list[int] = field(default_factory=list)  # old ids no longer needed


def make_plan(state: PackState | None, new_content: dict[int, str], new_ids: list[int]) -> Plan:
    """Decide per inode how to get its protected file, re-using old ones by content."""
    plan = Plan()
    if state is None:
        plan.write = list(new_ids)
        return plan
    old_ids = allocate_ids(len(state))
    old_pos = {i: p for p, i in enumerate(old_ids)}
    by_content: dict[str, list[int]] = {}
    for p, i in enumerate(old_ids):
        by_content.setdefault(state.content(p), []).append(i)
    claimed: set[int] = set()
    for i in new_ids:
        pos = old_pos.get(i)
        if pos is not None and state.content(pos) == new_content[i]:
            plan.keep[i] = state.mac(pos)
            claimed.add(i)
    pending = []
    for i in new_ids:
        if i in plan.keep:
            continue
        donors = by_content.get(new_content[i])
        if not donors:
            plan.write.append(i)
            continue
        free = next((j for j in donors if j not in claimed), None)
        if free is not None:
            plan.move[i] = free
            claimed.add(free)
        else:
            pending.append((i, donors[0]))
    for i, j in pending:
        plan.copy[i] = j
    plan.delete = [i for i in old_ids if i not in claimed]
    return plan
