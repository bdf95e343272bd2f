"""The local content-addressed store: ``ac/<action key>`` → output manifest, ``cas/<sha256>`` → blob.

The layout mirrors the Bazel HTTP cache so the same keys work against a remote. Blobs are
written to a temporary name and renamed into place, so concurrent builds sharing one store
never see half a blob; every restore re-hashes the blob it uses, so a corrupted blob is never
used (it is deleted and the action re-runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from occlum_rules.atomic_write import AtomicFile, replace_with_hardlink, write_atomic
from occlum_rules.core.digests import CHUNK, content_stamp, sha256_file, stat_stamp
from occlum_rules.file_copy import kernel_copy


class CorruptBlob(Exception):
    """A blob's bytes no longer match its name."""


MAP_FROM = 1 << 20
HASH_BESIDE_FROM = 16 << 20  # a blob this big is hashed on a thread of its own while written
FETCHED_MODE = 0o444  # a blob fetched from a remote for no output file of known mode


def _copy_kernel(fd_in: int, fd_out: int, size: int) -> None:
    """Copy a blob in the kernel where it can (no sha256 on the way: the caller's stamp
    check vouches for the source); :func:`_copy_hashed` where it cannot."""
    if not kernel_copy(fd_in, fd_out, size):
        _copy_hashed(fd_in, fd_out)


def _copy_hashed(fd_in: int, fd_out: int) -> str:
    """Copy one file descriptor to another; the sha256 of what was copied.

    Big blobs are mapped, hashed and written from the mapping (no copy into Python
    objects); both hashing and writing release the GIL, so restores run on several threads,
    and a very big blob is hashed on a thread beside its own write: a 1 GB release package
    restored alone took 2.5-3.7 s hashed first and written after, 0.8-1.0 s so.
    """
    h = hashlib.sha256()
    size = os.fstat(fd_in).st_size
    if size >= MAP_FROM:
        with mmap.mmap(fd_in, 0, prot=mmap.PROT_READ) as mm:
            view = memoryview(mm)
            beside = None
            try:
                if size >= HASH_BESIDE_FROM:
                    beside = threading.Thread(target=h.update, args=(view,),
                                              name="blob-sha256", daemon=True)
                    beside.start()
                else:
                    h.update(view)
                done = 0
                while done < size:
                    done += os.write(fd_out, view[done:])
            finally:
                if beside is not None:
                    beside.join()  # the mapping outlives every reader of it
                view.release()
        return h.hexdigest()
    while chunk := os.read(fd_in, CHUNK):
        h.update(chunk)
        done = 0
        while done < len(chunk):
            done += os.write(fd_out, chunk[done:] if done else chunk)
    return h.hexdigest()


_GENERATION = "generation"


class LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._cas = str(self.root / "cas")
        self.corrupt_found = 0

    # -- what may have been removed
    def generation(self) -> str:
        """A token that changes whenever a blob may have been removed (``gc``, ``verify``, a
        restore that found one corrupt, ``clear``). While it reads what it read when an
        action's outputs were stored, every one of those blobs is still here, and storing
        the same outputs again need not look for each (a stat per file: 40k of them after a
        one-file change of a 20k-file image). A blob deleted by hand is not seen this way;
        a restore still verifies every blob it uses."""
        path = self.root / _GENERATION
        try:
            return path.read_text()
        except FileNotFoundError:
            return self._new_generation()
        except OSError:
            return ""  # unreadable: nothing is skipped ("" is never a written token)

    def _new_generation(self) -> str:
        token = os.urandom(8).hex()
        with contextlib.suppress(OSError):
            write_atomic(self.root / _GENERATION, token.encode())
        return token

    # -- paths
    def _blob(self, digest: str) -> str:
        return f"{self._cas}/{digest[:2]}/{digest}"

    def cas_path(self, digest: str) -> Path:
        return Path(self._blob(digest))

    def ac_path(self, key: str) -> Path:
        return self.root / "ac" / key[:2] / key

    # -- blobs
    def has_blob(self, digest: str) -> bool:
        return self.cas_path(digest).is_file()

    def put_file(self, src: str | os.PathLike[str], digest: str, replace: bool = False,
                 known: Callable[[os.stat_result], bool] | None = None,
                 linked: Callable[[os.stat_result], None] | None = None) -> bool:
        """Store ``src`` under ``digest``; returns False when it was already there.

        ``known(stat)`` says whether the caller's digest is still that file's (its stat
        stamp matches when it was hashed): then the blob becomes a hard link to ``src`` (no
        data written: outputs are only ever replaced by a rename, and the two in-place
        writers detach first), or, on another file system, a kernel copy; either way the
        stamp must not move meanwhile. A link moves the file's ctime, so ``linked(stat)``
        hands the caller the new stat to re-key its digest cache. An unknown digest is
        checked while the bytes are copied. Restores verify every blob anyway.

        ``replace`` rewrites an existing blob: after a restore found damage, the other blobs
        of that result are suspect too and are never re-read to check (that is the cost a
        restore pays), so the fresh bytes replace them."""
        if not replace and os.path.isfile(self._blob(digest)):
            return False
        before = os.stat(src)
        if known is not None and known(before):
            after = self._link(src, digest, before)
            if after is not None:
                if linked is not None:
                    linked(after)
                return True
        # the output's permissions, so that a restore of it can be a link (see restore)
        with AtomicFile(self.cas_path(digest), mode=before.st_mode & 0o777) as tmp, \
                open(src, "rb") as fin:
            assert tmp.fd is not None
            before = os.fstat(fin.fileno())
            if known is not None and known(before):
                _copy_kernel(fin.fileno(), tmp.fd, before.st_size)
                unchanged = stat_stamp(os.stat(src)) == stat_stamp(before)
            else:
                unchanged = _copy_hashed(fin.fileno(), tmp.fd) == digest
            if not unchanged:
                raise CorruptBlob(f"{src} changed while it was being stored")
        return True

    def _link(self, src: str | os.PathLike[str], digest: str,
              before: os.stat_result) -> os.stat_result | None:
        """Hard-link ``src`` as the blob; its stat after, or None where links cannot be made."""
        blob = self._blob(digest)
        try:
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            replace_with_hardlink(src, blob)
        except OSError:
            return None  # another device, no hard links there: copy instead
        after = os.stat(src)
        if content_stamp(after) != content_stamp(before):
            self._new_generation()
            with contextlib.suppress(OSError):
                os.unlink(blob)
            raise CorruptBlob(f"{src} changed while it was being stored")
        return after

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        dest = self.cas_path(digest)
        if not dest.is_file():
            write_atomic(dest, data)
        return digest

    def restore(self, digest: str, dest: Path, mode: int) -> None:
        """Put a blob at ``dest`` with ``mode``, verifying its digest.

        ``dest`` becomes another name of the blob (a hard link) when the blob already has
        that mode and the file systems allow it: no bytes are written and no inode is
        allocated, which is what restoring a 20k-file image mostly cost. The blob is then
        hashed where it lies. Outputs are only ever replaced by a rename, and the in-place
        writers (the SEFS pack, copy_bom's mode changes) detach a shared file first, so a
        linked output is never written through. Otherwise the blob is copied, hashed on the way.

        ``dest`` must not exist: callers stage whole results in a scratch directory and
        rename them into place, so a file needs no temporary name of its own. Raises
        CorruptBlob (after deleting the bad blob and the partial copy) or FileNotFoundError.
        """
        src = self.cas_path(digest)
        if self._restore_link(src, digest, dest, mode):
            return
        fd_in = os.open(src, os.O_RDONLY)
        try:
            fd_out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                ok = _copy_hashed(fd_in, fd_out) == digest
                os.fchmod(fd_out, mode)
                # The blob's times (a linked blob has those of the output it was): what an
                # in-place stage recorded of its output still holds for the same bytes
                # restored, so a SEFS pack after a restore stays incremental.
                st = os.fstat(fd_in)
                os.utime(fd_out, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
        if not ok:
            self._corrupt(digest, src, dest)

    def _restore_link(self, src: Path, digest: str, dest: Path, mode: int) -> bool:
        """Restore by a hard link; False (nothing left at ``dest``) where that cannot be done:
        another mode, another device, too many links, a store the user may not link from."""
        if stat.S_IMODE(os.stat(src).st_mode) != mode:  # no such blob: FileNotFoundError
            return False
        try:
            os.link(src, dest)
        except OSError:
            return False
        # read into a buffer, not mapped: unmapping on several threads costs every CPU a
        # TLB flush, which was an eighth of a 40k-file restore
        ok = sha256_file(dest) == digest
        same_mode = stat.S_IMODE(os.stat(dest).st_mode) == mode
        if not ok:
            self._corrupt(digest, src, dest)
        if not same_mode:  # changed by someone else meanwhile: copy it after all
            dest.unlink()
        return same_mode

    def _corrupt(self, digest: str, src: Path, dest: Path) -> None:
        self.corrupt_found += 1
        self._new_generation()
        dest.unlink(missing_ok=True)
        try:
            src.unlink()
        except OSError:
            pass
        raise CorruptBlob(f"cache blob {digest[:12]}… is corrupted; it was removed")

    # -- action results
    def get_action(self, key: str) -> dict | None:
        path = self.ac_path(key)
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("outputs"), list):
                raise ValueError("not an output manifest")
            if data.get("checksum") != _written_checksum(raw) and \
                    data.get("checksum") != entry_checksum(data):
                raise ValueError("checksum mismatch")  # e.g. one flipped bit in a mode
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self.corrupt_found += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None
        try:
            os.utime(path)  # least-recently-used order for `cache gc`
        except OSError:
            pass
        return data

    def put_action(self, key: str, manifest: dict) -> str:
        """Store the entry; returns its checksum (what :meth:`entry_checksum_of` reads)."""
        checksum, parts = _entry(manifest)
        write_atomic(self.ac_path(key), *parts)
        return checksum

    def entry_checksum_of(self, key: str) -> str | None:
        """The checksum the entry under ``key`` starts with, read without the rest of it:
        enough to know it is an entry already met (an image's entry is megabytes of JSON)."""
        try:
            with open(self.ac_path(key), "rb") as f:
                head = f.read(_CHECKSUM_END + 1)
        except OSError:
            return None
        if not head.startswith(_CHECKSUM_OPEN) or head[_CHECKSUM_END:] != b",":
            return None
        return head[len(_CHECKSUM_OPEN):_CHECKSUM_END - 1].decode("ascii", "replace")

    def action_bytes(self, key: str) -> bytes | None:
        try:
            return self.ac_path(key).read_bytes()
        except OSError:
            return None

    # -- maintenance helpers used by `occlum-rules cache`
    def _iter(self, namespace: str):
        top = self.root / namespace
        if not top.is_dir():
            return
        for sub in sorted(top.iterdir()):
            if sub.is_dir():
                for entry in sorted(sub.iterdir()):
                    if not entry.name.startswith("."):  # temporaries being written
                        yield entry

    def iter_blobs(self):
        return self._iter("cas")

    def iter_actions(self):
        return self._iter("ac")

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)  # the generation with it


