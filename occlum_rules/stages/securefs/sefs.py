"""SEFS images: pack a directory into ``__ROOT`` (``sefs-cli zip``), in full or incrementally.

A full pack writes a fresh ``__ROOT`` beside the old one and swaps it in; an incremental
pack (integrity-only, with a valid state file) edits ``__ROOT`` in place after deleting
the state, so an interrupted pack is never mistaken for a good one.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import io
import itertools
import json
import os
import shutil
import stat
import struct
import time
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from occlum_rules.atomic_write import publish
from occlum_rules.core.digests import (
    DigestCache,
    StampSink,
    file_stamp,
    file_stamp_fields,
    sha256_file,
)
from occlum_rules.errors import UserError
from occlum_rules.stages.bom.manifest import encode_manifest
from occlum_rules.stages.manifest_rows import ManifestRows
from occlum_rules.stages.securefs import incremental
from occlum_rules.stages.securefs.mactext import mac_text, parse_mac_text
from occlum_rules.stages.securefs.pfs import (
    FdSink,
    patch_integrity_only,
    protect_stream,
    write_protected,
)
from occlum_rules.stages.securefs.primitives import RandomSource
from occlum_rules.stages.securefs.progress import Progress
from occlum_rules.stages.securefs.sefs_format import (
    BLOCK_SIZE,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    METADATA_NAME,
    ROOT_ID,
    allocate_ids,
    dir_entries,
    inode_file_name,
    inode_record,
    metadata_content,
)
from occlum_rules.stages.securefs.sefs_verify import TreeEntry, unpack_image, verify_image
from occlum_rules.stages.securefs.tree import (
    _HEX64,
    Node,
    _norm_path,
    scan_tree,
    tree_from_manifest,
)


@dataclass(frozen=True)
class PackResult:
    mac_text: str
    rewritten: int  # inode files whose content was MACed anew
    reused: int  # inode files kept, or renamed/copied with only node 0 rewritten
    inodes: int = 0
    bytes: int = 0  # user bytes MACed in this run
    incremental: bool = False
    reason: str = ""  # why a full pack was done
    tree: list[dict] | None = None  # __ROOT described, when pack_image was asked to and could

    @property
    def root_mac(self) -> builtins.bytes:  # `bytes` is a field here
        return parse_mac_text(self.mac_text)


def _content_bytes(node: Node) -> bytes | None:
    """In-memory content of symlinks and directories (files are streamed from disk)."""
    if node.kind == KIND_SYMLINK:
        return node.target
    if node.kind == KIND_DIR:
        parent = node.parent if node.id != ROOT_ID else ROOT_ID
        return dir_entries(node.id, parent, [(c.id, c.name, c.kind) for c in node.entries])
    return None


def _open_new(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def _write_inode(
    out_path: str,
    node: Node,
    src_dir: str,
    content: bytes | None,
    key: bytes | None,
    rng: RandomSource | None,
    hasher=None,
) -> bytes:
    """Write one inode's protected file; returns its MAC (``hasher`` sees the file bytes)."""
    name = inode_file_name(node.id)
    if content is not None:
        out = _open_new(out_path)
        try:
            return protect_stream(
                FdSink(out), name, io.BytesIO(content).read, len(content), key=key, rng=rng
            )
        finally:
            os.close(out)
    src_path = src_dir + node.rel  # src_dir ends with a separator
    try:
        fd = os.open(src_path, os.O_RDONLY)
    except FileNotFoundError:
        raise UserError("file vanished while the image was packed", src_path) from None
    except OSError as exc:
        raise UserError(f"cannot read file: {exc.strerror}", src_path) from None
    try:
        out = _open_new(out_path)
        try:
            # The size came from the scan (or manifest); protect_stream fails if the file
            # now holds fewer or more bytes, so a change during the build cannot slip in.
            return protect_stream(
                FdSink(out), name, lambda n: os.read(fd, n), node.size, key=key, rng=rng,
                on_data=hasher.update if hasher is not None else None, where=src_path,
            )
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _hash_file(path: str) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise UserError(f"cannot read file: {exc.strerror}", path) from None


class _InodeRecords(Mapping[int, bytes]):
    """Each node's inode record by id, made when ``metadata_content`` copies it into the
    metadata file's bytes: a dict of them held 80k records of 112 bytes (~17 MiB with
    their objects) on a 4 GiB image."""

    def __init__(self, by_id: dict[int, Node], macs: dict[int, bytes]):
        self._by_id = by_id
        self._macs = macs

    def __getitem__(self, inode_id: int) -> bytes:
        n = self._by_id[inode_id]
        return inode_record(
            n.id, n.kind, n.mode, 0 if n.kind == KIND_DIR else n.size, n.nlinks,
            len(n.entries) + 2 if n.kind == KIND_DIR else 0, self._macs[n.id],
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)


