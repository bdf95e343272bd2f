"""Run one action: up to date, restored from a cache, or executed — in that order.

This module is what every doit task calls. It keeps three promises:
- nothing half-written counts: an action's state file is removed before its outputs change
  and written only after they are complete, so an interrupted build re-runs the action;
- a cache hit is verified blob by blob before anything is put in place;
- outputs appear atomically (built in a scratch directory, then renamed), except for the
  incremental stages that update their previous outputs in place (they keep their own state).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import marshal
import os
import shutil
import stat as statmod
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occlum_rules import state_file
from occlum_rules.atomic_write import write_atomic
from occlum_rules.core.action import compute_key, key_material
from occlum_rules.core.digests import DigestCache, tree_digest, tree_entries
from occlum_rules.core.store import CorruptBlob, LocalStore, manifest_blobs
from occlum_rules.errors import UserError

_DIGESTS: dict[str, DigestCache] = {}
_REMOTES: dict[str, Any] = {}


@dataclass
class BuildEnv:
    """What every action of one build shares; plain data so it pickles."""

    root: str
    out: str
    state_dir: str
    cache_dir: str
    run_id: str
    source_date_epoch: int
    remote_url: str | None = None
    remote_upload: bool | None = None
    path_env: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def digest_cache(env: BuildEnv) -> DigestCache:
    cache = _DIGESTS.get(env.state_dir)
    if cache is None:
        cache = _DIGESTS[env.state_dir] = DigestCache(
            Path(env.state_dir) / "digests.marshal",
            split_prefix=os.path.join(os.path.abspath(env.out), ""))
    return cache


def _remote(env: BuildEnv):
    if env.state_dir in _REMOTES:
        return _REMOTES[env.state_dir]
    remote = None
    try:
        from occlum_rules.core.remote_cache import remote_from_config
    except ImportError:
        remote_from_config = None
    if remote_from_config is not None:
        remote = remote_from_config(env.remote_url, env.remote_upload)
    _REMOTES[env.state_dir] = remote
    return remote


def _abs(env: BuildEnv, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(env.root, path)


def _id_name(action_id: str) -> str:
    return hashlib.sha256(action_id.encode()).hexdigest()[:32]


def state_path(env: BuildEnv, action_id: str) -> Path:
    """The engine's record of an action's last complete run (key, output stamps, manifest)."""
    return Path(env.state_dir) / "actions" / f"{_id_name(action_id)}.state"


def state_root(env: BuildEnv) -> Path:
    """Where the private state of every action lives (``<out>/.occlum-rules/state``)."""
    return Path(env.state_dir) / "state"


def private_state_dir(env: BuildEnv, action: dict) -> Path:
    """The directory only this action's stage writes between runs (an in-place stage's
    memory of its previous outputs, a cargo target directory). Named by the action's kind
    (so ``cache stats`` can sum it per kind) and the hash of its id (stable across key
    changes: the state is what makes the next run incremental)."""
    return state_root(env) / f"{action['kind']}-{_id_name(action['id'])[:16]}"


def shared_state_dir(env: BuildEnv, action: dict) -> Path:
    """A directory shared by the actions of one kind built with the same toolchains (the Go
    build cache: one per go toolchain fingerprint, so two Go versions never share one)."""
    tools = hashlib.sha256("\0".join(sorted(action["toolchains"])).encode()).hexdigest()[:16]
    return state_root(env) / "shared" / f"{action['kind']}-{tools}"


def remove_action_state(env: BuildEnv, action: dict) -> None:
    """Forget everything kept for ``action``: its record, the material ``explain`` compares
    with, its private state and the shared state of its kind and toolchains (a cache: the
    next build refills it). What ``doit clean`` calls besides removing the outputs."""
    for path in (state_path(env, action["id"]), _previous_path(env, action["id"])):
        path.unlink(missing_ok=True)
    for directory in (private_state_dir(env, action), shared_state_dir(env, action)):
        _remove(str(directory))


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def state_usage(engine_dir: str | os.PathLike) -> dict[str, int]:
    """Bytes of kept state per kind: each stage kind's private and shared state, and the
    engine's own action records. What ``occlum-rules cache stats`` lists."""
    usage: dict[str, int] = {}
    root = Path(engine_dir) / "state"
    for top in (root, root / "shared"):
        try:
            dirs = sorted(d for d in top.iterdir() if d.is_dir() and d.name != "shared")
        except OSError:
            continue
        for d in dirs:
            kind = d.name.rpartition("-")[0] or d.name
            if top.name == "shared":
                kind += " (shared)"
            usage[kind] = usage.get(kind, 0) + _tree_bytes(d)
    records = _tree_bytes(Path(engine_dir) / "actions")
    if records:
        usage["action records"] = records
    return usage


