"""Make an image directory match a plan, touching only what differs.

The plan already holds the final tree (for ``sync``) or the operations to replay on top of
what is in the image (without ``sync``, copy_bom's behaviour: stale files survive). Files
whose bytes already match are left alone, so their mtimes stay and downstream content-hash
caches see no change. New bytes go to a temporary name in the same directory and are renamed
into place. The walk never follows a symlink inside the image, so nothing outside the image
root is ever written.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import shutil
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from occlum_rules.atomic_write import AtomicFile, detach, replace_with_symlink
from occlum_rules.core.digests import (
    StampSink,
    chunk_buffer,
    file_stamp_fields,
    sha256_file,
    stat_stamp,
)
from occlum_rules.errors import UserError

from .elf_deps import read_elf
from .plan import Plan, run_op
from .schema import EXIT_COPY_FILE, EXIT_MKDIR_OR_COPY_DIR
from .vtree import EXISTING, VDir, VFile, VLink, VTree

_CHUNK = 1 << 20
ELF_MAGIC = b"\x7fELF"


@dataclass
class ApplyResult:
    written: list[str] = field(default_factory=list)  # image paths (re)written or created
    unchanged: list[str] = field(default_factory=list)  # files left alone (same bytes)
    removed: list[str] = field(default_factory=list)  # paths deleted by --sync
    manifest: list[dict] = field(default_factory=list)  # see manifest.image_manifest
    sources_read: dict[str, str] = field(default_factory=dict)  # host file -> sha256 copied or compared


def scan_image(root: str | os.PathLike[str]) -> VTree:
    """The current image as a model, so copy_bom's operations can be replayed on top of it."""
    tree = VTree()
    root_path = os.fspath(root)
    if not os.path.isdir(root_path):
        return tree
    tree.root = VDir(stat.S_IMODE(os.stat(root_path).st_mode), EXISTING)

    def rec(path: str, vdir: VDir) -> None:
        with os.scandir(path) as it:
            for de in it:
                st = de.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    child = VDir(stat.S_IMODE(st.st_mode), EXISTING)
                    vdir.children[de.name] = child
                    rec(de.path, child)
                elif stat.S_ISLNK(st.st_mode):
                    vdir.children[de.name] = VLink(os.readlink(de.path), EXISTING)
                else:
                    vdir.children[de.name] = VFile(de.path, stat.S_IMODE(st.st_mode), EXISTING)

    rec(root_path, tree.root)
    return tree


def desired_tree(plan: Plan, root: str | os.PathLike[str], sync: bool) -> VTree:
    if sync:
        return plan.tree
    tree = scan_image(root)
    for op in plan.ops:
        run_op(tree, op)
    return tree


