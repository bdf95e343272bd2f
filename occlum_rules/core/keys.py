"""An action's key: the digests of its inputs (declared and discovered) and the key material.

Inputs another action produced take their digest from that action's record (hashed once,
when it was made); other files and trees are hashed through the build's digest cache.
"""

from __future__ import annotations

import hashlib
import os
import stat as statmod
from collections.abc import Mapping
from pathlib import Path

from occlum_rules.core.action import Action, compute_key
from occlum_rules.core.action_state import read_state_summary
from occlum_rules.core.build_env import BuildEnv, abs_path, digest_cache
from occlum_rules.core.digests import normal_path, tree_digest, tree_entries
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
        for directory, packed in recorded.items():
            group = (directory, hashlib.blake2b(packed, digest_size=20).digest())
            if group in groups:
                continue
            if not dynamic_unchanged(unpack_dynamic({directory: packed}), env):
                return False
            groups.add(group)
        return True
    if recorded is not None and not isinstance(recorded, list):
        return False  # a record this version does not understand: run again, never trust it
    cache = digest_cache(env)
    seen = _UNCHANGED.setdefault((env.root, env.run_id), set())
    for item in recorded or ():
        try:
            path, digest = item
        except (TypeError, ValueError):
            return False
        if (path, digest) in seen:
            continue
        try:
            if cache.digest(abs_path(env, path)) != digest:
                return False
        except OSError:
            return False
        seen.add((path, digest))
    return True


def action_key(action: Action, env: BuildEnv) -> tuple[str, list[tuple[str, str]]]:
    digests = input_digests(action, env)
    return compute_key(action, digests), digests