# An image action's state holds a record per file (output stamps, tree entries, discovered
# inputs): megabytes. Stored as marshal in the shared state framing (a torn or damaged file
# reads as "no state", so the action runs again): decoding it is several times faster than
# JSON, and a null build reads every state.
ACTION_STATE_KIND = "action-state"
ACTION_STATE_VERSION = 1


def load_state_file(path: str | os.PathLike) -> dict | None:
    payload = state_file.read_state(path, ACTION_STATE_KIND, ACTION_STATE_VERSION)
    if isinstance(payload, state_file.Missing):
        return None
    try:
        data = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(path: Path, state: dict) -> None:
    state_file.write_state(path, ACTION_STATE_KIND, ACTION_STATE_VERSION, marshal.dumps(state, 4))


_STATES: dict[str, tuple[tuple[int, int, int], dict]] = {}


def read_state(env: BuildEnv, action_id: str) -> dict | None:
    """An action's state, decoded once per process while the file is unchanged.

    An image's state holds a line per file (stamps, manifest, discovered inputs), and one
    null build consults it several times (its own check, each consumer's input digests, the
    report); decoding megabytes of JSON each time was most of a null build. Callers must not
    modify the returned dict.
    """
    path = state_path(env, action_id)
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = _STATES.get(str(path))
        if hit is not None and hit[0] == stamp:
            return hit[1]
    except OSError:
        return None
    data = load_state_file(path)
    if data is None:
        return None
    _STATES[str(path)] = (stamp, data)
    return data


def _write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


# --------------------------------------------------------------------------- keys

def input_digests(action: dict, env: BuildEnv) -> list[tuple[str, str]]:
    cache = digest_cache(env)
    result: list[tuple[str, str]] = []
    producer_states: dict[str, dict | None] = {}
    for path in action["inputs"]:
        producer = action["input_producers"].get(path)
        digest = None
        if producer is not None:
            if producer not in producer_states:
                producer_states[producer] = read_state(env, producer)
            state = producer_states[producer]
            if state:
                for out in state["manifest"]["outputs"]:
                    if out["path"] == path:
                        digest = out["digest"]
                        break
        if digest is None:
            full = _abs(env, path)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                raise UserError(f"{action['label']}: input '{path}' does not exist") from None
            if statmod.S_ISDIR(st.st_mode):
                digest = "tree:" + tree_digest(tree_entries(Path(full), cache))
            else:
                digest = cache.digest(full, st)
        result.append((path, digest))
    return result


def dynamic_digests(paths: list[str], env: BuildEnv) -> list[list[str]]:
    cache = digest_cache(env)
    result = []
    prefix = os.path.join(os.path.normpath(env.root), "")
    for p in paths:
        full = os.path.normpath(_abs(env, p))  # one digest-cache entry per file, not per spelling
        if full.startswith(prefix):
            key_path = full[len(prefix):]
        else:
            rel = os.path.relpath(full, env.root)
            key_path = rel if not rel.startswith("..") else full
        result.append([key_path, cache.digest(full)])
    return result


# (path, digest) pairs of discovered inputs already found unchanged in this build run. Many
# images copy the same host files (a runtime, a shared data tree); one build checks each
# file once, as if it had snapshotted the host when it started.
_UNCHANGED: dict[tuple[str, str], set[tuple[str, str]]] = {}


def dynamic_unchanged(recorded: list, env: BuildEnv) -> bool:
    """Do the inputs an action discovered last time still have the same content?"""
    cache = digest_cache(env)
    seen = _UNCHANGED.setdefault((env.root, env.run_id), set())
    for item in recorded or ():
        path, digest = item
        if (path, digest) in seen:
            continue
        try:
            if cache.digest(_abs(env, path)) != digest:
                return False
        except OSError:
            return False
        seen.add((path, digest))
    return True


