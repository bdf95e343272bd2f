"""State of the previous pack, and how to turn the old ``__ROOT`` into the new one.

The state file (written beside ``__ROOT`` after a successful integrity-only pack, deleted
before such a pack changes ``__ROOT``) records, per inode in id order: path, kind, mode,
size, the SHA-256 of its *content* (file bytes, symlink target, or directory entries),
its MAC and the source file's stat key — plus, for manifest-driven packs, the manifest's
own columns. It is trusted only while ``__ROOT`` still holds exactly the image it
describes (same file names, same metadata MAC); otherwise the pack is a full one.

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

The state is stored as a few flat columns (``marshal`` of lists and bytes, after a
SHA-256 check of the whole file): loading 100k inodes then costs milliseconds, where a
JSON list of records costs a large share of an incremental pack.
"""

from __future__ import annotations

import hashlib
import itertools
import marshal
import os
import sys
from array import array
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
from occlum_rules.stages.securefs.sefs_format import METADATA_NAME, inode_file_name, inode_ids

STATE_MAGIC = b"occlum-rules/sefs-pack-state/3\n"
MANIFEST_FIELDS = ("path", "type", "mode", "size", "sha256", "target")

# A recorded stat key proves "unchanged" only for files whose last change was well before
# the scan that recorded it: timestamps are coarse (kernel tick, or seconds on some file
# systems), so a same-size rewrite right after a scan could keep every stat field equal.
RACY_MARGIN_NS = 2_000_000_000

_ZERO_AEAD = AESGCM(ZERO_KEY)


def ids_for(count: int) -> list[int]:
    return list(itertools.islice(inode_ids(), count))


@dataclass
class PackState:
    """Columns in inode-id order (position p holds the p-th allocated id)."""

    root_mac: bytes
    scan_started_ns: int
    paths: list[str]
    kinds: bytes
    modes: array  # 'H'
    sizes: array  # 'q'
    contents: bytearray  # sha256 of each inode's protected content, 32 bytes each
    macs: bytearray  # 16 bytes per inode
    stats: array  # 'q', 5 per inode: size, mtime_ns, ctime_ns, ino, dev (zeros: unknown)
    manifest: dict | None = None  # encoded manifest columns + "perm"
    root_dir_stat: tuple = ()  # (ino, mtime_ns, ctime_ns) of __ROOT after the pack
    _by_path: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

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


