"""An action's key: the digests of its inputs (declared and discovered) and the key material.

Inputs another action produced take their digest from that action's record (hashed once,
when it was made); other files and trees are hashed through the build's digest cache.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import stat as statmod
from collections.abc import Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from occlum_rules.core.action import Action, compute_key
from occlum_rules.core.action_state import read_state_summary
from occlum_rules.core.build_env import BuildEnv, abs_path, digest_cache
from occlum_rules.core.digests import DigestCache, normal_path, tree_digest, tree_entries
from occlum_rules.core.dynamic import unpack_dynamic
from occlum_rules.errors import UserError


def input_digests(action: Action, env: BuildEnv) -> list[tuple[str, str]]:
    cache = digest_cache(env)
    result: list[tuple[str, str]] = []
    producer_states: dict[str, dict | None] = {}
    for path in action.inputs:
        producer = action.input_producers.get(path)
        digest = None
        if producer is not None:
            if producer not in producer_states:
                producer_states[producer] = read_state_summary(env, producer)
            state = producer_states[producer]
            if state:
                digest = state["digests"].get(path)
        if digest is None:
            full = abs_path(env, path)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                raise UserError(f"{action.label}: input '{path}' does not exist") from None
            if statmod.S_ISDIR(st.st_mode):
                digest = "tree:" + tree_digest(tree_entries(Path(full), cache))
            else:
                digest = cache.digest(full, st)
        result.append((path, digest))
    return result


def dynamic_digests(paths: list[str], env: BuildEnv,
                    read: Mapping[str, str] | None = None) -> list[list[str]]:
    """[path, sha256] of each discovered input: as the stage read it where it said so
    (``read``, see ``StageContext.inputs_read``), else as the file is now."""
    cache = digest_cache(env)
    read = read or {}
    result = []
    prefix = os.path.join(os.path.normpath(env.root), "")
    for p in paths:
        full = normal_path(abs_path(env, p))  # one digest-cache entry per file, not per spelling
        if full.startswith(prefix):
            key_path = full[len(prefix):]
        else:
            rel = os.path.relpath(full, env.root)
            key_path = rel if not rel.startswith("..") else full
        digest = read.get(p)
        result.append([key_path, digest if digest is not None else cache.digest(full)])
    return result


# (path, digest) pairs of discovered inputs already found unchanged in this build run. Many
# images copy the same host files (a runtime, a shared data tree); one build checks each
# file once, as if it had snapshotted the host when it started.
_UNCHANGED: dict[tuple[str, str], set[tuple[str, str]]] = {}


# (directory, hash of its packed group) of recorded discovered inputs already found
# unchanged in this build run: images copying one shared tree record equal groups for it.
_UNCHANGED_GROUPS: dict[tuple[str, str], set[tuple[str, bytes]]] = {}


def dynamic_unchanged(recorded: list | dict | None, env: BuildEnv) -> bool:
    """Do the inputs an action discovered last time still have the same content?

    ``recorded``: a list of [path, digest] (a cache entry, a version 1 record) or a
    record's groups (``dynamic.pack_dynamic``)."""
    if isinstance(recorded, dict):
        groups = _UNCHANGED_GROUPS.setdefault((env.root, env.run_id), set())
        new_groups, items = [], []
        for directory, packed in recorded.items():
            group = (directory, hashlib.blake2b(packed, digest_size=20).digest())
            if group not in groups:
                new_groups.append(group)
                items += unpack_dynamic({directory: packed})
        if not dynamic_unchanged(items, env):
            return False
        groups.update(new_groups)
        return True
    if recorded is not None and not isinstance(recorded, list):
        return False  # a record this version does not understand: run again, never trust it
    seen = _UNCHANGED.setdefault((env.root, env.run_id), set())
    todo: list[tuple[str, str]] = []
    for item in recorded or ():
        try:
            path, digest = item
        except (TypeError, ValueError):
            return False
        if (path, digest) not in seen:
            todo.append((path, digest))
    found = current_digests(digest_cache(env), (abs_path(env, path) for path, _ in todo))
    try:
        for (path, digest), now in zip(todo, found):
            if now != digest:
                return False
            seen.add((path, digest))
    finally:
        found.close()
    return True


_HASH_BATCH = 256  # files a hashing task takes: a task per file costs more than most files' sha256
_BATCHES_AHEAD = 8


def _digest_or_none(cache: DigestCache, path: str) -> str | None:
    try:
        return cache.digest(path)
    except OSError:
        return None


def _digests(cache: DigestCache, paths: list[str]) -> list[str | None]:
    return [_digest_or_none(cache, path) for path in paths]


def current_digests(cache: DigestCache,
                    paths: Iterable[str]) -> Generator[str | None, None, None]:
    """Each file's sha256 as it is now (None where it cannot be read), in order.

    Files are checked on the calling thread until one is not in the cache at its current
    stamp (a null build never gets further); from there on they are checked and hashed a
    batch at a time on a few threads while the answers before them are used: a fresh
    checkout's 20k sources (1 GiB) took 1.25-1.42 s one at a time, 1.07-1.28 s so. Closing the
    iterator early stops the hashing.
    """
    rest: Iterator[str] = iter(paths)
    for path in rest:
        try:
            st = os.stat(path)
        except OSError:
            yield None
            continue
        known = cache.known(path, st)
        if known is None:
            rest = itertools.chain([path], rest)
            break
        yield known
    else:
        return
    pending: collections.deque[Future] = collections.deque()
    pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="hash")
    try:
        while batch := list(itertools.islice(rest, _HASH_BATCH)):
            pending.append(pool.submit(_digests, cache, batch))
            if len(pending) > _BATCHES_AHEAD:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def action_key(action: Action, env: BuildEnv) -> tuple[str, list[tuple[str, str]]]:
    digests = input_digests(action, env)
    return compute_key(action, digests), digests