def action_key(action: dict, env: BuildEnv) -> tuple[str, list[tuple[str, str]]]:
    digests = input_digests(action, env)
    return compute_key(action, digests), digests


# --------------------------------------------------------------------------- outputs

def describe_outputs(action: dict, env: BuildEnv, where: dict[str, str] | None = None) -> dict:
    """Build the output manifest (what the cache stores and what up-to-date checks compare)."""
    cache = digest_cache(env)
    outputs = []
    for rel, kind in zip(action["outputs"], action["output_types"]):
        full = (where or {}).get(rel) or _abs(env, rel)
        if kind == "dir":
            if not os.path.isdir(full):
                raise UserError(f"{action['label']}: declared output directory '{rel}' was not created")
            entries = tree_entries(Path(full), cache)
            outputs.append({"path": rel, "type": "dir", "entries": entries,
                            "digest": "tree:" + tree_digest(entries)})
        elif os.path.islink(full):
            target = os.readlink(full)
            outputs.append({"path": rel, "type": "symlink", "target": target,
                            "digest": "link:" + target})
        else:
            if not os.path.isfile(full):
                raise UserError(f"{action['label']}: declared output '{rel}' was not created")
            st = os.stat(full)
            digest = cache.digest(full, st)
            outputs.append({"path": rel, "type": "file", "mode": statmod.S_IMODE(st.st_mode),
                            "size": st.st_size, "sha256": digest, "digest": digest})
    return {"outputs": outputs}


def _stamps(action: dict, env: BuildEnv) -> dict[str, tuple[int, int, int]]:
    """(size, mtime, mode) of every output path: the cheap proof nothing touched them.

    A recursive scandir rather than os.walk + lstat: on a null build this walk over every
    image is most of the work, and DirEntry gives the type without another system call.
    """
    stamps: dict[str, list[int]] = {}
    cut = len(env.root) + 1

    def walk(path: str) -> None:
        with os.scandir(path) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                stamps[entry.path[cut:]] = (st.st_size, st.st_mtime_ns, st.st_mode)
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path)

    for rel, kind in zip(action["outputs"], action["output_types"]):
        full = _abs(env, rel)
        if kind == "dir":
            walk(full)
        else:
            st = os.lstat(full)
            stamps[rel] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return stamps


def outputs_intact(action: dict, env: BuildEnv, state: dict) -> bool:
    """Are the outputs exactly what the state says we left? (size, mtime, mode, set of paths)"""
    try:
        return _stamps(action, env) == state.get("stamps")
    except OSError:
        return False


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def _restore_tree(store: LocalStore, entries: list[dict], dest: Path) -> None:
    """Directories and links first (entries list parents before children), then the files
    on a few threads: each restore hashes and copies with the GIL released."""
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
    if len(files) > 1:
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            for _ in pool.map(lambda f: store.restore(*f), files):
                pass
    elif files:
        store.restore(*files[0])
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


def manifest_problem(action: dict, manifest: Any) -> str | None:
    """Why a cached manifest cannot be this action's result (None: it fits).

    A cache entry is data from outside the build (another checkout, a remote cache, a disk
    that flipped a bit): its paths must be exactly the action's declared outputs and its
    digests self-consistent before anything is restored from it.
    """
    outs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if not isinstance(outs, list) or len(outs) != len(action["outputs"]):
        return "the outputs do not match the action's"
    dynamic = manifest.get("dynamic", [])
    if not isinstance(dynamic, list) or not all(
            isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)
            for d in dynamic):
        return "malformed discovered inputs"
    for out, rel, kind in zip(outs, action["outputs"], action["output_types"]):
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


def restore_outputs(action: dict, env: BuildEnv, store: LocalStore, manifest: dict) -> None:
    """Put a cached result in place; all-or-nothing per output."""
    problem = manifest_problem(action, manifest)
    if problem:
        raise UnfitManifest(f"cache entry refused: {problem}")
    scratch = Path(env.state_dir) / "scratch" / hashlib.sha256(action["id"].encode()).hexdigest()[:16]
    _remove(str(scratch))
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
            staged.append((tmp, _abs(env, out["path"])))
        for tmp, final in staged:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            _remove(final)
            os.replace(tmp, final)
    finally:
        _remove(str(scratch))