def dir_stat(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def save_state(path: str | os.PathLike, state: PackState) -> None:
    payload = marshal.dumps(
        {
            "python": list(sys.version_info[:2]),
            "root_mac": state.root_mac,
            "scan_started_ns": state.scan_started_ns,
            "paths": "\0".join(state.paths),
            "kinds": bytes(state.kinds),
            "modes": state.modes.tobytes(),
            "sizes": state.sizes.tobytes(),
            "contents": bytes(state.contents),
            "macs": bytes(state.macs),
            # manifest-driven packs have no stat keys: store nothing rather than zeros
            "stats": state.stats.tobytes() if any(state.stats) else b"",
            "manifest": state.manifest,
            "root_dir_stat": list(state.root_dir_stat),
        },
        4,
    )
    blob = STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    dst = os.fspath(path)
    tmp = f"{dst}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, dst)


def discard_state(path: str | os.PathLike | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _array(code: str, raw: bytes) -> array:
    a = array(code)
    a.frombytes(raw)
    return a


def load_state(path: str | os.PathLike, root_dir: str) -> tuple[PackState | None, str]:
    """(state, "") when the state file is intact and matches ``root_dir``; else (None, why).

    Anything unexpected means "do a full pack": a wrong re-use would silently produce a
    wrong image, while a needless full pack only costs time.
    """
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return None, "no previous pack state"
    except OSError as exc:
        return None, f"unreadable pack state ({exc.strerror})"
    head_len = len(STATE_MAGIC) + 65
    if not blob.startswith(STATE_MAGIC) or len(blob) < head_len:
        return None, "pack state from another version"
    digest = blob[len(STATE_MAGIC) : head_len - 1]
    payload = memoryview(blob)[head_len:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        return None, "pack state checksum mismatch"
    try:
        d = marshal.loads(payload)
        if d["python"] != list(sys.version_info[:2]):
            return None, "pack state written by another Python version"
        state = PackState(
            d["root_mac"], d["scan_started_ns"], d["paths"].split("\0"), d["kinds"],
            _array("H", d["modes"]), _array("q", d["sizes"]), bytearray(d["contents"]),
            bytearray(d["macs"]), _array("q", d["stats"] or bytes(40 * len(d["kinds"]))),
            d["manifest"], tuple(d["root_dir_stat"]),
        )
        n = len(state.paths)
        if not (len(state.kinds) == len(state.modes) == len(state.sizes) == n >= 1
                and len(state.contents) == 32 * n and len(state.macs) == 16 * n
                and len(state.stats) == 5 * n):
            return None, "malformed pack state"
    except (EOFError, ValueError, TypeError, KeyError):
        return None, "malformed pack state"
    # The state must describe exactly what is in __ROOT now. Adding, removing or renaming
    # an entry changes the directory's mtime/ctime; only if they moved, list it.
    try:
        unchanged_dir = dir_stat(root_dir) == state.root_dir_stat
        names = None if unchanged_dir else set(os.listdir(root_dir))
    except OSError:
        return None, "previous image is missing"
    if names is not None:
        expected = {inode_file_name(i) for i in ids_for(n)}
        expected.add(METADATA_NAME)
        if names != expected:
            return None, "previous image does not match its pack state (files differ)"
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


def _ints(values: list) -> bytes | None:
    """An int column as bytes (None -> -1); None if some value is not an int."""
    try:
        if None in values:
            values = [-1 if v is None else v for v in values]
        return array("q", values).tobytes()
    except (TypeError, OverflowError):
        return None


def _strs(values: list) -> str | None:
    """A str column, NUL-joined with None encoded as a lone SOH; None if not all str."""
    try:
        if None in values:
            values = ["\1" if v is None else v for v in values]
        return "\0".join(values)
    except TypeError:
        return None


def manifest_columns(manifest: list) -> dict | None:
    """The manifest's raw values as compact columns (None if it cannot be encoded so).

    The raw lists of the string columns are kept under ``"_raw"`` (not saved) so that
    :func:`changed_rows` only has to split the old side.
    """
    try:
        cols = {f: [m.get(f) for m in manifest] for f in MANIFEST_FIELDS}
    except AttributeError:
        return None
    enc = {
        "path": _strs(cols["path"]), "type": _strs(cols["type"]), "mode": _ints(cols["mode"]),
        "size": _ints(cols["size"]), "sha256": _strs(cols["sha256"]), "target": _strs(cols["target"]),
    }
    if any(v is None for v in enc.values()):
        return None
    # NUL separates the joined strings: a path or target holding one cannot be encoded
    if enc["path"].count("\0") != max(len(manifest) - 1, 0) or enc["target"].count("\0") != max(
        len(manifest) - 1, 0
    ):
        return None
    enc["_raw"] = {"sha256": cols["sha256"], "target": cols["target"]}
    return enc


def changed_rows(new: dict, old: dict) -> list[int] | None:
    """Manifest indices whose mode/size/sha256/target changed; None if paths or types did."""
    if new["path"] != old["path"] or new["type"] != old["type"]:
        return None
    changed: set[int] = set()
    for f in ("mode", "size"):
        if new[f] != old[f]:
            a, b = _array("q", new[f]), _array("q", old[f])
            changed.update(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    for f in ("sha256", "target"):
        if new[f] != old[f]:
            a = new["_raw"][f]
            if None in a:
                a = ["\1" if v is None else v for v in a]
            b = old[f].split("\0")
            changed.update(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return sorted(changed)


def rename_protected(path: str, new_name: str) -> bytes:
    """Rewrite node 0 of an integrity-only protected file for a new clean name; new MAC.

    Only the metadata node holds the name; its data and MHT nodes do not depend on it.
    """
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
    old_ids = ids_for(len(state))
    old_pos = {i: p for p, i in enumerate(old_ids)}
    by_content: dict[str, list[int]] = {}
    for p, i in enumerate(old_ids):
        by_content.setdefault(state.content(p), []).append(i)
    claimed: set[int] = set()
    for i in new_ids:
        p = old_pos.get(i)
        if p is not None and state.content(p) == new_content[i]:
            plan.keep[i] = state.mac(p)
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
