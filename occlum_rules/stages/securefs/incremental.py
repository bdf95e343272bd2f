"""State of the previous pack, and the plan that turns it into the new image.

The state file (JSON, written beside ``__ROOT`` after a successful pack and deleted before
any change to ``__ROOT``) records, per inode: path, id, kind, mode, size, the SHA-256 of
its *content* (file bytes, symlink target, or directory entries), its MAC, and the
source file's stat key. Because the SEFS layer names an inode's protected file after
its id, and in integrity-only mode the id enters a protected file only through the name
inside its metadata node (node keys are zero, data is stored in clear), a file whose
content is unchanged but whose id moved can be reused by renaming it and rewriting node 0
— its data and MHT nodes are byte-identical. So an incremental pack re-MACs only content
that changed, plus small metadata nodes, and the result equals a full pack byte for byte.

Encrypted images are always packed in full: keeping plaintext hashes beside an encrypted
image would let anyone with the output directory confirm guesses about its contents, and
the output is random anyway (fresh nonces), so nothing downstream can be reused.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from occlum_rules.stages.securefs.sefs_format import METADATA_NAME, inode_file_name

STATE_FORMAT = "occlum-rules/sefs-pack-state"
STATE_VERSION = 1

_ZERO_AEAD = AESGCM(ZERO_KEY)


@dataclass
class StateEntry:
    id: int
    path: str
    kind: int
    mode: int
    size: int
    content: bytes  # sha256 of the inode's PFS content
    mac: bytes
    stat_key: tuple | None


# A recorded stat key proves "unchanged" only for files whose last change was well before
# the scan that recorded it: timestamps are coarse (kernel tick, or seconds on some file
# systems), so a same-size rewrite right after a scan could keep every stat field equal.
RACY_MARGIN_NS = 2_000_000_000


@dataclass
class PackState:
    root_mac: bytes
    entries: list[StateEntry]
    scan_started_ns: int = 0
    by_id: dict[int, StateEntry] = field(init=False)
    by_path: dict[str, StateEntry] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {e.id: e for e in self.entries}
        self.by_path = {e.path: e for e in self.entries}


def _payload(state: PackState) -> dict:
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "mode": "integrity-only",
        "root_mac": state.root_mac.hex(),
        "scan_started_ns": state.scan_started_ns,
        # one list per inode keeps the file small and quick to parse for 100k inodes
        "inodes": [
            [e.id, e.path, e.kind, e.mode, e.size, e.content.hex(), e.mac.hex(),
             list(e.stat_key) if e.stat_key else None]
            for e in state.entries
        ],
    }


def _checksum(payload: dict) -> str:
    blob = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def save_state(path: str | os.PathLike, state: PackState) -> None:
    payload = _payload(state)
    payload["checksum"] = _checksum(payload)
    dst = os.fspath(path)
    tmp = f"{dst}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, separators=(",", ":"), sort_keys=True)
    os.replace(tmp, dst)


def discard_state(path: str | os.PathLike | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def load_state(path: str | os.PathLike, root_dir: str) -> tuple[PackState | None, str]:
    """(state, "") when the state file is intact and matches ``root_dir``; else (None, why).

    Anything unexpected means "do a full pack": a wrong reuse would silently produce a wrong
    image, while a needless full pack only costs time.
    """
    try:
        with open(path) as f:
            payload = json.load(f)
    except FileNotFoundError:
        return None, "no previous pack state"
    except (OSError, ValueError) as exc:
        return None, f"unreadable pack state ({exc.__class__.__name__})"
    try:
        if not isinstance(payload, dict):
            return None, "malformed pack state"
        claimed = payload.pop("checksum", None)
        if payload.get("format") != STATE_FORMAT or payload.get("version") != STATE_VERSION:
            return None, "pack state from another version"
        if payload.get("mode") != "integrity-only":
            return None, "pack state of an encrypted image"
        if claimed != _checksum(payload):
            return None, "pack state checksum mismatch"
        entries = [
            StateEntry(
                int(i), str(p), int(k), int(m), int(s), bytes.fromhex(c), bytes.fromhex(mac),
                tuple(sk) if sk else None,
            )
            for i, p, k, m, s, c, mac, sk in payload["inodes"]
        ]
        state = PackState(
            bytes.fromhex(payload["root_mac"]), entries, int(payload["scan_started_ns"])
        )
    except (KeyError, TypeError, ValueError):
        return None, "malformed pack state"
    # The state must describe exactly what is in __ROOT now.
    try:
        names = set(os.listdir(root_dir))
    except OSError:
        return None, "previous image is missing"
    expected = {inode_file_name(e.id) for e in entries} | {METADATA_NAME}
    if names != expected:
        return None, "previous image does not match its pack state (files differ)"
    try:
        if mac_of_protected(os.path.join(root_dir, METADATA_NAME)) != state.root_mac:
            return None, "previous image does not match its pack state (root MAC differs)"
    except Exception:  # noqa: BLE001 - any problem reading it means "not reusable"
        return None, "previous image metadata unreadable"
    return state, ""


def stat_proves_unchanged(state: PackState, old: StateEntry, stat_key: tuple | None) -> bool:
    """True when the file's stat key equals the recorded one and was not racy then."""
    if stat_key is None or old.stat_key != stat_key:
        return False
    _size, mtime_ns, ctime_ns = stat_key[:3]
    return max(mtime_ns, ctime_ns) < state.scan_started_ns - RACY_MARGIN_NS


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


def make_plan(state: PackState | None, new_content: dict[int, bytes], new_ids: list[int]) -> Plan:
    """Decide per inode how to get its protected file, re-using old ones by content."""
    plan = Plan()
    if state is None:
        plan.write = list(new_ids)
        return plan
    by_content: dict[bytes, list[int]] = {}
    for e in state.entries:
        by_content.setdefault(e.content, []).append(e.id)
    claimed: set[int] = set()
    for i in new_ids:
        old = state.by_id.get(i)
        if old is not None and old.content == new_content[i]:
            plan.keep[i] = old.mac
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
    plan.delete = [e.id for e in state.entries if e.id not in claimed]
    return plan
