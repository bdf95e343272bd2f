"""Cache entries: check that one fits an action, restore it, store a result, talk to a remote.

A cache entry is data from outside the build (another checkout, a remote cache, a disk
that flipped a bit): its paths must be exactly the action's declared outputs and its
digests self-consistent before anything is restored from it, and every restored blob is
verified against its digest. A restore is all-or-nothing per output (staged in a scratch
directory, then renamed into place).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Container
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from occlum_rules.core.action import Action
from occlum_rules.core.action_result import order_outputs
from occlum_rules.core.build_env import BuildEnv, abs_path, digest_cache
from occlum_rules.core.digests import tree_digest
from occlum_rules.core.outputs import remove_path
from occlum_rules.core.store import CorruptBlob, LocalStore, manifest_blob_modes, manifest_blobs

_RESTORE_BATCH = 32  # files a thread restores per task: a task per file was 40k thread wake-ups


def _restore_tree(store: LocalStore, entries: list[dict], dest: Path) -> None:
    """Directories and links first (entries list parents before children), then the files
    on a few threads: each restore hashes (and copies) with the GIL released."""
    dest.mkdir(parents=True, exist_ok=True)
    dir_modes: list[tuple[Path, int]] = []
    files: list[tuple[str, Path, int]] = []
    for e in entries:
        target = dest / e["path"]
        if e["type"] == "dir":
            target.mkdir(parents=True, exist_ok=True)
            dir_modes.append((target, e["mode"]))
        elif e["type"] == "symlink":
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(e["target"], target)
        else:
            files.append((e["sha256"], target, e["mode"]))
    if len(files) > _RESTORE_BATCH:
        def restore_batch(start: int) -> None:
            for f in files[start:start + _RESTORE_BATCH]:
                store.restore(*f)

        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            for _ in pool.map(restore_batch, range(0, len(files), _RESTORE_BATCH)):
                pass
    else:
        for f in files:
            store.restore(*f)
    for path, mode in reversed(dir_modes):
        os.chmod(path, mode)


class UnfitManifest(CorruptBlob):
    """A cached output manifest that does not describe this action's outputs."""


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and not value.strip("0123456789abcdef")


def _is_mode(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777


def _entries_problem(entries: Any) -> str | None:
    """Tree entries must be safe relative paths, each inside a directory entry listed before
    it (so nothing is ever written through a restored link or outside the tree)."""
    if not isinstance(entries, list):
        return "directory entries are not a list"
    dirs: set[str] = set()
    seen: set[str] = set()
    for e in entries:
        path = e.get("path") if isinstance(e, dict) else None
        if not isinstance(path, str) or not path or path.startswith("/") or \
                any(part in ("", ".", "..") for part in path.split("/")):
            return f"unsafe entry path {path!r}"
        parent = path.rpartition("/")[0]
        if (parent and parent not in dirs) or path in seen:
            return f"entry {path!r} is not inside the tree's directories"
        seen.add(path)
        kind = e.get("type")
        if kind == "dir" and _is_mode(e.get("mode")):
            dirs.add(path)
        elif kind == "file" and _is_mode(e.get("mode")) and _is_sha256(e.get("sha256")):
            pass
        elif kind == "symlink" and isinstance(e.get("target"), str) and e["target"]:
            pass
        else:
            return f"malformed entry {path!r}"
    return None


def malformed_dynamic(dynamic: Any) -> bool:
    """Is this not a cache entry's list of discovered inputs ([path, sha256] pairs)?"""
    return not isinstance(dynamic, list) or not all(
        isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)
        for d in dynamic)


