"""Run one action: up to date, restored from a cache, or executed — in that order.

This module is what every doit task calls. It keeps three promises:
- nothing half-written counts: an action's state file is removed before its outputs change
  and written only after they are complete, so an interrupted build re-runs the action;
- a cache hit is verified blob by blob before anything is put in place;
- outputs appear atomically (built in a scratch directory, then renamed), except for the
  incremental stages that update their previous outputs in place (they keep state in the
  private directory the engine gives each action: see action_state).

The parts live beside it: keys (input digests), outputs (manifests, stamps), cache_entry
(fit, restore, store, remote), runner (commands and stages), action_state (records and
state directories) and journal.
"""

from __future__ import annotations

import marshal
import os
import sys
import time
from pathlib import Path
from typing import Any

from occlum_rules.core import heap
from occlum_rules.core.action import Action, key_material
from occlum_rules.core.action_state import (
    compact_output,
    forget_big_states,
    previous_material,
    read_state,
    recorded_blobs,
    remember_previous,
    state_path,
    write_action_state,
)
from occlum_rules.core.build_env import BuildEnv, digest_cache, executor_for, remote_for
from occlum_rules.core.cache_entry import (
    fetch_remote,
    malformed_dynamic,
    manifest_problem,
    restore_outputs,
    store_outputs,
    upload_remote,
)
from occlum_rules.core.dynamic import pack_dynamic
from occlum_rules.core.journal import journal
from occlum_rules.core.keys import action_key, dynamic_unchanged
from occlum_rules.core.outputs import ensure_dirs, prune_dirs
from occlum_rules.core.runner import run_action
from occlum_rules.core.store import CorruptBlob, LocalStore
from occlum_rules.core.watch_client import file_stamps, outputs_intact, record_stamps, remember
from occlum_rules.errors import UserError

heap.keep_big_buffers_mapped()


def is_up_to_date(action: Action, env: BuildEnv) -> bool:
    """doit's `uptodate` hook: same key as last time and outputs untouched."""
    try:
        state = read_state(env, action.id)
        if not state:
            return False
        key, _ = action_key(action, env)
        return up_to_date(action, env, state, key)
    except (UserError, OSError):
        return False


def up_to_date(action: Action, env: BuildEnv, state: dict, key: str) -> bool:
    """Same key, same discovered inputs, outputs untouched. The inputs are asked first: an
    edited source is the usual reason to run, and walking an image's 20k outputs first only
    to learn that was a tenth of an incremental copy_bom (twice: doit asks, then runs)."""
    return (state.get("key") == key and dynamic_unchanged(state.get("dynamic"), env)
            and outputs_intact(action, env, state))


def execute(action: Action, env: BuildEnv) -> str:
    """Bring one action's outputs up to date; return the outcome."""
    os.umask(0o022)  # outputs (and so SEFS images and MRENCLAVE) must not depend on the umask
    try:
        outcome = _execute(action, env)
        prune_dirs(action, env)
        return outcome
    finally:
        ensure_dirs(action, env)
        heap.release()


def _execute(action: Action, env: BuildEnv) -> str:
    started = time.monotonic()
    key, digests = action_key(action, env)
    spath = state_path(env, action.id)
    state = read_state(env, action.id)
    if state and up_to_date(action, env, state, key):
        journal(env, action, "up_to_date", time.monotonic() - started, key)
        return "up_to_date"
    stale = _stale_entry(state, key, env)
    previous = (state or {}).get("material") or previous_material(env, action.id)
    remember_previous(env, action.id, previous)
    # From here on the outputs may change: forget that they were ever complete.
    if spath.exists():
        spath.unlink()
    stored_before = _stored_outputs(state)
    del state
    forget_big_states()
    store = LocalStore(Path(env.cache_dir))
    generation = store.generation() if action.cacheable else None
    outcome, manifest, damaged = (_from_cache(action, env, store, key, stale)
                                  if action.cacheable else (None, None, False))
    entry = manifest.get("checksum") if outcome == "cache_hit_local" and manifest else None
    if outcome is None or manifest is None:
        manifest = _run_remote(action, env, store, digests) if action.cacheable else None
        outcome = "run" if manifest is None else "run_remote"
        if manifest is None:
            manifest = run_action(action, env)
        if action.cacheable:
            entry, generation = _store_result(action, env, store, key, manifest, outcome == "run",
                                              damaged, stored_before)
    del stored_before
    # a run's stamps come from the walk that described its outputs (the watcher, when one
    # runs, arms the trees first and checks them again)
    described = manifest["stamps"] if outcome == "run" else None
    outputs = [compact_output(o) for o in manifest["outputs"]]
    dynamic = manifest.get("dynamic", [])
    if isinstance(dynamic, list):
        dynamic = pack_dynamic(dynamic)
    # An image's manifest holds a dict per file and its discovered inputs a pair per host
    # file: let them go before the record is encoded (which makes a few copies of it in
    # bytes) rather than after.
    del manifest
    stamps, armed = record_stamps(action, env, described)
    del described
    files = file_stamps(action, stamps) if armed is not None else {}
    encoded = stamps if isinstance(stamps, bytes) else marshal.dumps(stamps, 4)
    state = {"key": key, "manifest": {"outputs": outputs}, "dynamic": dynamic,
             "stamps": encoded, "material": key_material(action, digests),
             "previous": previous, "entry": entry, "stored": generation}
    del stamps, outputs, encoded
    write_action_state(spath, state)
    del state
    remember(env, action, armed, files)
    digest_cache(env).save()
    journal(env, action, outcome, time.monotonic() - started, key)
    return outcome


