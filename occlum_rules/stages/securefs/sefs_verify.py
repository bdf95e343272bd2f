"""Verify and unpack SEFS images (``sefs-cli unzip``), checking every MAC on the way.

Stricter than the LibOS: besides each protected file's MAC chain and each inode's
recorded MAC, the image may hold nothing the metadata does not account for, and every
directory must be well formed, so a flipped byte anywhere in ``__ROOT`` is reported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass

from occlum_rules.errors import UserError
from occlum_rules.stages.securefs.mactext import mac_text, parse_mac_text
from occlum_rules.stages.securefs.pfs import IntegrityError, ProtectedFileReader
from occlum_rules.stages.securefs.sefs_format import (
    KIND_DIR,
    KIND_FILE,
    KIND_NAMES,
    KIND_SYMLINK,
    METADATA_NAME,
    ROOT_ID,
    inode_file_name,
    parse_dir_entries,
    parse_metadata,
)


@dataclass(frozen=True)
class TreeEntry:
    path: str
    type: str  # file | dir | symlink
    mode: int
    size: int
    sha256: str | None = None  # files
    target: str | None = None  # symlinks


def _walk_image(
    root_dir: str,
    key: bytes | None,
    expected_mac: bytes | None,
    on_entry: Callable[[str, int, int, ProtectedFileReader | bytes], None],
) -> bytes:
    """Verify every MAC and the structure of an image, reporting entries in tree order."""
    meta_path = os.path.join(root_dir, METADATA_NAME)
    if not os.path.isdir(root_dir):
        raise UserError("SEFS image directory does not exist", root_dir)
    with ProtectedFileReader(meta_path, key=key, expected_name=METADATA_NAME) as r:
        meta = r.read_all()
        root_mac = r.header.mac
    if expected_mac is not None and root_mac != expected_mac:
        raise IntegrityError(
            f"root MAC is {mac_text(root_mac)}, expected {mac_text(expected_mac)}", root_dir
        )
    try:
        _groups, records = parse_metadata(meta)
    except ValueError as exc:
        raise IntegrityError(f"bad metadata: {exc}", meta_path) from None
    names = set(os.listdir(root_dir))
    expected_names = {inode_file_name(i) for i in records} | {METADATA_NAME}
    if names != expected_names:
        extra = sorted(names - expected_names)[:3]
        missing = sorted(expected_names - names)[:3]
        raise IntegrityError(f"image files differ from metadata (extra {extra}, missing {missing})", root_dir)
    for i, rec in records.items():
        size, kind, mode, nlinks, blocks, uid, gid, pad, times, fname, _mac = rec
        if kind not in KIND_NAMES or mode & ~0o777 or uid or gid or pad or times != bytes(48):
            raise IntegrityError(f"inode {i} has unexpected fields", meta_path)
        if fname != i.to_bytes(16, "little"):
            raise IntegrityError(f"inode {i} names the wrong file", meta_path)
    if ROOT_ID not in records or records[ROOT_ID][1] != KIND_DIR:
        raise IntegrityError("no root directory", meta_path)
    seen: set[int] = set()

    def open_inode(i: int) -> ProtectedFileReader:
        rd = ProtectedFileReader(
            os.path.join(root_dir, inode_file_name(i)), key=key, expected_name=inode_file_name(i)
        )
        if rd.header.mac != records[i][10]:
            rd.close()
            raise IntegrityError(f"inode {i}: file MAC does not match its inode record", root_dir)
        return rd

    def visit(i: int, parent: int, rel: str) -> None:
        seen.add(i)
        size, kind, mode, nlinks, blocks = records[i][:5]
        with open_inode(i) as rd:
            if kind == KIND_DIR:
                data = rd.read_all()
                try:
                    ents = parse_dir_entries(data)
                except ValueError as exc:
                    raise IntegrityError(f"directory {rel or '/'}: {exc}", root_dir) from None
                if (
                    size != 0 or len(ents) != blocks or len(ents) < 2
                    or ents[0] != (i, b".", KIND_DIR) or ents[1] != (parent, b"..", KIND_DIR)
                ):
                    raise IntegrityError(f"directory {rel or '/'} is malformed", root_dir)
                on_entry(rel, KIND_DIR, mode, b"")
            else:
                if rd.header.size != size or nlinks != 1 or blocks != 0:
                    raise IntegrityError(f"inode {i} size/links disagree with its record", root_dir)
                on_entry(rel, kind, mode, rd)
                return
        subdirs = 0
        names_seen = set()
        for cid, cname, ckind in ents[2:]:
            if cid in seen or cid not in records or records[cid][1] != ckind:
                raise IntegrityError(f"directory {rel or '/'}: bad entry {cname!r}", root_dir)
            if cname in names_seen or b"/" in cname or cname in (b".", b"..") or not cname:
                raise IntegrityError(f"directory {rel or '/'}: bad name {cname!r}", root_dir)
            names_seen.add(cname)
            try:
                cname_s = cname.decode("utf-8")
            except UnicodeDecodeError:
                raise IntegrityError(f"directory {rel or '/'}: non-UTF-8 name", root_dir) from None
            subdirs += ckind == KIND_DIR
            visit(cid, i, f"{rel}/{cname_s}" if rel else cname_s)
        if nlinks != 2 + subdirs:
            raise IntegrityError(f"directory {rel or '/'}: wrong link count", root_dir)

    visit(ROOT_ID, ROOT_ID, "")
    if seen != set(records):
        raise IntegrityError(f"{len(set(records) - seen)} inode(s) not reachable from the root", root_dir)
    return root_mac


def verify_image(
    root_dir: str | os.PathLike,
    key: bytes | None = None,
    *,
    expected_mac: bytes | str | None = None,
) -> list[TreeEntry]:
    """Check every MAC of an image; return its tree (root excluded) in SEFS order."""
    if isinstance(expected_mac, str):
        expected_mac = parse_mac_text(expected_mac)
    out: list[TreeEntry] = []

    def on_entry(rel, kind, mode, body):
        if not rel:
            return
        if kind == KIND_FILE:
            h = hashlib.sha256()
            n = 0
            for chunk in body.chunks():
                h.update(chunk)
                n += len(chunk)
            out.append(TreeEntry(rel, "file", mode, n, sha256=h.hexdigest()))
        elif kind == KIND_SYMLINK:
            t = body.read_all()
            out.append(TreeEntry(rel, "symlink", mode, len(t), target=os.fsdecode(t)))
        else:
            out.append(TreeEntry(rel, "dir", mode, 0))

    _walk_image(os.fspath(root_dir), key, expected_mac, on_entry)
    return out


def unpack_image(
    root_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    key: bytes | None = None,
    *,
    expected_mac: bytes | str | None = None,
) -> bytes:
    """``sefs-cli unzip``: verify the image and recreate its tree under a new ``out_dir``.

    Files are written as they are verified; if verification fails the partial output is
    removed, so a tree that exists was entirely authenticated. Returns the root MAC.
    """
    if isinstance(expected_mac, str):
        expected_mac = parse_mac_text(expected_mac)
    out = os.fspath(out_dir)
    try:
        os.mkdir(out)
    except FileExistsError:
        raise UserError("unzip target already exists", out) from None
    dir_modes: list[tuple[str, int]] = []

    def on_entry(rel, kind, mode, body):
        path = os.path.join(out, rel) if rel else out
        if kind == KIND_DIR:
            if rel:
                os.mkdir(path)
            dir_modes.append((path, mode))
        elif kind == KIND_FILE:
            with open(path, "wb") as f:
                for chunk in body.chunks():
                    f.write(chunk)
            os.chmod(path, mode)
        else:
            os.symlink(body.read_all(), path)

    try:
        mac = _walk_image(os.fspath(root_dir), key, expected_mac, on_entry)
    except BaseException:
        _rmtree_writable(out)
        raise
    for path, mode in reversed(dir_modes):
        if path != out:
            os.chmod(path, mode)
    return mac


def _rmtree_writable(path: str) -> None:
    def onerror(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