def manifest_problem(action: Action, manifest: Any) -> str | None:
    """Why a cached manifest cannot be this action's result (None: it fits).

    A cache entry is data from outside the build (another checkout, a remote cache, a disk
    that flipped a bit): its paths must be exactly the action's declared outputs and its
    digests self-consistent before anything is restored from it.
    """
    outs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if not isinstance(outs, list) or len(outs) != len(action.outputs):
        return "the outputs do not match the action's"
    if malformed_dynamic(manifest.get("dynamic", [])):
        return "malformed discovered inputs"
    for out, rel, kind in zip(outs, action.outputs, action.output_types):
        if not isinstance(out, dict) or out.get("path") != rel:
            return f"output {out.get('path') if isinstance(out, dict) else out!r} is not {rel!r}"
        if kind == "dir":
            if out.get("type") != "dir":
                return f"output {rel!r} is not a directory"
            problem = _entries_problem(out.get("entries"))
            if problem:
                return f"{rel}: {problem}"
            if out.get("digest") != "tree:" + tree_digest(out["entries"]):
                return f"output {rel!r}: the tree digest does not match its entries"
        elif out.get("type") == "file":
            if not (_is_sha256(out.get("sha256")) and out.get("digest") == out["sha256"]
                    and _is_mode(out.get("mode"))):
                return f"output {rel!r}: malformed file record"
        elif out.get("type") == "symlink":
            target = out.get("target")
            if not (isinstance(target, str) and target and out.get("digest") == "link:" + target):
                return f"output {rel!r}: malformed link record"
        else:
            return f"output {rel!r} has an unknown type"
    return None


def restore_outputs(action: Action, env: BuildEnv, store: LocalStore, manifest: dict) -> None:
    """Put a cached result in place; all-or-nothing per output."""
    problem = manifest_problem(action, manifest)
    if problem:
        raise UnfitManifest(f"cache entry refused: {problem}")
    scratch = Path(env.state_dir) / "scratch" / hashlib.sha256(action.id.encode()).hexdigest()[:16]
    remove_path(str(scratch))
    staged: list[tuple[Path, str]] = []
    try:
        for out in manifest["outputs"]:
            tmp = scratch / out["path"]
            if out["type"] == "dir":
                _restore_tree(store, out["entries"], tmp)
            elif out["type"] == "symlink":
                tmp.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(out["target"], tmp)
            else:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                store.restore(out["sha256"], tmp, out["mode"])
            staged.append((tmp, abs_path(env, out["path"])))
        for tmp, final in staged:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            remove_path(final)
            # outputs restored whole (trees, links, files) in scratch, then moved into
            # place together: a rename of finished outputs, not a file write
            os.replace(tmp, final)
    finally:
        remove_path(str(scratch))


def store_outputs(store: LocalStore, env: BuildEnv, manifest: dict, replace: bool = False,
                  present: Container[str] = ()) -> None:
    """Put every output file in the store; ``present``: digests known to be there already
    (see ``LocalStore.generation``), not looked for."""
    cache = digest_cache(env)

    def put(path: str, digest: str) -> None:
        if digest in present:
            return
        store.put_file(path, digest, replace, known=lambda st: cache.known(path, st) == digest,
                       linked=lambda st: cache.remember(path, digest, st))

    for out in manifest["outputs"]:
        if out["type"] == "file":
            put(abs_path(env, out["path"]), out["sha256"])
        elif out["type"] == "dir":  # plain joins: 20k Path objects were 0.2 s of a rebuild
            base = abs_path(env, out["path"])
            for e in out["entries"]:
                if e["type"] == "file":
                    put(os.path.join(base, e["path"]), e["sha256"])


def fetch_remote(remote, store: LocalStore, key: str, action: Action | None = None) -> dict | None:
    """The entry for ``key`` from the remote (HTTP or REAPI), its blobs fetched into the store
    and verified, and the entry stored locally; None on a miss or anything unfit."""
    entry = remote.get_entry(key, store)
    if entry is None:
        return None
    manifest, sizes = entry
    if action is not None:
        manifest = order_outputs(manifest, list(action.outputs))
        if manifest_problem(action, manifest):
            return None  # never store or restore an entry that names other paths
    try:
        blobs = set(manifest_blobs(manifest))
    except (KeyError, TypeError, AttributeError):
        return None
    wanted = {d: sizes.get(d) for d in sorted(blobs) if not store.has_blob(d)}
    if not remote.fetch_blobs(store, wanted, manifest_blob_modes(manifest)):
        return None
    store.put_action(key, manifest)
    return manifest


def upload_remote(remote, store: LocalStore, key: str, manifest: dict) -> None:
    """Store a fresh result on the remote: its blobs first, then the entry naming them."""
    remote.put_entry(store, key, manifest)
