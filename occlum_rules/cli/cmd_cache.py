"""``occlum-rules cache stats|gc|verify``: look after the local store."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from occlum_rules.cli.common import human_bytes, parse_size
from occlum_rules.core.digests import CHUNK
from occlum_rules.core.executor import state_usage
from occlum_rules.core.store import LocalStore, manifest_blobs
from occlum_rules.core.workspace import find_root, load_workspace
from occlum_rules.errors import UserError


def _store_and_ws(args) -> tuple[LocalStore, object | None]:
    if args.dir:
        return LocalStore(Path(args.dir)), None
    ws = load_workspace(find_root(Path.cwd()))
    return LocalStore(ws.cache_dir()), ws


def stats(store: LocalStore, ws) -> None:
    blobs = list(store.iter_blobs())
    actions = list(store.iter_actions())
    size = sum(b.stat().st_size for b in blobs) + sum(a.stat().st_size for a in actions)
    print(f"store:          {store.root}")
    print(f"action entries: {len(actions)}")
    print(f"blobs:          {len(blobs)}")
    print(f"size:           {human_bytes(size)}")
    if ws is not None:
        usage = state_usage(ws.state_dir)
        print(f"action state:   {human_bytes(sum(usage.values()))} in {ws.state_dir}")
        for kind, size in sorted(usage.items()):
            print(f"  {kind + ':':<22}{human_bytes(size)}")
        report_path = ws.out / "build-report.json"
        try:
            rep = json.loads(report_path.read_text())
            looked = rep["actions_run"] + rep["cache_hits_local"] + rep["cache_hits_remote"]
            hits = rep["cache_hits_local"] + rep["cache_hits_remote"]
            rate = f"{100 * hits / looked:.0f}%" if looked else "n/a (everything was up to date)"
            print(f"last build:     {rep['actions_run']} run, {rep['cache_hits_local']} local hits, "
                  f"{rep['cache_hits_remote']} remote hits, {rep['up_to_date']} up to date; "
                  f"hit rate {rate}")
        except (OSError, ValueError, KeyError):
            print("last build:     no build-report.json yet")


def gc(store: LocalStore, max_size: int) -> None:
    """Drop least-recently-used action entries until the store fits; then every blob that no
    kept entry needs. A blob a kept entry needs is never removed."""
    entries = sorted(store.iter_actions(), key=lambda p: p.stat().st_mtime)
    blobs = {b.name: b for b in store.iter_blobs()}
    needs: dict[Path, set[str]] = {}
    for entry in entries:
        try:
            needs[entry] = set(manifest_blobs(json.loads(entry.read_bytes())))
        except (OSError, ValueError):
            needs[entry] = set()

    def total(kept: list[Path]) -> int:
        wanted = set().union(*(needs[e] for e in kept)) if kept else set()
        return sum(blobs[d].stat().st_size for d in wanted if d in blobs) + sum(
            e.stat().st_size for e in kept)

    kept = list(entries)
    removed_entries = 0
    while kept and total(kept) > max_size:
        victim = kept.pop(0)
        victim.unlink(missing_ok=True)
        removed_entries += 1
    wanted = set().union(*(needs[e] for e in kept)) if kept else set()
    removed_blobs = freed = 0
    for digest, path in blobs.items():
        if digest not in wanted:
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
            removed_blobs += 1
    print(f"removed {removed_entries} action entries and {removed_blobs} blobs "
          f"({human_bytes(freed)} of blobs); kept {len(kept)} entries, {human_bytes(total(kept))}")


def verify(store: LocalStore) -> int:
    bad = 0
    count = 0
    for blob in store.iter_blobs():
        count += 1
        h = hashlib.sha256()
        with open(blob, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        if h.hexdigest() != blob.name:
            print(f"corrupt blob removed: {blob.name}")
            os.unlink(blob)
            bad += 1
    for entry in store.iter_actions():
        try:
            data = json.loads(entry.read_bytes())
            manifest_blobs(data)
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            print(f"corrupt action entry removed: {entry.name}")
            entry.unlink(missing_ok=True)
            bad += 1
    print(f"verified {count} blobs: {bad} corrupt entr{'y' if bad == 1 else 'ies'} removed")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="occlum-rules cache", description="Inspect and maintain "
                                     "the local action cache.")
    parser.add_argument("--dir", help="store directory (default: the workspace's)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stats", help="entries, bytes and the last build's hit rate")
    p_gc = sub.add_parser("gc", help="evict least recently used entries")
    p_gc.add_argument("--max-size", required=True, help="e.g. 5G, 500M")
    sub.add_parser("verify", help="re-hash every blob; remove corrupt ones (exit 1 if any)")
    args = parser.parse_args(argv)
    store, ws = _store_and_ws(args)
    if not store.root.exists():
        raise UserError(f"no cache at {store.root}")
    if args.command == "stats":
        stats(store, ws)
        return 0
    if args.command == "gc":
        gc(store, parse_size(args.max_size))
        return 0
    return verify(store)
