"""An action's outputs on disk: their manifest (digests), their stamps (the cheap proof that
nothing touched them since), and the directories the engine keeps or prunes around them."""

from __future__ import annotations

import marshal
import os
import shutil
import stat as statmod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from occlum_rules.core.action import Action
from occlum_rules.core.build_env import BuildEnv, abs_path, digest_cache
from occlum_rules.core.digests import DigestCache, tree_digest, tree_entries
from occlum_rules.errors import UserError
from occlum_rules.marshal_frames import DictEncoder


class StampBlob(DictEncoder):
    """Output stamps encoded as they are taken: the marshal bytes of the dict
    ``{path: (size, mtime, mode)}`` (what an action record keeps, and what
    :func:`recorded_stamps` decodes), without the dict. An image's dict is ~300 bytes a
    file (80k files on a 4 GiB image), held while its record is made; its encoding is a
    third of that."""


CHECK_DESCRIBED = "OCCLUM_RULES_CHECK_DESCRIBED"


def describe_outputs(action: Action, env: BuildEnv,
                     described: dict[str, tuple[list[dict], bytes]] | None = None) -> dict[str, Any]:
    """Build the output manifest (what the cache stores and what up-to-date checks compare),
    and, under ``stamps``, what :func:`output_stamps` would say of the same outputs, from
    the same stats (encoded: see :class:`StampBlob`).

    ``described``: trees the stage described itself (``StageContext.describe_tree``), by
    absolute path; they are taken as they are, not walked."""
    cache = digest_cache(env)
    outputs: list[dict[str, Any]] = []
    stamps = StampBlob()
    cut = len(env.root) + 1
    described = described or {}
    for rel, kind in zip(action.outputs, action.output_types):
        full = abs_path(env, rel)
        if kind == "dir":
            if not os.path.isdir(full):
                raise UserError(f"{action.label}: declared output directory '{rel}' was not created")
            if full in described:
                entries, tree_stamps = described.pop(full)
                if os.environ.get(CHECK_DESCRIBED) == "1":
                    _check_described(action, rel, full, entries, tree_stamps, cache, cut)
                stamps.extend(tree_stamps)
            else:
                entries = tree_entries(Path(full), cache, stamps=stamps, stamp_cut=cut)
            outputs.append({"path": rel, "type": "dir", "entries": entries,
                            "digest": "tree:" + tree_digest(entries)})
            continue
        st = os.lstat(full) if os.path.lexists(full) else None
        stamps[rel] = (st.st_size, st.st_mtime_ns, st.st_mode) if st else (0, 0, 0)
        if st is not None and statmod.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            outputs.append({"path": rel, "type": "symlink", "target": target,
                            "digest": "link:" + target})
        else:
            if st is None or not statmod.S_ISREG(st.st_mode):
                raise UserError(f"{action.label}: declared output '{rel}' was not created")
            digest = cache.digest(full, st)
            outputs.append({"path": rel, "type": "file", "mode": statmod.S_IMODE(st.st_mode),
                            "size": st.st_size, "sha256": digest, "digest": digest})
    return {"outputs": outputs, "stamps": stamps.encoded()}


def _check_described(action: Action, rel: str, full: str, entries: list[dict],
                     tree_stamps: bytes, cache: DigestCache, cut: int) -> None:
    """Fail the action when a stage's description of a tree is not what walking it says."""
    walked_stamps: dict[str, tuple[int, int, int]] = {}
    walked = tree_entries(Path(full), cache, stamps=walked_stamps, stamp_cut=cut)
    given = marshal.loads(tree_stamps)
    problem = None
    if walked != entries:
        problem = next((f"entry {i}: described {a}, walked {b}" for i, (a, b)
                        in enumerate(zip(entries, walked)) if a != b),
                       f"{len(entries)} entries described, {len(walked)} walked")
    elif walked_stamps != given:
        path = sorted(set(walked_stamps) ^ set(given)) or sorted(
            p for p in walked_stamps if walked_stamps[p] != given[p])
        problem = f"stamps differ at {path[0]}: described {given.get(path[0])}, " \
                  f"walked {walked_stamps.get(path[0])}"
    if problem:
        raise UserError(f"{action.label}: internal error: the stage's description of '{rel}' "
                        f"is not the tree ({problem}; checked because {CHECK_DESCRIBED}=1)")


def _walk_stamps(action: Action, env: BuildEnv) -> Iterator[tuple[str, tuple[int, int, int]]]:
    """(path, (size, mtime, mode)) of every output path, as found.

    A recursive scandir rather than os.walk + lstat: on a null build this walk over every
    image is most of the work, and DirEntry gives the type without another system call.
    """
    cut = len(env.root) + 1

    def walk(path: str) -> Iterator[tuple[str, tuple[int, int, int]]]:
        with os.scandir(path) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                yield entry.path[cut:], (st.st_size, st.st_mtime_ns, st.st_mode)
                if entry.is_dir(follow_symlinks=False):
                    yield from walk(entry.path)

    for rel, kind in zip(action.outputs, action.output_types):
        full = abs_path(env, rel)
        if kind == "dir":
            yield from walk(full)
        else:
            st = os.lstat(full)
            yield rel, (st.st_size, st.st_mtime_ns, st.st_mode)


def output_stamps(action: Action, env: BuildEnv) -> dict[str, tuple[int, int, int]]:
    """(size, mtime, mode) of every output path: the cheap proof nothing touched them."""
    return dict(_walk_stamps(action, env))


def recorded_stamps(state: dict) -> dict[str, tuple[int, int, int]] | None:
    """The stamps an action record holds (a marshal blob since record version 2, decoded only
    by the checks that walk)."""
    value = state.get("stamps")
    return marshal.loads(value) if isinstance(value, bytes) else value


def _disjoint(paths: list[str]) -> bool:
    """No output is another one or lies under another (so a walk meets no path twice)."""
    ordered = sorted(paths)
    return all(not (b == a or b.startswith(a + "/")) for a, b in zip(ordered, ordered[1:]))


def outputs_intact(action: Action, env: BuildEnv, state: dict) -> bool:
    """Are the outputs exactly what the state says we left? (size, mtime, mode, set of paths)

    ``output_stamps(...) == recorded``, without making the first dict: each path found is
    compared as the walk meets it, and the walk stops at the first difference. An image's
    stamps are ~300 bytes a file, and holding both dicts at once was ~50 MiB of a 4 GiB
    image's peak RSS. When the outputs overlap (a path could be met twice), the dicts are
    compared."""
    try:
        recorded = recorded_stamps(state)
        if recorded is None:
            return False
        if not _disjoint(list(action.outputs)):
            return output_stamps(action, env) == recorded
        seen = 0
        for path, stamp in _walk_stamps(action, env):
            if recorded.get(path) != stamp:
                return False
            seen += 1
        return seen == len(recorded)  # every path met once: the same set of paths
    except OSError:
        return False


def remove_path(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def ensure_dirs(action: Action, env: BuildEnv) -> None:
    for rel in action.ensure_dirs:
        os.makedirs(abs_path(env, rel), exist_ok=True)


def prune_dirs(action: Action, env: BuildEnv) -> None:
    """Remove what an owned directory holds beyond the names the action keeps there.

    Outputs an action no longer declares (the other SGX mode's LibOS and PAL after a mode
    switch) would otherwise stay beside the new ones; this runs after a cache hit too, which
    runs no stage code."""
    for rel, keep in action.prune_dirs.items():
        where = abs_path(env, rel)
        try:
            names = os.listdir(where)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in sorted(set(names) - set(keep)):
            remove_path(os.path.join(where, name))
