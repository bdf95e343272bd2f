"""What the engine keeps about each action between runs, and where.

Under ``<out>/.occlum-rules/``:
- ``actions/<id hash>.state``: the engine's record of the last complete run (key, output
  stamps and manifest, discovered inputs, key material), written only after the outputs are
  complete and removed before they change;
- ``actions/<id hash>.previous.json``: the key material of the build before, for ``explain``;
- ``state/<kind>-<id hash>/``: the action's private state directory (``StageContext.state_dir``),
  where an in-place stage remembers its previous outputs;
- ``state/shared/<kind>-<toolchains hash>/``: state shared by the actions of one kind built
  with the same toolchains (``StageContext.shared_state_dir``: the Go build cache).

Stages never choose these paths and rules never see them; ``doit clean`` removes all of an
action's (``remove_action_state``). Every state file uses the one framing of
``occlum_rules/state_file.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import marshal
import os
from pathlib import Path
from typing import Any

from occlum_rules import state_file
from occlum_rules.atomic_write import write_atomic
from occlum_rules.core.action import Action
from occlum_rules.core.build_env import BuildEnv
from occlum_rules.core.dynamic import pack_dynamic, unpack_dynamic
from occlum_rules.core.outputs import remove_path
from occlum_rules.marshal_frames import marshal_parts


def id_name(action_id: str) -> str:
    return hashlib.sha256(action_id.encode()).hexdigest()[:32]


def state_path(env: BuildEnv, action_id: str) -> Path:
    """The engine's record of an action's last complete run (key, output stamps, manifest)."""
    return Path(env.state_dir) / "actions" / f"{id_name(action_id)}.state"


def state_root(env: BuildEnv) -> Path:
    """Where the private state of every action lives (``<out>/.occlum-rules/state``)."""
    return Path(env.state_dir) / "state"


def private_state_dir(env: BuildEnv, action: Action) -> Path:
    """The directory only this action's stage writes between runs (an in-place stage's
    memory of its previous outputs, a cargo target directory). Named by the action's kind
    (so ``cache stats`` can sum it per kind) and the hash of its id (stable across key
    changes: the state is what makes the next run incremental)."""
    return state_root(env) / f"{action.kind}-{id_name(action.id)[:16]}"


def shared_state_dir(env: BuildEnv, action: Action) -> Path:
    """A directory shared by the actions of one kind built with the same toolchains (the Go
    build cache: one per go toolchain fingerprint, so two Go versions never share one)."""
    tools = hashlib.sha256("\0".join(sorted(action.toolchains)).encode()).hexdigest()[:16]
    return state_root(env) / "shared" / f"{action.kind}-{tools}"


def remove_action_state(env: BuildEnv, action: Action) -> None:
    """Forget everything kept for ``action``: its record, the material ``explain`` compares
    with, its private state and the shared state of its kind and toolchains (a cache: the
    next build refills it). What ``doit clean`` calls besides removing the outputs."""
    for path in (state_path(env, action.id), previous_path(env, action.id),
                 state_path(env, action.id).with_suffix(".watch")):
        path.unlink(missing_ok=True)
    for directory in (private_state_dir(env, action), shared_state_dir(env, action)):
        remove_path(str(directory))


# Where stages kept state before the engine owned it (they chose these paths themselves).
_LEGACY = ("sefs", "package", "cargo", "cargo-fetch", "go", "elf-headers.marshal")


def remove_legacy_state(engine_dir: str | os.PathLike) -> None:
    """Remove what an older occlum-rules left beside the engine's files: nothing reads it
    any more, and ``doit clean`` would otherwise never remove it."""
    for name in _LEGACY:
        remove_path(os.path.join(engine_dir, name))


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
#
# Version 2 keeps ``stamps`` as a marshal blob inside the record (decoded by
# ``outputs.recorded_stamps`` only when a check walks: a null build the watcher vouches for
# never looks at it), and ``dynamic`` (the discovered inputs) grouped by directory, each
# group one canonical byte string (``keys.pack_dynamic``): ten images copying one shared
# tree record equal groups for it, and ``keys.dynamic_unchanged`` checks each distinct group
# once per run by its hash instead of decoding 20k pairs per image. Decoding those small
# objects was most of a vouched null build. Version 1 records still read (an upgrade re-runs
# nothing); an older occlum-rules reads a version 2 record as "no state" (re-runs, never
# misreads).
ACTION_STATE_KIND = "action-state"
ACTION_STATE_VERSION = 2


def load_state_file(path: str | os.PathLike) -> dict | None:
    payload = state_file.read_state(path, ACTION_STATE_KIND, ACTION_STATE_VERSION)
    if isinstance(payload, state_file.Missing) and payload.reason == "from another version":
        payload = state_file.read_state(path, ACTION_STATE_KIND, 1)
    if isinstance(payload, state_file.Missing):
        return None
    try:
        data = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def write_action_state(path: Path, state: dict) -> None:
    record = dict(state)
    if not isinstance(record.get("stamps", b""), bytes):
        record["stamps"] = marshal.dumps(record["stamps"], 4)
    if isinstance(record.get("dynamic"), list):
        record["dynamic"] = pack_dynamic(record["dynamic"])
    state_file.write_state(path, ACTION_STATE_KIND, ACTION_STATE_VERSION,
                           *marshal_parts(record))


def recorded_dynamic(state: dict) -> list:
    """The discovered inputs a record holds, [[path, digest], ...] (either version)."""
    value = state.get("dynamic") or []
    return unpack_dynamic(value) if isinstance(value, dict) else value


_STATES: dict[str, tuple[tuple[int, int, int], dict]] = {}
# An image's decoded state costs ~1 KiB per file (stamps, discovered inputs), and a process
# that kept every state it read held them all to its end: tens of MiB per GiB of image in a
# full build's peak RSS. Small states stay; of the big ones only the last one decoded (a null
# build then decodes an image's state twice: ~0.05 s per GiB of image).
_BIG_STATE = 1 << 20  # file bytes
_BIG_KEPT = 1


# What a consumer's input digests and the build report need of a state (its key and the
# digest of each output: a few lines even for an image), kept for every state read, big ones
# included, so those callers never decode an image's record again after its own check did.
_SUMMARIES: dict[str, tuple[tuple[int, int, int], dict]] = {}


def _summary(data: dict) -> dict:
    outputs = (data.get("manifest") or {}).get("outputs", [])
    return {"key": data.get("key"), "digests": {o["path"]: o.get("digest") for o in outputs}}


def read_state_summary(env: BuildEnv, action_id: str) -> dict | None:
    """``{"key": …, "digests": {output path: digest}}`` of an action's state, from memory
    while the file is unchanged."""
    path = state_path(env, action_id)
    try:
        st = os.stat(path)
    except OSError:
        return None
    hit = _SUMMARIES.get(str(path))
    if hit is not None and hit[0] == (st.st_ino, st.st_size, st.st_mtime_ns):
        return hit[1]
    data = read_state(env, action_id)
    return None if data is None else _summary(data)


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
    _STATES.pop(str(path), None)  # re-inserted last: the dict's order is the order of reading
    _STATES[str(path)] = (stamp, data)
    _SUMMARIES[str(path)] = (stamp, _summary(data))
    if st.st_size > _BIG_STATE:
        big = [p for p, (s, _) in _STATES.items() if s[1] > _BIG_STATE]
        for old in big[:-_BIG_KEPT]:
            del _STATES[old]
    return data


def forget_big_states() -> None:
    """Drop the decoded big states kept by :func:`read_state`. Called before an action's
    outputs are made: its checks and key are done, and an image's stage is about to need
    that memory (an image's record, ~25 MiB on a 4 GiB image); the next check decodes the
    record again."""
    for path in [p for p, (s, _) in _STATES.items() if s[1] > _BIG_STATE]:
        del _STATES[path]


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


def previous_path(env: BuildEnv, action_id: str) -> Path:
    return state_path(env, action_id).with_suffix(".previous.json")


def previous_material(env: BuildEnv, action_id: str) -> dict | None:
    try:
        return json.loads(previous_path(env, action_id).read_bytes())
    except (OSError, ValueError):
        return None


def remember_previous(env: BuildEnv, action_id: str, material: dict | None) -> None:
    """Keep what the last complete build was made from, for `occlum-rules explain`, even if
    this run is interrupted before it writes the new state."""
    if material is not None:
        write_json_atomic(previous_path(env, action_id), material)


def compact_output(out: dict) -> dict:
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


def recorded_blobs(outputs: list[dict]) -> set[str]:
    """The digest of every file a record's outputs name (trees decoded); empty for a record
    not of this shape."""
    found: set[str] = set()
    try:
        for out in outputs:
            if out.get("type") == "file":
                found.add(out["sha256"])
            elif out.get("type") == "dir":
                found.update(e["sha256"] for e in tree_entries_of(out) if e.get("type") == "file")
    except (KeyError, TypeError, AttributeError, ValueError, EOFError):
        return set()
    return found