def store_outputs(store: LocalStore, env: BuildEnv, manifest: dict, replace: bool = False) -> None:
    cache = digest_cache(env)

    def put(path: Path, digest: str) -> None:
        store.put_file(path, digest, replace, known=lambda st: cache.known(path, st) == digest)

    for out in manifest["outputs"]:
        if out["type"] == "file":
            put(Path(_abs(env, out["path"])), out["sha256"])
        elif out["type"] == "dir":
            base = Path(_abs(env, out["path"]))
            for e in out["entries"]:
                if e["type"] == "file":
                    put(base / e["path"], e["sha256"])


# --------------------------------------------------------------------------- running

@dataclass
class StageContext:
    """What a Python stage function receives. Paths are absolute."""

    root: Path
    label: str
    inputs: list[Path]
    outputs: list[Path]
    params: dict[str, Any]
    secrets: dict[str, Path]
    source_date_epoch: int
    digests: DigestCache
    state_dir: Path         # private to this action, kept between runs (exists while it runs)
    shared_state_dir: Path  # shared by actions of this kind and toolchains (create it if used)
    discovered: list[str] = field(default_factory=list)

    def add_inputs(self, paths) -> None:
        """Declare inputs found while running (host files a BOM copies, libraries it pulls
        in). They are re-checked on every later build and guard cache hits."""
        for p in paths:
            self.discovered.append(str(os.fspath(p)))

    def log(self, message: str) -> None:
        print(f"[{self.label}] {message}", file=sys.stderr)


def _subprocess_env(action: dict, env: BuildEnv) -> dict[str, str]:
    base = {
        "PATH": env.path_env or os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(env.source_date_epoch),
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    base.update(action["env"])
    return base


def _substitute(arg: str, outputs: dict[str, str], root: str) -> str:
    arg = arg.replace("${WORKSPACE}", root)
    for i, path in enumerate(outputs.values()):
        arg = arg.replace(f"${{OUT:{i}}}", path)
    return arg


def _trim(text: str, lines: int = 25) -> str:
    rows = [r for r in text.strip().splitlines() if r.strip()]
    if len(rows) > lines:
        rows = rows[:lines] + [f"... ({len(rows) - lines} more lines)"]
    return "\n".join(rows)


def run_command(argv: list[str], cwd: str | os.PathLike, env: dict[str, str], what: str) -> None:
    """Run a build tool; a failure is one UserError with the tool's own (trimmed) output."""
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              errors="replace")
    except FileNotFoundError:
        raise UserError(f"{what}: tool not found: {argv[0]}") from None
    if proc.returncode != 0:
        raise UserError(f"{what} failed (exit {proc.returncode}):\n{_trim(proc.stderr or proc.stdout)}")


def run_action(action: dict, env: BuildEnv) -> None:
    root = env.root
    if action["in_place"]:
        where = {rel: _abs(env, rel) for rel in action["outputs"]}
        scratch = None
    else:
        scratch = Path(env.state_dir) / "scratch" / hashlib.sha256(action["id"].encode()).hexdigest()[:16]
        _remove(str(scratch))
        where = {rel: str(scratch / rel) for rel in action["outputs"]}
        for rel in action["outputs"]:
            os.makedirs(os.path.dirname(where[rel]), exist_ok=True)
    discovered: list[str] = []
    try:
        if action["argv"] is not None:
            rel_where = {k: os.path.relpath(v, root) for k, v in where.items()}
            argv = [_substitute(a, rel_where, root) for a in action["argv"]]
            run_command(argv, root, _subprocess_env(action, env),
                        f"{action['label']}: {action['kind']}")
        else:
            module_name, func_name = action["func"].split(":")
            func = getattr(importlib.import_module(module_name), func_name)
            ctx = StageContext(
                root=Path(root), label=action["label"],
                inputs=[Path(_abs(env, p)) for p in action["inputs"]],
                outputs=[Path(where[rel]) for rel in action["outputs"]],
                params=action["params"],
                secrets={k: Path(_abs(env, v)) for k, v in action["secrets"].items()},
                source_date_epoch=env.source_date_epoch,
                digests=digest_cache(env), state_dir=private_state_dir(env, action),
                shared_state_dir=shared_state_dir(env, action))
            ctx.state_dir.mkdir(parents=True, exist_ok=True)
            try:
                func(ctx)
            finally:
                with contextlib.suppress(OSError):
                    ctx.state_dir.rmdir()  # only if the stage kept nothing there
            discovered = sorted(set(ctx.discovered))
        for rel, kind in zip(action["outputs"], action["output_types"]):
            ok = os.path.isdir(where[rel]) if kind == "dir" else (
                os.path.isfile(where[rel]) or os.path.islink(where[rel]))
            if not ok:
                raise UserError(f"{action['label']}: {action['kind']} did not create its declared "
                                f"output '{rel}'")
        if scratch is not None:
            for rel in action["outputs"]:
                final = _abs(env, rel)
                os.makedirs(os.path.dirname(final), exist_ok=True)
                _remove(final)
                os.replace(where[rel], final)
        manifest = describe_outputs(action, env)
        manifest["dynamic"] = dynamic_digests(discovered, env)
        return manifest
    finally:
        if scratch is not None:
            _remove(str(scratch))