def _remove(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
        os.chmod(path, 0o700)
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _same_bytes(src: str, dst: str, size: int) -> tuple[bool, str]:
    """Compare two files; returns (equal, sha256 of src)."""
    h = hashlib.sha256()
    same = True
    with open(src, "rb") as a, open(dst, "rb") as b:
        while True:
            x = a.read(_CHUNK)
            if not x:
                break
            h.update(x)
            if same and b.read(len(x)) != x:
                same = False
        if same and b.read(1):
            same = False
    return same, h.hexdigest()


@dataclass
class Copied:
    sha256: str
    size: int
    elf: bool  # starts with the ELF magic (only then is it worth parsing)
    source_st: os.stat_result | None  # the source's stat if unchanged from open to end


def _copy_into(fin: io.RawIOBase, fd: int, h: Any) -> tuple[int, bool]:
    size, head = 0, b""
    buf = chunk_buffer()
    while n := fin.readinto(buf):
        if size < 4:
            head += buf[:min(n, 4)].tobytes()
        h.update(buf[:n])
        view = buf[:n]
        while view:
            view = view[os.write(fd, view):]
        size += n
    return size, head[:4] == ELF_MAGIC


def _write_file(src: str, dst_dir: str, name: str, mode: int, new: bool) -> Copied:
    """Copy ``src`` to ``dst_dir/name``, hashing on the way.

    ``new``: nothing is at that name, so the copy is made there directly: one directory
    operation per file instead of two (create a temporary, rename it), and creating entries
    is what a 20k-file image costs most on a busy disk. The action's record is gone while it
    runs, so a copy cut short is compared and redone by the next run. Otherwise a temporary
    name is renamed over the old file."""
    h = hashlib.sha256()
    dst = os.path.join(dst_dir, name)
    with open(src, "rb", buffering=0) as fin:
        before = os.fstat(fin.fileno())
        fd = -1
        if new:
            try:
                fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                pass
        if fd >= 0:
            try:
                size, elf = _copy_into(fin, fd, h)
                os.fchmod(fd, mode)
                st = os.stat(src)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(dst)
                raise
            os.close(fd)
        else:
            with AtomicFile(dst, mode=mode, makedirs=False) as fout:
                assert fout.fd is not None
                size, elf = _copy_into(fin, fout.fd, h)
                st = os.stat(src)
                os.utime(fout.fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    return Copied(h.hexdigest(), size, elf, st if stat_stamp(st) == stat_stamp(before) else None)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_mode)


COPY_BATCH = 64  # files per task: the pool's own cost is paid once per batch, not per file


def copy_threads() -> int:
    """Threads that copy new image files. Creating a file is work the kernel does on the
    calling thread (on ext4 without a journal, right after a big deletion, seconds of CPU
    per 20k files looking past recently deleted inodes), and a second thread overlaps it:
    20k files (1 GiB) took 3.0 s on two threads against 10.1 s on one after a deletion,
    15-25 % less with none; in memory (tmpfs) the second thread cost 18 %
    (``bench/copy_methods.py``, README "Benchmarks"). Reading, hashing and writing release
    the GIL."""
    return min(4, os.cpu_count() or 1)


class _CopyJob(NamedTuple):
    node: VFile
    dst_dir: str
    name: str
    full: str
    rel: str
    new: bool


def _copy_batch(jobs: list[_CopyJob]) -> list[tuple[Copied, os.stat_result]]:
    done = []
    for job in jobs:
        copied = _write_file(job.node.src, job.dst_dir, job.name, job.node.mode, job.new)
        done.append((copied, os.lstat(job.full)))
    return done


class _Copies:
    """New image files copied on worker threads in batches, each finished (recorded in the
    digest cache, the stamps and the manifest) on the caller's thread, in queue order."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int,
                 finish: Callable[[_CopyJob, Copied, os.stat_result], None]):
        self.pool = pool
        self.finish = finish
        self._batch: list[_CopyJob] = []
        self._pending: collections.deque[tuple[Future, list[_CopyJob]]] = collections.deque()
        self._limit = 2 * threads

    def add(self, job: _CopyJob) -> None:
        self._batch.append(job)
        if len(self._batch) >= COPY_BATCH:
            self._submit()

    def _submit(self) -> None:
        self._pending.append((self.pool.submit(_copy_batch, self._batch), self._batch))
        self._batch = []
        while len(self._pending) > self._limit:  # a bounded queue: errors surface early
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        future, jobs = self._pending.popleft()
        for job, (copied, st) in zip(jobs, future.result()):
            self.finish(job, copied, st)

    def drain(self) -> None:
        """Every queued copy made and finished (a failed one raises here)."""
        if self._batch:
            self._submit()
        while self._pending:
            self._finish_oldest()


class _Applier:
    def __init__(self, root: str, sync: bool, result: ApplyResult, pool: ThreadPoolExecutor,
                 threads: int, digests=None,
                 needed_by_digest: dict[str, list[str] | None] | None = None,
                 stamps: StampSink | None = None, stamp_cut: int = 0):
        self.root = root
        self.copies = _Copies(pool, threads, self._copied)
        self.stamps = stamps
        self.stamp_cut = stamp_cut
        self.needed_by_digest = needed_by_digest
        self.sync = sync
        self.result = result
        self.digests = digests
        self.dir_modes: list[tuple[str, int]] = []
        self._prefix = os.path.join(root, "") if root not in ("", ".") and "/." not in root \
            and "//" not in root and not root.endswith("/") else "\0"

    def same_file(self, src: str, dst: str, size: int, src_st: os.stat_result | None = None,
                  dst_st: os.stat_result | None = None) -> tuple[bool, str]:
        """(equal, sha256 of src). With a stat-keyed digest cache (the build's), unchanged
        files cost the stats the caller already made instead of reading both copies."""
        if self.digests is None:
            return _same_bytes(src, dst, size)
        digest = self.digests.digest(src, src_st)
        return self.digests.digest(dst, dst_st) == digest, digest

    def holds(self, node: VFile, full: str, st: os.stat_result) -> str | None:
        """The sha256 of ``node``'s bytes if the regular file ``full`` (stat ``st``) already
        holds them, else None. The stamp planning took of the source, when the digest cache
        knows it, answers without a stat of the source: a one-file rebuild of a 20k-file
        image made that stat for every file."""
        if (node.stamp and self.digests is not None
                and st.st_size == file_stamp_fields(node.stamp)[2]):
            known = self.digests.known_at(node.src, node.stamp)
            if known is not None:
                return known if self.digests.digest(full, st) == known else None
        src_st = _source_stat(node.src)
        if st.st_size != src_st.st_size:
            return None
        same, digest = self.same_file(node.src, full, src_st.st_size, src_st, st)
        return digest if same else None

    def hash_file(self, path: str) -> str:
        return self.digests.digest(path) if self.digests is not None else sha256_file(path)

    def rel(self, path: str) -> str:
        if path.startswith(self._prefix):  # paths are built by joining names onto the root
            return path[len(self._prefix):]
        r = os.path.relpath(path, self.root)
        return "." if r == "." else r

    def entry(self, rel: str, **kw) -> None:
        self.result.manifest.append({"path": rel, **kw})

    def stamp(self, full: str, st: os.stat_result | None) -> None:
        """The path's stamp as it is left (``st`` None: stat it now)."""
        if self.stamps is not None:
            self.stamps[full[self.stamp_cut:]] = _stamp(st or os.lstat(full))

    def sync_dir(self, path: str, vdir: VDir) -> None:
        st = os.stat(path)
        if not st.st_mode & stat.S_IWUSR or not st.st_mode & stat.S_IXUSR:
            os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        self.dir_modes.append((path, vdir.mode))
        self.entry(self.rel(path), type="dir", mode=vdir.mode)
        existing = {}
        with os.scandir(path) as it:
            for de in it:
                existing[de.name] = de.stat(follow_symlinks=False)
        prefix = path if path.endswith("/") else path + "/"
        for name in sorted(vdir.children, key=os.fsencode):
            child = vdir.children[name]
            full = prefix + name
            st_child = existing.get(name)
            if isinstance(child, VDir):
                if st_child is not None and not stat.S_ISDIR(st_child.st_mode):
                    os.unlink(full)
                    st_child = None
                if st_child is None:
                    os.mkdir(full, 0o700)
                    self.result.written.append(self.rel(full))
                self.sync_dir(full, child)
            elif isinstance(child, VLink):
                if st_child is not None and stat.S_ISLNK(st_child.st_mode) and os.readlink(full) == child.target:
                    self.stamp(full, st_child)
                else:
                    if st_child is not None and stat.S_ISDIR(st_child.st_mode):
                        _remove(full)
                    replace_with_symlink(child.target, full)
                    self.result.written.append(self.rel(full))
                    self.stamp(full, None)
                self.entry(self.rel(full), type="symlink", mode=0o777, target=str(child.target))
            else:
                self.sync_file(path, name, full, child, st_child)
        if self.sync:
            for name in sorted(set(existing) - set(vdir.children)):
                full = os.path.join(path, name)
                _remove(full)
                self.result.removed.append(self.rel(full))

    def sync_file(self, path: str, name: str, full: str, node: VFile,
                  st: os.stat_result | None) -> None:
        rel = self.rel(full)
        if node.origin == EXISTING and os.path.abspath(node.src) == os.path.abspath(full):
            digest = self.hash_file(full)
            self.result.unchanged.append(rel)
            st = os.lstat(full)
            self.stamp(full, st)
            self._record_file(rel, full, node.mode, st.st_size, digest, elf=True)
            return
        held = self.holds(node, full, st) if st is not None and stat.S_ISREG(st.st_mode) else None
        if held is not None and st is not None:
            size = st.st_size
            if stat.S_IMODE(st.st_mode) != node.mode:
                detach(full)  # when it is also a store blob (and maybe other outputs)
                os.chmod(full, node.mode)
                st = None  # its mode: stat it again
            self.result.unchanged.append(rel)
            self.stamp(full, st)
            self.result.sources_read[node.src] = held
            self._record_file(rel, full, node.mode, size, held, elf=True)
            return
        _source_stat(node.src)  # a missing source is named as one, not as a write error
        if st is not None and stat.S_ISDIR(st.st_mode):
            _remove(full)
            st = None
        self.result.written.append(rel)
        self.copies.add(_CopyJob(node, path, name, full, rel, new=st is None))

    def _copied(self, job: _CopyJob, copied: Copied, written: os.stat_result) -> None:
        if self.digests is not None:
            self.digests.remember(job.full, copied.sha256, written)
            if copied.source_st is not None:  # an input: not read again to key it
                self.digests.remember(job.node.src, copied.sha256, copied.source_st)
        self.stamp(job.full, written)
        self.result.sources_read[job.node.src] = copied.sha256
        self._record_file(job.rel, job.full, job.node.mode, copied.size, copied.sha256,
                          copied.elf)

    def _record_file(self, rel: str, full: str, mode: int, size: int, digest: str,
                     elf: bool) -> None:
        """The file's manifest item; ``elf`` False: known not to be one (not opened)."""
        item = {"path": rel, "type": "file", "mode": mode, "size": size, "sha256": digest}
        known = self.needed_by_digest
        if known is not None and digest in known:
            needed = known[digest]
        else:
            needed = _needed(full) if elf else None
        if needed is not None:
            item["needed"] = needed
        self.result.manifest.append(item)


def _source_stat(src: str) -> os.stat_result:
    try:
        return os.stat(src)
    except OSError as exc:
        raise UserError(f"cannot read {src}: {exc.strerror}", exit_code=EXIT_COPY_FILE) from None


def tree_entries_of_image(manifest: list[dict]) -> list[dict]:
    """What ``core.digests.tree_entries`` says of the image :func:`apply_plan` made, from
    its manifest: the same dicts, reshaped in place (no DT_NEEDED, no mode on a link, no
    root entry) and put in the walk's order (siblings by name, each directory before what
    it holds). Only for a manifest that is already written: it is one no longer."""
    entries = []
    for item in manifest:
        if not item["path"]:
            continue
        item.pop("needed", None)
        if item["type"] == "symlink":
            del item["mode"]
        entries.append(item)
    entries.sort(key=lambda e: e["path"].split("/"))
    return entries


def _needed(path: str) -> list[str] | None:
    info = read_elf(path)
    return None if info is None else list(info.needed)


def _needed_by_digest(manifest: list[dict] | None) -> dict[str, list[str] | None] | None:
    """sha256 -> DT_NEEDED list (None: not an ELF we read) from an earlier image manifest."""
    if not isinstance(manifest, list):
        return None
    known: dict[str, list[str] | None] = {}
    for item in manifest:
        if isinstance(item, dict) and item.get("type") == "file" and isinstance(item.get("sha256"), str):
            needed = item.get("needed")
            if needed is None or (isinstance(needed, list) and all(isinstance(n, str) for n in needed)):
                known[item["sha256"]] = needed
    return known


def _refuse_to_sync_over_inputs(plan: Plan, root: str) -> None:
    """--sync deletes what the plan does not produce: never let that hit the plan's own inputs.

    Directories are resolved once each, and each is listed once to learn which of its
    names are links (the entries' types come with the listing); a file is resolved on its
    own only when it is a link. A BOM copying a whole tree has thousands of inputs in a few
    directories, and a system call per input was a tenth of a one-file rebuild."""
    real_root = os.path.realpath(root)
    inside = real_root.rstrip("/") + "/"
    dirs: dict[str, tuple[str, set[str] | None]] = {}
    for path in plan.host_inputs:
        head, name = os.path.split(os.path.abspath(path))
        known = dirs.get(head)
        if known is None:
            known = dirs[head] = (os.path.realpath(head), _links_in(head))
        real_dir, links = known
        if links is not None:
            link = name in links
        else:
            try:
                link = stat.S_ISLNK(os.lstat(path).st_mode)
            except OSError:
                link = True  # let realpath decide what it names
        real = os.path.realpath(path) if link or name in ("", ".", "..") else os.path.join(real_dir, name)
        if real == real_root or real.startswith(inside):
            raise UserError(f"refusing to sync the image: it contains input file {path}, which "
                            "--sync would delete", where=root, exit_code=EXIT_MKDIR_OR_COPY_DIR)


def _links_in(directory: str) -> set[str] | None:
    """The names of the links in ``directory``; None when it cannot be listed."""
    try:
        with os.scandir(directory) as it:
            return {entry.name for entry in it if entry.is_symlink()}
    except OSError:
        return None


def apply_plan(plan: Plan, root: str | os.PathLike[str], sync: bool = True,
               digests=None, previous_manifest: list[dict] | None = None,
               stamps: StampSink | None = None, stamp_cut: int = 0) -> ApplyResult:
    """Bring ``root`` to the planned state and return what changed plus the image manifest.

    ``digests`` is an optional stat-keyed digest cache (``digest(path)``, ``remember(path,
    digest)``), such as the build engine's; without it files are compared byte for byte.
    ``previous_manifest`` (the last run's) lends the DT_NEEDED of files whose sha256 it
    lists, so unchanged files are not opened to read their ELF headers again.
    ``stamps`` receives every path's (size, mtime, mode) as apply leaves it, under its path
    less ``stamp_cut`` characters, as ``core.digests.tree_entries`` gives them: with
    :func:`tree_entries_of_image`, the build engine's description of the image without a
    second walk of it.
    """
    root_s = os.fspath(root)
    if sync:
        _refuse_to_sync_over_inputs(plan, root_s)
    tree = desired_tree(plan, root_s, sync)
    result = ApplyResult()
    try:
        if os.path.lexists(root_s) and not os.path.isdir(root_s):
            raise UserError("image root exists and is not a directory", where=root_s,
                            exit_code=EXIT_MKDIR_OR_COPY_DIR)
        Path(root_s).mkdir(parents=True, exist_ok=True)
        threads = copy_threads()
        with ThreadPoolExecutor(threads, thread_name_prefix="copy_bom") as pool:
            applier = _Applier(root_s, sync, result, pool, threads, digests,
                               _needed_by_digest(previous_manifest), stamps, stamp_cut)
            applier.sync_dir(root_s, tree.root)
            applier.copies.drain()
        for path, mode in reversed(applier.dir_modes):
            st = os.lstat(path)
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)
                st = os.lstat(path)
            if path != root_s:  # a tree's description leaves out its root
                applier.stamp(path, st)
    except OSError as exc:
        raise UserError(f"cannot write the image: {exc}", where=root_s, exit_code=EXIT_COPY_FILE) from None
    result.manifest.sort(key=lambda e: e["path"].encode())
    for item in result.manifest:
        if item["path"] == ".":
            item["path"] = ""
    result.manifest.sort(key=lambda e: e["path"].encode())
    return result