def entry_parts(manifest: dict) -> list[bytes | memoryview]:
    """An action entry as stored, in parts to write one after the other (:func:`_entry`)."""
    return _entry(manifest)[1]


def _entry(manifest: dict) -> tuple[str, list[bytes | memoryview]]:
    """An action entry's checksum, and the entry as stored (canonical JSON with its
    ``checksum`` field) in parts.

    The body is encoded once (an image's entry is tens of megabytes: a dict per file and a
    pair per discovered input): its checksum is taken over those bytes and, when every
    other key sorts after "checksum" (as in every entry the engine makes), the field is
    written in front of them, which is exactly what encoding the whole record gives; the
    body is never copied again."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    checksum = hashlib.sha256(text).hexdigest()
    if body and min(body) > "checksum":
        return checksum, [b'{"checksum":' + json.dumps(checksum).encode() + b",",
                          memoryview(text)[1:]]
    body["checksum"] = checksum
    return checksum, [json.dumps(body, sort_keys=True, separators=(",", ":")).encode()]


def entry_bytes(manifest: dict) -> bytes:
    """:func:`entry_parts` joined."""
    return b"".join(entry_parts(manifest))


_CHECKSUM_OPEN = b'{"checksum":"'
_CHECKSUM_END = len(_CHECKSUM_OPEN) + 64 + 1  # after the closing quote


def _written_checksum(raw: bytes) -> str | None:
    """The checksum of an entry laid out as :func:`entry_parts` writes it (its field first),
    from its bytes: the body's own text, hashed as it was written, is not encoded again."""
    if not raw.startswith(_CHECKSUM_OPEN) or raw[_CHECKSUM_END:_CHECKSUM_END + 1] != b",":
        return None
    h = hashlib.sha256(b"{")
    h.update(memoryview(raw)[_CHECKSUM_END + 1:])
    return h.hexdigest()