def _previous_path(env: BuildEnv, action_id: str) -> Path:
    return state_path(env, action_id).with_suffix(".previous.json")


def previous_material(env: BuildEnv, action_id: str) -> dict | None:
    try:
        return json.loads(_previous_path(env, action_id).read_bytes())
    except (OSError, ValueError):
        return None


def _remember_previous(env: BuildEnv, action_id: str, material: dict | None) -> None:
    """Keep what the last complete build was made from, for `occlum-rules explain`, even if
    this run is interrupted before it writes the new state."""
    if material is not None:
        _write_json_atomic(_previous_path(env, action_id), material)


def _journal(env: BuildEnv, action: dict, outcome: str, seconds: float, key: str) -> None:
    record = {"id": action["id"], "label": action["label"], "stage": action["kind"],
              "outcome": outcome, "seconds": round(seconds, 4), "action_key": key}
    name = hashlib.sha256(action["id"].encode()).hexdigest()[:32]
    _write_json_atomic(Path(env.state_dir) / "runs" / env.run_id / f"{name}.json", record)


def is_up_to_date(action: dict, env: BuildEnv) -> bool:
    """doit's `uptodate` hook: same key as last time and outputs untouched."""
    try:
        state = read_state(env, action["id"])
        if not state:
            return False
        key, _ = action_key(action, env)
        return (state.get("key") == key and outputs_intact(action, env, state)
                and dynamic_unchanged(state.get("dynamic"), env))
    except (UserError, OSError):
        return False


def _ensure_dirs(action: dict, env: BuildEnv) -> None:
    for rel in action.get("ensure_dirs", []):
        os.makedirs(_abs(env, rel), exist_ok=True)


def _prune_dirs(action: dict, env: BuildEnv) -> None:
    """Remove what an owned directory holds beyond the names the action keeps there.

    Outputs an action no longer declares (the other SGX mode's LibOS and PAL after a mode
    switch) would otherwise stay beside the new ones; this runs after a cache hit too, which
    runs no stage code."""
    for rel, keep in action.get("prune_dirs", {}).items():
        where = _abs(env, rel)
        try:
            names = os.listdir(where)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in sorted(set(names) - set(keep)):
            _remove(os.path.join(where, name))


def execute(action: dict, env: BuildEnv) -> str:
    """Bring one action's outputs up to date; return the outcome."""
    os.umask(0o022)  # outputs (and so SEFS images and MRENCLAVE) must not depend on the umask
    try:
        outcome = _execute(action, env)
        _prune_dirs(action, env)
        return outcome
    finally:
        _ensure_dirs(action, env)