def _stale_entry(state: dict | None, key: str, env: BuildEnv) -> str | None:
    """The checksum of the cache entry the last run left under this same key, when the
    inputs it discovered have changed since: that entry cannot apply, and reading it to
    learn so (an image's entry is megabytes of JSON) is skipped."""
    if not state or state.get("key") != key or not isinstance(state.get("entry"), str):
        return None
    return None if dynamic_unchanged(state.get("dynamic"), env) else state["entry"]


def _store_result(action: Action, env: BuildEnv, store: LocalStore, key: str,
                  manifest: dict[str, Any], ran_here: bool, damaged: bool,
                  stored_before: tuple[str, list[dict]] | None) -> tuple[str, str]:
    """Put a fresh result in the local store (and on the remote, when uploads are on);
    returns its entry's checksum and the store's generation it was put under.

    ``stored_before``: the generation and outputs of the last run of this action, when it
    left them in a store: under the same generation that store still holds every one of
    their blobs, which are not looked for again (what an in-place stage did not rewrite)."""
    generation = store.generation()
    stored = {"outputs": manifest["outputs"], "label": action.label,
              "kind": action.kind, "dynamic": manifest.get("dynamic", [])}
    if ran_here:
        present: set[str] = set()
        if stored_before is not None and stored_before[0] == generation and generation and not damaged:
            present = recorded_blobs(stored_before[1])
        store_outputs(store, env, stored, replace=damaged, present=present)
    checksum = store.put_action(key, stored)
    remote = remote_for(env)
    if remote is not None and remote.upload_enabled:
        upload_remote(remote, store, key, stored)
    return checksum, generation


def _stored_outputs(state: dict | None) -> tuple[str, list[dict]] | None:
    """(generation, outputs) of a record whose outputs went to the store it names."""
    if not state or not isinstance(state.get("stored"), str):
        return None
    outputs = (state.get("manifest") or {}).get("outputs")
    return (state["stored"], outputs) if isinstance(outputs, list) else None


def _run_remote(action: Action, env: BuildEnv, store: LocalStore,
                digests: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The action run by remote execution and its outputs put in place as a cache hit puts
    them; None when it is not eligible, none is configured or the service failed."""
    executor = executor_for(env)
    if executor is None:
        return None
    manifest = executor.run(action, env, digests, store)
    if manifest is None:
        return None
    try:
        restore_outputs(action, env, store, manifest)
    except (CorruptBlob, FileNotFoundError) as exc:
        print(f"warning: {action.label}: {exc}; running it here", file=sys.stderr)
        return None
    return manifest


def _sources_differ(cached: Any, env: BuildEnv) -> bool:
    """A well-formed entry whose discovered inputs have other contents here (a malformed one
    is left to :func:`manifest_problem`)."""
    dynamic = cached.get("dynamic", []) if isinstance(cached, dict) else None
    return not malformed_dynamic(dynamic) and not dynamic_unchanged(dynamic, env)


def _from_cache(action: Action, env: BuildEnv, store: LocalStore, key: str,
                stale: str | None = None) -> tuple[str | None, dict[str, Any] | None, bool]:
    """(outcome, manifest, damaged): a verified result restored from the local store or the
    remote, else (None, None, damaged). ``damaged``: a cached result failed to restore, so
    its other blobs are suspect too (the fresh result replaces them). ``stale``: the
    checksum of a local entry known not to apply (:func:`_stale_entry`)."""
    outcome: str | None = None
    manifest: dict[str, Any] | None = None
    damaged = False
    known_stale = stale is not None and store.entry_checksum_of(key) == stale
    cached = None if known_stale else store.get_action(key)
    if store.corrupt_found:
        print(f"warning: {action.label}: cache entry {key[:12]}… is corrupted; it was "
              "removed; rebuilding", file=sys.stderr)
    # Discovered host inputs first: an image whose sources changed finds the entry of its
    # last build under the same key, and checking that entry's 20k paths is wasted on it.
    if cached is not None and _sources_differ(cached, env):
        cached = None  # discovered host inputs differ here: the cached result does not apply
    problem = manifest_problem(action, cached) if cached is not None else None
    if problem:
        print(f"warning: {action.label}: cache entry {key[:12]}… refused ({problem}); "
              "it was removed; rebuilding", file=sys.stderr)
        store.ac_path(key).unlink(missing_ok=True)
        cached = None
    if cached is not None:
        try:
            restore_outputs(action, env, store, cached)
            outcome, manifest = "cache_hit_local", cached
        except (CorruptBlob, FileNotFoundError) as exc:
            damaged = True
            print(f"warning: {action.label}: {exc}; rebuilding", file=sys.stderr)
    if outcome is None:
        remote = remote_for(env)
        if remote is not None:
            manifest = fetch_remote(remote, store, key, action)
            if manifest is not None and not dynamic_unchanged(manifest.get("dynamic"), env):
                manifest = None
            if manifest is not None:
                try:
                    restore_outputs(action, env, store, manifest)
                    outcome = "cache_hit_remote"
                except (CorruptBlob, FileNotFoundError):
                    damaged = True
                    manifest = None
    return outcome, manifest, damaged