def entry_checksum(manifest: dict) -> str:
    """sha256 over an action entry without its ``checksum`` field.

    Blobs are named by their digest, but an entry's own bytes (paths, modes, link targets)
    are not: the checksum lets a damaged entry be told from a good one."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _file_records(manifest: dict) -> Iterator[dict]:
    """The records of an output manifest that name a blob: file outputs, and the files of
    directory outputs."""
    for out in manifest.get("outputs", []):
        if out.get("type") == "file":
            yield out
        for e in out.get("entries", []) or []:
            if e.get("type") == "file":
                yield e


def manifest_blob_modes(manifest: dict) -> dict[str, int]:
    """The mode a blob fetched for ``manifest`` (one :func:`manifest_blobs` accepts) is
    given: that of the first output file made of it, so that restoring it can be a link
    (:meth:`LocalStore.restore`). Only permission bits: the manifest came from a remote."""
    modes: dict[str, int] = {}
    for record in _file_records(manifest):
        digest, mode = record["sha256"], record.get("mode")
        if isinstance(digest, str) and type(mode) is int and 0 <= mode <= 0o777:
            modes.setdefault(digest, mode)
    return modes


def manifest_blobs(manifest: dict) -> list[str]:
    """Every blob digest an output manifest needs."""
    return [record["sha256"] for record in _file_records(manifest)]


# --------------------------------------------------------------------------- maintenance


@dataclass
class StoreStats:
    entries: int
    blobs: int
    size: int


def store_stats(store: LocalStore) -> StoreStats:
    blobs = list(store.iter_blobs())
    actions = list(store.iter_actions())
    size = sum(b.stat().st_size for b in blobs) + sum(a.stat().st_size for a in actions)
    return StoreStats(len(actions), len(blobs), size)


@dataclass
class GcResult:
    removed_entries: int
    removed_blobs: int
    freed_blob_bytes: int
    kept_entries: int
    kept_bytes: int


def gc(store: LocalStore, max_size: int) -> GcResult:
    """Drop least-recently-used action entries until the store fits ``max_size`` bytes; then
    every blob that no kept entry needs. A blob a kept entry needs is never removed."""
    store._new_generation()
    entries = sorted(store.iter_actions(), key=lambda p: p.stat().st_mtime)
    blobs = {b.name: b for b in store.iter_blobs()}
    needs: dict[Path, set[str]] = {}
    for entry in entries:
        try:
            needs[entry] = set(manifest_blobs(json.loads(entry.read_bytes())))
        except (OSError, ValueError):
            needs[entry] = set()

    def wanted_by(kept: list[Path]) -> set[str]:
        return set().union(*(needs[e] for e in kept)) if kept else set()

    def total(kept: list[Path]) -> int:
        return sum(blobs[d].stat().st_size for d in wanted_by(kept) if d in blobs) + sum(
            e.stat().st_size for e in kept)

    kept = list(entries)
    removed_entries = 0
    while kept and total(kept) > max_size:
        victim = kept.pop(0)
        victim.unlink(missing_ok=True)
        removed_entries += 1
    wanted = wanted_by(kept)
    removed_blobs = freed = 0
    for digest, path in blobs.items():
        if digest not in wanted:
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
            removed_blobs += 1
    return GcResult(removed_entries, removed_blobs, freed, len(kept), total(kept))


@dataclass
class VerifyResult:
    blobs_checked: int = 0
    corrupt_blobs: list[str] = field(default_factory=list)     # digests, removed
    corrupt_entries: list[str] = field(default_factory=list)   # action keys, removed

    @property
    def bad(self) -> int:
        return len(self.corrupt_blobs) + len(self.corrupt_entries)


def verify(store: LocalStore) -> VerifyResult:
    """Re-hash every blob and parse every action entry; remove what is corrupt."""
    store._new_generation()
    result = VerifyResult()
    for blob in store.iter_blobs():
        result.blobs_checked += 1
        if sha256_file(blob) != blob.name:
            os.unlink(blob)
            result.corrupt_blobs.append(blob.name)
    for entry in store.iter_actions():
        try:
            manifest_blobs(json.loads(entry.read_bytes()))
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            entry.unlink(missing_ok=True)
            result.corrupt_entries.append(entry.name)
    return result