def _execute(action: dict, env: BuildEnv) -> str:
    started = time.monotonic()
    key, digests = action_key(action, env)
    spath = state_path(env, action["id"])
    state = read_state(env, action["id"])
    if state and state.get("key") == key and outputs_intact(action, env, state) \
            and dynamic_unchanged(state.get("dynamic"), env):
        _journal(env, action, "up_to_date", time.monotonic() - started, key)
        return "up_to_date"
    previous = (state or {}).get("material") or previous_material(env, action["id"])
    _remember_previous(env, action["id"], previous)
    # From here on the outputs may change: forget that they were ever complete.
    if spath.exists():
        spath.unlink()
    store = LocalStore(Path(env.cache_dir))
    outcome = None
    manifest = None
    damaged = False  # a cached result failed to restore: its other blobs are suspect too
    if action["cacheable"]:
        cached = store.get_action(key)
        if store.corrupt_found:
            print(f"warning: {action['label']}: cache entry {key[:12]}… is corrupted; it was "
                  "removed; rebuilding", file=sys.stderr)
        problem = manifest_problem(action, cached) if cached is not None else None
        if problem:
            print(f"warning: {action['label']}: cache entry {key[:12]}… refused ({problem}); "
                  "it was removed; rebuilding", file=sys.stderr)
            store.ac_path(key).unlink(missing_ok=True)
            cached = None
        if cached is not None and not dynamic_unchanged(cached.get("dynamic"), env):
            cached = None  # discovered host inputs differ here: the cached result does not apply
        if cached is not None:
            try:
                restore_outputs(action, env, store, cached)
                outcome, manifest = "cache_hit_local", cached
            except (CorruptBlob, FileNotFoundError) as exc:
                damaged = True
                print(f"warning: {action['label']}: {exc}; rebuilding", file=sys.stderr)
        if outcome is None:
            remote = _remote(env)
            if remote is not None:
                manifest = _fetch_remote(remote, store, key, action)
                if manifest is not None and not dynamic_unchanged(manifest.get("dynamic"), env):
                    manifest = None
                if manifest is not None:
                    try:
                        restore_outputs(action, env, store, manifest)
                        outcome = "cache_hit_remote"
                    except (CorruptBlob, FileNotFoundError):
                        damaged = True
                        manifest = None
    if outcome is None:
        manifest = run_action(action, env)
        outcome = "run"
        if action["cacheable"]:
            stored = {"outputs": manifest["outputs"], "label": action["label"],
                      "kind": action["kind"], "dynamic": manifest.get("dynamic", [])}
            store_outputs(store, env, stored, replace=damaged)
            store.put_action(key, stored)
            remote = _remote(env)
            if remote is not None and remote.upload_enabled:
                _upload_remote(remote, store, key, stored)
    state = {"key": key, "manifest": {"outputs": [_compact_output(o) for o in manifest["outputs"]]},
             "dynamic": manifest.get("dynamic", []),
             "stamps": _stamps(action, env),
             "material": key_material(action, digests), "previous": previous}
    _write_state(spath, state)
    digest_cache(env).save()
    _journal(env, action, outcome, time.monotonic() - started, key)
    return outcome


def _compact_output(out: dict) -> dict:
    """A state keeps a tree's entries as one marshal blob: every null build decodes every
    state, and only the tree digest is read then (``tree_entries_of`` decodes the rest)."""
    if "entries" not in out:
        return out
    compact = {k: v for k, v in out.items() if k != "entries"}
    compact["entries_marshal"] = marshal.dumps(out["entries"], 4)
    return compact


def tree_entries_of(out: dict) -> list[dict]:
    """The entries of a tree output as recorded in an action state."""
    return marshal.loads(out["entries_marshal"]) if "entries_marshal" in out else out["entries"]


def _fetch_remote(remote, store: LocalStore, key: str, action: dict | None = None) -> dict | None:
    data = remote.get_action_result(key)
    if data is None:
        return None
    try:
        manifest = json.loads(data)
        blobs = manifest_blobs(manifest)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if action is not None and manifest_problem(action, manifest):
        return None  # never store or restore an entry that names other paths
    for digest in sorted(set(blobs)):
        if store.has_blob(digest):
            continue
        store.cas_path(digest).parent.mkdir(parents=True, exist_ok=True)
        if not remote.fetch_blob(digest, store.cas_path(digest), mode=0o444):
            return None
    store.put_action(key, manifest)
    return manifest


def _upload_remote(remote, store: LocalStore, key: str, manifest: dict) -> None:
    for digest in sorted(set(manifest_blobs(manifest))):
        if not remote.put_blob(digest, store.cas_path(digest)):
            return  # an action entry must never point at blobs the remote lacks
    data = store.action_bytes(key)
    if data is not None:
        remote.put_action_result(key, data)
