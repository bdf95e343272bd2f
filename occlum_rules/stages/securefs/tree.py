"""The image tree as SEFS sees it: inodes in ``sefs-cli zip`` order, from disk or a manifest.

``zip_dir`` walks depth-first, each directory's entries sorted by raw name bytes, and
allocates an id when it creates an entry — so a subdirectory's subtree is numbered before
its next sibling. Only regular files, directories and symlinks are stored (``lstat``);
FIFOs, sockets and devices are skipped; hard links become independent inodes.

That order is also the order of whole paths compared as byte strings with ``/`` mapped to
NUL (a name never contains NUL), which lets a manifest be ordered with one sort.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence

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
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Node:
    """One inode to be: where it comes from and what SEFS records about it."""

    __slots__ = ("id", "rel", "name", "kind", "mode", "size", "parent", "target", "sha256",
                 "stat_key", "children", "src_index")

    def __init__(self, id: int, rel: str, name: bytes, kind: int, mode: int, parent: int):
        self.id = id
        self.rel = rel  # path relative to the image root, '/'-separated; '' for the root
        self.name = name
        self.kind = kind
        self.mode = mode
        self.size = 0  # file length or symlink target length
        self.parent = parent
        self.target: bytes | None = None  # symlink target
        self.sha256: str | None = None  # hex digest of the file bytes, when known
        self.stat_key: tuple | None = None  # (size, mtime_ns, ctime_ns, ino, dev) of the source
        self.children: list[Node] | None = [] if kind == KIND_DIR else None
        self.src_index = -1  # position in the manifest it came from

    @property
    def entries(self) -> list[Node]:
        """A directory's children; asking a file or a link for them is a bug."""
        if self.children is None:
            raise ValueError(f"{self.rel!r} is not a directory")
        return self.children

    @property
    def nlinks(self) -> int:
        if self.kind != KIND_DIR:
            return 1
        return 2 + sum(1 for c in self.entries if c.kind == KIND_DIR)

    def __repr__(self) -> str:
        return f"Node({self.id}, {self.rel!r}, kind={self.kind})"


def _check_name(name: str, where: str) -> bytes:
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("file name is not valid UTF-8 (SEFS stores UTF-8 names)", where) from None
    if len(raw) > MAX_NAME_BYTES:
        raise UserError(f"file name is {len(raw)} bytes; SEFS allows at most 255", where)
    return raw


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
    root = Node(next(ids), "", b"", KIND_DIR, ROOT_MODE, ROOT_ID)
    nodes = [root]
    S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = stat.S_IFMT(0o170000), stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK

    def walk(dir_path: str, dir_node: Node) -> None:
        with os.scandir(dir_path) as it:
            entries = [(_check_name(e.name, e.path), e) for e in it]
        entries.sort(key=lambda t: t[0])
        prefix = dir_node.rel + "/" if dir_node.rel else ""
        children = dir_node.entries
        for raw, e in entries:
            st = e.stat(follow_symlinks=False)
            fmt = st.st_mode & S_IFMT
            if fmt == S_IFREG:
                kind = KIND_FILE
            elif fmt == S_IFDIR:
                kind = KIND_DIR
            elif fmt == S_IFLNK:
                kind = KIND_SYMLINK
            else:
                continue  # fifo, socket, device: sefs-cli skips them silently
            node = Node(next(ids), prefix + e.name, raw, kind, st.st_mode & 0o777, dir_node.id)
            children.append(node)
            nodes.append(node)
            if kind == KIND_FILE:
                node.size = st.st_size
                node.stat_key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
            elif kind == KIND_SYMLINK:
                node.target = os.fsencode(os.readlink(e.path))
                node.size = len(node.target)
            else:
                walk(e.path, node)

    try:
        walk(root_path, root)
    except OSError as exc:
        raise UserError(f"cannot scan the image: {exc.strerror}", exc.filename or root_path) from None
    return nodes


def _norm_path(item, i: int) -> tuple[str, str]:
    try:
        path = item["path"]
        kind_name = item["type"]
    except (KeyError, TypeError):
        raise UserError("entry needs 'path' and 'type'", f"image manifest entry {i}") from None
    if not isinstance(path, str):
        raise UserError("'path' must be a string", f"image manifest entry {i}")
    path = path.strip("/")
    if path.startswith("./"):
        path = path[2:]
    return path, kind_name


def tree_from_manifest(manifest: Sequence[dict]) -> list[Node]:
    """Inodes from a precomputed image manifest (no disk access).

    Each item: ``{path, type: file|dir|symlink, mode, size, sha256, target}``; paths are
    relative and '/'-separated; every directory but the root must be listed. Other
    ``type`` values (fifo, socket, ...) are skipped, as sefs-cli skips them.
    """
    keyed = []
    for i, item in enumerate(manifest):
        path, kind_name = _norm_path(item, i)
        if path in ("", ".") or kind_name not in KIND_BY_NAME:
            continue
        try:
            key = path.encode("utf-8").replace(b"/", b"\0")
        except UnicodeEncodeError:
            raise UserError("path is not valid UTF-8", f"image manifest entry {i}") from None
        keyed.append((key, i, path, kind_name))
    keyed.sort()
    ids = inode_ids()
    root = Node(next(ids), "", b"", KIND_DIR, ROOT_MODE, ROOT_ID)
    nodes = [root]
    dirs = {"": root}
    prev_key = None
    for key, i, path, kind_name in keyed:
        if key == prev_key:
            raise UserError(f"path {path!r} listed twice", "image manifest")
        prev_key = key
        parent_path, _, name = path.rpartition("/")
        parent = dirs.get(parent_path)
        if parent is None or name in (".", ".."):
            raise UserError(
                f"{path!r}: its directory {parent_path!r} is not listed (or the path is not normal)",
                "image manifest",
            )
        raw = _check_name(name, path) if len(name) > MAX_NAME_BYTES // 4 else name.encode()
        item = manifest[i]
        kind = KIND_BY_NAME[kind_name]
        mode = item.get("mode", 0o755 if kind == KIND_DIR else 0o644)
        if type(mode) is not int:
            raise UserError(f"bad mode for {path!r}", "image manifest")
        node = Node(next(ids), path, raw, kind, 0o777 if kind == KIND_SYMLINK else mode & 0o777, parent.id)
        node.src_index = i
        if kind == KIND_FILE:
            size, sha = item.get("size"), item.get("sha256")
            if type(size) is not int or size < 0 or type(sha) is not str or not _HEX64.fullmatch(sha):
                raise UserError(f"file {path!r} needs a size and a lowercase hex sha256", "image manifest")
            node.size = size
            node.sha256 = sha
        elif kind == KIND_SYMLINK:
            target = item.get("target")
            if not isinstance(target, str):
                raise UserError(f"symlink {path!r} needs a target", "image manifest")
            node.target = os.fsencode(target)
            node.size = len(node.target)
        else:
            dirs[path] = node
        parent.entries.append(node)
        nodes.append(node)
    return nodes