def _sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_image(
    src_dir: str | os.PathLike,
    dst_root_dir: str | os.PathLike,
    *,
    key: bytes | None = None,
    state_path: str | os.PathLike | None = None,
    manifest: Sequence[dict] | bytes | None = None,
    progress: bool | None = None,
    summary: bool = False,
    rng: RandomSource | None = None,
    label: str = "sefs pack",
    digest_cache: DigestCache | None = None,
    stamps: StampSink | None = None,
    stamp_cut: int = 0,
) -> PackResult:
    """Pack ``src_dir`` into the SEFS image directory ``dst_root_dir`` (the ``__ROOT``).

    With ``state_path``, the previous pack's state (if intact and matching) is used to
    rewrite only what changed, and a new state is saved; ``manifest`` (list of
    ``{path,type,mode,size,sha256,target}``, or the BOM stage's manifest file bytes; trusted
    to describe ``src_dir``) replaces the directory walk and hashing. Pass the file bytes
    when you have them: an incremental pack then decodes only the rows that changed.
    ``progress``: None = live on a TTY for big images, True/False to force; ``summary``
    prints one line at the end. Returns the root MAC text and how many inode files were
    rewritten or re-used.

    With ``digest_cache`` (the build's stat-keyed one) and ``stamps``, an in-place pack also
    describes ``__ROOT`` as ``core.digests.tree_entries`` would (``PackResult.tree``, the
    stamps under each path less ``stamp_cut`` characters), from the stats it took anyway.
    """
    if not os.path.isdir(src_dir):
        raise UserError("image directory does not exist", os.fspath(src_dir))
    src = os.path.join(os.fspath(src_dir), "")  # ends with a separator: paths are src + rel
    dst = os.path.abspath(os.fspath(dst_root_dir))
    started_ns = time.time_ns()
    if key is not None and len(key) != 16:
        raise UserError("an image key is 16 bytes")
    want_state = state_path is not None and key is None
    describe = None
    if digest_cache is not None and stamps is not None:
        describe = functools.partial(_describe_root, dst, digests=digest_cache, stamps=stamps,
                                     stamp_cut=stamp_cut)

    state, reason = None, "full pack requested"
    if state_path is not None and key is not None:
        # Never used or written for encrypted images. An existing state (of an earlier
        # integrity-only image, stored in clear anyway) is left alone: it stops matching
        # once this pack replaces __ROOT, and matches again if that image is restored.
        reason = "encrypted images are always packed in full"
    elif state_path is not None and want_state and os.path.isdir(dst):
        state, reason = incremental.load_state(state_path, dst)
    elif want_state:
        reason = "no previous image"
    if want_state:
        # From here on the old state no longer describes __ROOT.
        incremental.discard_state(state_path)

    text, canonical = None, False  # canonical: one row per line by construction
    if isinstance(manifest, (bytes, bytearray, memoryview)):
        text, manifest = bytes(manifest), None
    elif manifest is not None and want_state:
        text, canonical = encode_manifest(manifest), True
    if state is not None and text is not None:
        change = _manifest_changes(state, text)
        if change is not None:
            state.manifest = change[1]
            done = _apply_in_place(src, dst, state, change[0], state_path, progress, summary, label,
                                   describe)
            if done is not None:
                return done
            state = None
            reason = "previous image metadata does not match its pack state"

    if text is not None and manifest is None:
        manifest = _decode_manifest(text)
        canonical = isinstance(manifest, ManifestRows)  # its rows are the text's lines
    nodes = tree_from_manifest(manifest) if manifest is not None else scan_tree(src)
    if state is not None and manifest is None:
        scanned = _scan_changes(state, nodes, src)
        if scanned is not None:
            state.stats, state.scan_started_ns = scanned[1], started_ns
            state.manifest = None  # its text no longer describes what was packed
            done = _apply_in_place(src, dst, state, scanned[0], state_path, progress, summary,
                                   label, describe)
            if done is not None:
                return done
            state = None
            reason = "previous image metadata does not match its pack state"
    content: dict[int, bytes | None] = {n.id: _content_bytes(n) for n in nodes}
    digests: dict[int, str] = {}
    if want_state:
        for n in nodes:
            c = content[n.id]
            if c is not None:
                digests[n.id] = _sha_hex(c)
            elif n.sha256 is not None:
                digests[n.id] = n.sha256
            elif state is not None:
                pos = state.by_path.get(n.rel)
                if (pos is not None and state.kinds[pos] == KIND_FILE
                        and incremental.stat_proves_unchanged(state, pos, n.stat_key)):
                    digests[n.id] = state.content(pos)  # same stat key, not racy: same bytes
                else:
                    digests[n.id] = n.sha256 = _hash_file(os.path.join(src, n.rel))

    ids = [n.id for n in nodes]
    plan = incremental.make_plan(state, digests, ids)
    by_id = {n.id: n for n in nodes}
    total_bytes = sum(by_id[i].size for i in plan.write if by_id[i].kind == KIND_FILE)
    prog = Progress(label, len(plan.write), total_bytes, live=progress, summary=summary)

    if state is None:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _remove_leftovers(dst)
        work = f"{dst}.tmp-{os.getpid()}"
        os.mkdir(work)
    else:
        work = dst
    macs: dict[int, bytes] = dict(plan.keep)
    try:
        if state is not None:
            old_path = lambda j: os.path.join(dst, inode_file_name(j))  # noqa: E731
            new_path = lambda i: os.path.join(dst, inode_file_name(i) + ".new")  # noqa: E731
            for i, j in plan.copy.items():
                shutil.copyfile(old_path(j), new_path(i))
                macs[i] = incremental.rename_protected(new_path(i), inode_file_name(i))
            for i, j in plan.move.items():
                # an existing inode file given its new inode number (then re-MACed by
                # rename_protected): a rename of a file already written, not a write
                os.rename(old_path(j), new_path(i))
                macs[i] = incremental.rename_protected(new_path(i), inode_file_name(i))
            for j in plan.delete:
                os.unlink(old_path(j))
        out_prefix = os.path.join(work, "")
        out_suffix = ".new" if state is not None else ""
        for i in plan.write:
            n = by_id[i]
            out = out_prefix + inode_file_name(i) + out_suffix
            h = hashlib.sha256() if want_state and i not in digests else None
            macs[i] = _write_inode(out, n, src, content[i], key, rng, h)
            if h is not None:
                digests[i] = n.sha256 = h.hexdigest()
            prog.advance(1, n.size if n.kind == KIND_FILE else 0)
        if state is not None:
            for i in itertools.chain(plan.copy, plan.move, plan.write):
                publish(os.path.join(dst, inode_file_name(i) + ".new"),
                        os.path.join(dst, inode_file_name(i)))

        records = _InodeRecords(by_id, macs)
        root_mac = _write_metadata(work, metadata_content(records), key, rng)
        if state is None:
            _swap_in(work, dst)
    except BaseException:
        if state is None:
            shutil.rmtree(work, ignore_errors=True)
        raise

    if state_path is not None and want_state:
        kept = None
        if manifest is not None:
            if text is None or (not canonical
                                and not incremental.manifest_lines_are_rows(text, manifest)):
                text = encode_manifest(manifest)
            perm = array("i", [-1]) * len(manifest)
            for pos, n in enumerate(nodes):
                if n.src_index >= 0:
                    perm[n.src_index] = pos
            kept = {"text": text, "perm": perm.tobytes()}
        stats = array("q")
        for n in nodes:
            stats.extend(n.stat_key or (0, 0, 0, 0, 0))
        incremental.save_state(state_path, incremental.PackState(
            root_mac, started_ns, incremental.join_paths([n.rel for n in nodes]),
            bytes(n.kind for n in nodes),
            array("H", [n.mode for n in nodes]), array("q", [n.size for n in nodes]),
            bytearray(bytes.fromhex("".join(digests[i] for i in ids))),
            bytearray(b"".join(macs[i] for i in ids)), stats, kept, _stamps_of(dst, len(ids)),
        ))
    prog.finish("incremental" if state is not None else "")
    return PackResult(
        mac_text=mac_text(root_mac),
        rewritten=len(plan.write),
        reused=len(plan.keep) + len(plan.move) + len(plan.copy),
        inodes=len(nodes),
        bytes=prog.bytes,
        incremental=state is not None,
        reason="" if state is not None else reason,
    )


