"""SEFS on-disk records (rcore-fs-sefs as used by ``sefs-cli zip``): pure functions only.

An image is a directory of protected files: ``metadata`` (superblock, free bitmaps, one
112-byte DiskINode per 128-byte block) and one file per inode named by its id. See
``specs/sefs.md`` §2 for the layout this encodes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

BLOCK_SIZE = 128
BLOCKS_PER_GROUP = 1024
MAGIC = 0x2F8DBE2A
ROOT_ID = 2
METADATA_NAME = "metadata"

KIND_FILE = 1
KIND_DIR = 2
KIND_SYMLINK = 3
KIND_NAMES = {KIND_FILE: "file", KIND_DIR: "dir", KIND_SYMLINK: "symlink"}
KIND_BY_NAME = {v: k for k, v in KIND_NAMES.items()}

MAX_NAME_BYTES = 255
DIRENT = struct.Struct("<I256sI")  # id, name (NUL padded), type
INODE = struct.Struct("<QIHHIIII48s16s16s")  # size,type,mode,nlinks,blocks,uid,gid,pad,times,fname,mac
SUPER = struct.Struct("<IIII")  # magic, blocks, unused_blocks, groups
INODE_RECORD_SIZE = INODE.size  # 112
assert INODE_RECORD_SIZE == 112 and DIRENT.size == 264

_ZERO_TIMES = bytes(48)


def disk_filename(inode_id: int) -> bytes:
    return inode_id.to_bytes(16, "little")


def inode_file_name(inode_id: int) -> str:
    """Name of an inode's protected file inside ``__ROOT`` (id as u128 LE, hex)."""
    return inode_id.to_bytes(16, "little").hex()


def inode_id_of_name(name: str) -> int | None:
    if len(name) != 32:
        return None
    try:
        raw = bytes.fromhex(name)
    except ValueError:
        return None
    if raw.hex() != name:  # only the lowercase rendering is ours
        return None
    return int.from_bytes(raw, "little")


def inode_ids() -> Iterator[int]:
    """Ids in allocation order: first free block, groups appended when full."""
    yield from range(ROOT_ID, BLOCKS_PER_GROUP)
    group = 1
    while True:
        base = group * BLOCKS_PER_GROUP
        yield base
        yield from range(base + 2, base + BLOCKS_PER_GROUP)
        group += 1


def allocate_ids(count: int) -> list[int]:
    """The first ``count`` ids of :func:`inode_ids`, built a group at a time."""
    ids = list(range(ROOT_ID, min(BLOCKS_PER_GROUP, ROOT_ID + count)))
    group = 1
    while len(ids) < count:
        base = group * BLOCKS_PER_GROUP
        ids.append(base)
        ids.extend(range(base + 2, base + min(BLOCKS_PER_GROUP, count - len(ids) + 2)))
        group += 1
    return ids


def groups_for(count: int) -> int:
    """Block groups in use after ``count`` inodes (root included) were allocated."""
    if count <= BLOCKS_PER_GROUP - 2:
        return 1
    return 1 + -(-(count - (BLOCKS_PER_GROUP - 2)) // (BLOCKS_PER_GROUP - 1))


def dir_entries(self_id: int, parent_id: int, children: list[tuple[int, bytes, int]]) -> bytes:
    """Directory content: ``.``, ``..``, then (id, name, kind) of the children in order."""
    parts = [DIRENT.pack(self_id, b".", KIND_DIR), DIRENT.pack(parent_id, b"..", KIND_DIR)]
    parts += [DIRENT.pack(cid, name, kind) for cid, name, kind in children]
    return b"".join(parts)


def parse_dir_entries(content: bytes) -> list[tuple[int, bytes, int]]:
    if len(content) % DIRENT.size:
        raise ValueError("directory content is not a whole number of entries")
    out = []
    for off in range(0, len(content), DIRENT.size):
        cid, raw, kind = DIRENT.unpack_from(content, off)
        name = raw.rstrip(b"\0")
        if raw[len(name) :].count(0) != len(raw) - len(name) or b"\0" in name:
            raise ValueError("malformed directory entry name")
        out.append((cid, name, kind))
    return out


def inode_record(
    inode_id: int, kind: int, mode: int, size: int, nlinks: int, blocks: int, mac: bytes
) -> bytes:
    return INODE.pack(
        size, kind, mode, nlinks, blocks, 0, 0, 0, _ZERO_TIMES, disk_filename(inode_id), mac
    )


def metadata_content(records: Mapping[int, bytes]) -> bytes:
    """The ``metadata`` file's logical bytes for inode records keyed by id."""
    count = len(records)
    groups = groups_for(count)
    blocks = groups * BLOCKS_PER_GROUP
    unused = blocks - (groups + 1) - count
    last_bitmap_end = ((groups - 1) * BLOCKS_PER_GROUP + 2) * BLOCK_SIZE
    max_id = max(records) if records else 0
    size = max(last_bitmap_end, max_id * BLOCK_SIZE + INODE_RECORD_SIZE, SUPER.size)
    buf = bytearray(size)
    SUPER.pack_into(buf, 0, MAGIC, blocks, unused, groups)
    used: list[bytearray] = [bytearray(BLOCK_SIZE) for _ in range(groups)]
    used[0][0] |= 0b11  # superblock and bitmap of group 0
    for g in range(1, groups):
        used[g][0] |= 0b10  # bitmap block of group g
    for inode_id, rec in records.items():
        off = inode_id * BLOCK_SIZE
        buf[off : off + INODE_RECORD_SIZE] = rec
        g, i = divmod(inode_id, BLOCKS_PER_GROUP)
        used[g][i >> 3] |= 1 << (i & 7)
    for g in range(groups):
        free = bytes(b ^ 0xFF for b in used[g])  # the bitmap stores FREE bits
        off = (g * BLOCKS_PER_GROUP + 1) * BLOCK_SIZE
        buf[off : off + BLOCK_SIZE] = free
    return bytes(buf)


def parse_metadata(content: bytes) -> tuple[int, dict[int, tuple]]:
    """(groups, {id: unpacked DiskINode}) from metadata bytes; raises ValueError if malformed."""
    if len(content) < SUPER.size:
        raise ValueError("metadata too short for a superblock")
    magic, blocks, unused, groups = SUPER.unpack_from(content, 0)
    if magic != MAGIC or groups < 1 or blocks != groups * BLOCKS_PER_GROUP:
        raise ValueError("bad superblock")
    records: dict[int, tuple] = {}
    padded = content + bytes(-len(content) % BLOCK_SIZE)
    for g in range(groups):
        off = (g * BLOCKS_PER_GROUP + 1) * BLOCK_SIZE
        bitmap = padded[off : off + BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0")
        for i in range(BLOCKS_PER_GROUP):
            blk = g * BLOCKS_PER_GROUP + i
            free = (bitmap[i >> 3] >> (i & 7)) & 1
            fixed = blk == 0 or i == 1
            if fixed:
                if free:
                    raise ValueError(f"reserved block {blk} marked free")
                continue
            if not free:
                rec = padded[blk * BLOCK_SIZE : blk * BLOCK_SIZE + INODE_RECORD_SIZE]
                if len(rec) != INODE_RECORD_SIZE:
                    raise ValueError(f"inode {blk} lies past the end of metadata")
                records[blk] = INODE.unpack(rec)
    if unused != blocks - (groups + 1) - len(records):
        raise ValueError("superblock free count disagrees with the bitmaps")
    if content != metadata_content({i: INODE.pack(*r) for i, r in records.items()}):
        raise ValueError("metadata holds bytes outside its records")
    return groups, records
