"""The image tree as SEFS sees it: inodes in ``sefs-cli zip`` order, from disk or a manifest.

``zip_dir`` walks depth-first, each directory's entries sorted by raw name bytes, and
allocates an id when it creates an entry — so a subdirectory's subtree is numbered before
its next sibling. Only regular files, directories and symlinks are stored (``lstat``);
FIFOs, sockets and devices are skipped; hard links become independent inodes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.sefs_format import (
    KIND_BY_NAME,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MAX_NAME_BYTES,
    ROOT_ID,
    inode_ids,
)

ROOT_MODE = 0o755


@dataclass(eq=False)
class Node:
    id: int
    rel: str  # path relative to the image root, '/'-separated; '' for the root
    name: bytes
    kind: int
    mode: int
    size: int = 0  # file length or symlink target length
    parent: int = ROOT_ID
    target: bytes | None = None  # symlink target
    sha256: bytes | None = None  # of the file bytes (files), when known
    stat_key: tuple | None = None  # (size, mtime_ns, ctime_ns, ino, dev) of the source file
    children: list[Node] = field(default_factory=list)

    @property
    def nlinks(self) -> int:
        if self.kind != KIND_DIR:
            return 1
        return 2 + sum(1 for c in self.children if c.kind == KIND_DIR)


def _check_name(name: str, where: str) -> bytes:
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("file name is not valid UTF-8 (SEFS stores UTF-8 names)", where) from None
    if len(raw) > MAX_NAME_BYTES:
        raise UserError(f"file name is {len(raw)} bytes; SEFS allows at most 255", where)
    return raw


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def scan_tree(src_dir: str | os.PathLike) -> list[Node]:
    """Inodes of ``src_dir`` in id order (index i holds the i-th allocated id)."""
    root_path = os.fspath(src_dir)
    try:
        st = os.stat(root_path)
    except FileNotFoundError:
        raise UserError("image directory does not exist", root_path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError("image source is not a directory", root_path)
    ids = inode_ids()
    root = Node(next(ids), "", b"", KIND_DIR, ROOT_MODE, parent=ROOT_ID)
    nodes = [root]

    def walk(dir_path: str, dir_node: Node) -> None:
        try:
            with os.scandir(dir_path) as it:
                entries = [(_check_name(e.name, e.path), e) for e in it]
        except PermissionError:
            raise UserError("cannot read directory (permission denied)", dir_path) from None
        entries.sort(key=lambda t: t[0])
        for raw, e in entries:
            st = e.stat(follow_symlinks=False)
            mode = st.st_mode
            rel = f"{dir_node.rel}/{e.name}" if dir_node.rel else e.name
            if stat.S_ISREG(mode):
                kind = KIND_FILE
            elif stat.S_ISDIR(mode):
                kind = KIND_DIR
            elif stat.S_ISLNK(mode):
                kind = KIND_SYMLINK
            else:
                continue  # fifo, socket, device: sefs-cli skips them silently
            node = Node(next(ids), rel, raw, kind, mode & 0o777, parent=dir_node.id)
            dir_node.children.append(node)
            nodes.append(node)
            if kind == KIND_FILE:
                node.size = st.st_size
                node.stat_key = _stat_key(st)
            elif kind == KIND_SYMLINK:
                node.target = os.fsencode(os.readlink(e.path))
                node.size = len(node.target)
            else:
                walk(e.path, node)

    walk(root_path, root)
    return nodes


def tree_from_manifest(manifest: list[dict]) -> list[Node]:
    """Inodes from a precomputed image manifest (no disk access).

    Each item: ``{path, type: file|dir|symlink, mode, size, sha256, target}``; paths are
    relative and '/'-separated; every directory but the root must be listed. Other
    ``type`` values (fifo, socket, ...) are skipped, as sefs-cli skips them.
    """
    by_parent: dict[str, list[tuple[bytes, dict]]] = {}
    dirs = {""}
    for i, item in enumerate(manifest):
        where = f"image manifest entry {i}"
        try:
            path = str(item["path"]).strip("/")
            kind_name = item["type"]
        except (KeyError, TypeError):
            raise UserError("entry needs 'path' and 'type'", where) from None
        if path.startswith("./"):
            path = path[2:]
        if path in ("", "."):
            continue
        if kind_name not in KIND_BY_NAME:
            continue
        parent, _, name = path.rpartition("/")
        if name in ("", ".", "..") or any(p in ("", ".", "..") for p in parent.split("/") if parent):
            raise UserError(f"bad path {path!r}", where)
        raw = _check_name(name, path)
        by_parent.setdefault(parent, []).append((raw, item))
        if kind_name == "dir":
            if path in dirs:
                raise UserError(f"directory {path!r} listed twice", where)
            dirs.add(path)
    for parent in by_parent:
        if parent not in dirs:
            raise UserError(f"manifest lists entries under {parent!r} but not the directory itself")
    ids = inode_ids()
    root = Node(next(ids), "", b"", KIND_DIR, ROOT_MODE, parent=ROOT_ID)
    nodes = [root]
    seen: set[str] = set()

    def build(dir_node: Node) -> None:
        entries = sorted(by_parent.get(dir_node.rel, ()), key=lambda t: t[0])
        for raw, item in entries:
            rel = f"{dir_node.rel}/{raw.decode()}" if dir_node.rel else raw.decode()
            if rel in seen:
                raise UserError(f"path {rel!r} listed twice", "image manifest")
            seen.add(rel)
            kind = KIND_BY_NAME[item["type"]]
            try:
                mode = int(item.get("mode", 0o644 if kind == KIND_FILE else 0o755))
            except (TypeError, ValueError):
                raise UserError(f"bad mode for {rel!r}", "image manifest") from None
            if kind == KIND_SYMLINK:
                mode = 0o777
            node = Node(next(ids), rel, raw, kind, mode & 0o777, parent=dir_node.id)
            if kind == KIND_FILE:
                try:
                    node.size = int(item["size"])
                    node.sha256 = bytes.fromhex(item["sha256"])
                except (KeyError, TypeError, ValueError):
                    raise UserError(f"file {rel!r} needs size and sha256", "image manifest") from None
                if len(node.sha256) != 32:
                    raise UserError(f"bad sha256 for {rel!r}", "image manifest")
            elif kind == KIND_SYMLINK:
                target = item.get("target")
                if not isinstance(target, str):
                    raise UserError(f"symlink {rel!r} needs a target", "image manifest")
                node.target = os.fsencode(target)
                node.size = len(node.target)
            dir_node.children.append(node)
            nodes.append(node)
            if kind == KIND_DIR:
                build(node)

    build(root)
    return nodes


def node_source(src_dir: str, node: Node) -> str:
    return os.path.join(src_dir, node.rel)