def _write_metadata(work: str, meta: bytes, key: bytes | None, rng: RandomSource | None) -> bytes:
    tmp = os.path.join(work, METADATA_NAME + ".new")
    fd = _open_new(tmp)
    try:
        root_mac = write_protected(fd, METADATA_NAME, io.BytesIO(meta), len(meta), key=key, rng=rng)
    finally:
        os.close(fd)
    publish(tmp, os.path.join(work, METADATA_NAME))
    return root_mac


def _decode_manifest(text: bytes) -> Sequence[dict]:
    """The manifest's rows: decoded one at a time when the text has one per line (what the
    BOM stage writes: a 4 GiB image's 80k rows decoded at once were ~70 MiB), else whole."""
    rows = ManifestRows.parse(text)
    if rows is not None:
        return rows
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise UserError(f"not valid JSON ({exc})", "image manifest") from None
    if type(rows) is not list:
        raise UserError("expected a JSON list of entries", "image manifest")
    return rows


def _manifest_changes(state, text: bytes) -> tuple[list, dict] | None:
    """In-place work from the manifest rows that changed since the last pack.

    None when paths or types changed (ids may shift: the caller plans in general) or a
    changed row is malformed (the general path reports it properly).
    """
    if state.manifest is None:
        return None
    rows = incremental.changed_manifest_rows(text, state.manifest["text"])
    if rows is None:
        return None
    perm = array("i")
    perm.frombytes(state.manifest["perm"])
    work = []
    for j, item in rows:
        pos = perm[j]
        if pos < 0:
            continue
        kind = state.kinds[pos]
        mode = item.get("mode", 0o755 if kind == KIND_DIR else 0o644)
        if type(mode) is not int:
            return None
        if kind == KIND_FILE:
            size, sha = item.get("size"), item.get("sha256")
            if type(size) is not int or size < 0 or type(sha) is not str or not _HEX64.fullmatch(sha):
                return None
            new: tuple[int, str, bytes | None] | None = (
                (size, sha, None) if (size, sha) != (state.sizes[pos], state.content(pos)) else None)
        elif kind == KIND_SYMLINK:
            target = item.get("target")
            if not isinstance(target, str):
                return None
            raw = os.fsencode(target)
            digest = _sha_hex(raw)
            new = (len(raw), digest, raw) if digest != state.content(pos) else None
            mode = 0o777
        else:
            new = None
        work.append((pos, mode & 0o777, new, _norm_path(item, j)[0]))
    return work, {"text": text, "perm": state.manifest["perm"]}


def _scan_changes(state, nodes: list[Node], src: str) -> tuple[list, array] | None:
    """In-place work from a directory scan whose paths and kinds match the last pack.

    Stat keys are compared column-wise; only files whose key moved, or that changed too
    close to the previous scan to trust their timestamps, are hashed.
    """
    if len(nodes) != len(state) or [n.rel for n in nodes] != state.paths:
        return None
    if bytes(n.kind for n in nodes) != state.kinds:
        return None
    zero = (0, 0, 0, 0, 0)
    stats = array("q")
    for n in nodes:
        stats.extend(n.stat_key or zero)
    suspects: set[int] = set()
    old = state.stats
    if stats != old:
        for c in range(5):
            a, b = stats[c::5], old[c::5]
            if a != b:
                suspects.update(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    limit = state.scan_started_ns - incremental.RACY_MARGIN_NS
    mt, ct = stats[1::5], stats[2::5]
    if nodes and (max(mt) >= limit or max(ct) >= limit):
        suspects.update(i for i in range(len(nodes)) if mt[i] >= limit or ct[i] >= limit)
    modes = array("H", [n.mode for n in nodes])
    if modes != state.modes:
        suspects.update(i for i, (x, y) in enumerate(zip(modes, state.modes, strict=True)) if x != y)
    suspects.update(i for i, n in enumerate(nodes) if n.kind == KIND_SYMLINK)
    work = []
    for pos in sorted(suspects):
        n = nodes[pos]
        new: tuple[int, str, bytes | None] | None = None
        if n.kind == KIND_FILE:
            if n.stat_key is None or not incremental.stat_proves_unchanged(state, pos, n.stat_key):
                sha = _hash_file(src + n.rel)
                if (n.size, sha) != (state.sizes[pos], state.content(pos)):
                    new = (n.size, sha, None)
        elif n.kind == KIND_SYMLINK and n.target is not None:
            digest = _sha_hex(n.target)
            if digest != state.content(pos):
                new = (n.size, digest, n.target)
        if new is not None or n.mode != state.modes[pos]:
            work.append((pos, n.mode, new, n.rel))
    return work, stats


def _apply_in_place(src, dst, state, work, state_path, progress, summary, label,
                    describe=None) -> PackResult | None:
    """Rewrite changed inode files in place and patch their records into the old metadata.

    Every inode keeps its id, so directories and all other files stay byte-identical.
    ``work`` holds (position, mode, None | (size, sha256 hex, symlink target), path). The
    metadata file is patched node by node (load_state checked its root MAC).
    """
    ids = allocate_ids(len(state))
    rewrite = [(pos, new, rel) for pos, _m, new, rel in work if new is not None]
    total = sum(new[0] for pos, new, _rel in rewrite if state.kinds[pos] == KIND_FILE)
    prog = Progress(label, len(rewrite), total, live=progress, summary=summary)
    macs = state.macs
    for pos, new, rel in rewrite:
        i = ids[pos]
        node = Node(i, rel, b"", state.kinds[pos], 0, 0)
        node.size = new[0]
        out = os.path.join(dst, inode_file_name(i) + ".new")
        macs[16 * pos : 16 * pos + 16] = _write_inode(out, node, src, new[2], None, None, None)
        state.sizes[pos] = new[0]
        state.contents[32 * pos : 32 * pos + 32] = bytes.fromhex(new[1])
        prog.advance(1, new[0] if node.kind == KIND_FILE else 0)
    for pos, _new, _rel in rewrite:
        name = inode_file_name(ids[pos])
        publish(os.path.join(dst, name + ".new"), os.path.join(dst, name))
    edits = []
    for pos, mode, _new, _rel in work:
        state.modes[pos] = mode
        off = ids[pos] * BLOCK_SIZE
        if state.kinds[pos] != KIND_DIR:
            edits.append((off, struct.pack("<Q", state.sizes[pos])))
        edits.append((off + 12, struct.pack("<H", mode)))
        edits.append((off + 96, bytes(macs[16 * pos : 16 * pos + 16])))
    try:
        state.root_mac = patch_integrity_only(os.path.join(dst, METADATA_NAME), edits)
    except (UserError, ValueError):
        return None
    incremental.restamp(state, dst, (pos for pos, _new, _rel in rewrite))
    incremental.save_state(state_path, state)
    prog.finish("incremental")
    return PackResult(
        mac_text=mac_text(state.root_mac), rewritten=len(rewrite), reused=len(state) - len(rewrite),
        inodes=len(state), bytes=prog.bytes, incremental=True,
        tree=describe(state) if describe is not None else None,
    )


def _stamps_of(dst: str, n: int) -> array:
    stamps = incremental.root_stamps(dst, n)
    if stamps is None:  # something wrote into __ROOT while it was packed
        raise UserError("the image directory changed while it was packed", dst)
    return stamps


def _describe_root(dst: str, state: incremental.PackState, *, digests: DigestCache,
                   stamps: StampSink, stamp_cut: int) -> list[dict]:
    """What ``core.digests.tree_entries`` says of ``__ROOT`` after an in-place pack, from
    the stats load_state and the pack took (so the engine need not walk its 20k files
    again): every file's stamp, and its sha256 from the stat-keyed digest cache."""
    found = state.found
    assert found is not None
    ids = allocate_ids(len(state))
    names = [inode_file_name(i) for i in ids] + [METADATA_NAME]
    prefix = os.path.join(dst, "")
    entries = []
    for pos in sorted(range(len(names)), key=names.__getitem__):
        path, stamp, mode = prefix + names[pos], found.stamps[pos], found.modes[pos]
        _dev, _ino, size, mtime_ns, _ctime = file_stamp_fields(stamp)
        stamps[path[stamp_cut:]] = (size, mtime_ns, mode)
        digest = digests.known_at(path, stamp)
        if digest is None:  # a file the pack rewrote: hashed here, as the engine would
            st = os.lstat(path)
            if file_stamp(st) != stamp:
                raise UserError("the image directory changed while it was packed", dst)
            digest = digests.digest(path, st)
        entries.append({"path": names[pos], "type": "file", "mode": stat.S_IMODE(mode),
                        "size": size, "sha256": digest})
    return entries


def _remove_leftovers(dst: str) -> None:
    """Remove work and old directories that a killed pack left beside ``dst``: their names
    carry the dead process's id, so nothing else would ever clean them, and they would
    end up in the instance (and its release package)."""
    parent, base = os.path.split(dst)
    for name in os.listdir(parent):
        for tag in (".tmp-", ".old-"):
            if name.startswith(base + tag) and name[len(base) + len(tag):].isdigit():
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _swap_in(work: str, dst: str) -> None:
    """Replace ``dst`` by the finished ``work`` directory (old one removed afterwards).

    Whole directories are swapped here, which the atomic writer (one file) does not do."""
    if os.path.lexists(dst):
        old = f"{dst}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
        os.rename(work, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(work, dst)

__all__ = [
    "PackResult", "TreeEntry", "mac_text", "pack_image", "parse_mac_text", "unpack_image",
    "verify_image",
]
