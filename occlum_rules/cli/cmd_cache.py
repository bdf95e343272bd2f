"""``occlum-rules cache stats|gc|verify``: look after the local store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from occlum_rules.cli.common import human_bytes, parse_size
from occlum_rules.core.action_state import state_usage
from occlum_rules.core.store import LocalStore, gc, store_stats, verify
from occlum_rules.core.workspace import Workspace, find_root, load_workspace
from occlum_rules.errors import UserError


def _store_and_ws(args: argparse.Namespace) -> tuple[LocalStore, Workspace | None]:
    if args.dir:
        return LocalStore(Path(args.dir)), None
    ws = load_workspace(find_root(Path.cwd()))
    return LocalStore(ws.cache_dir()), ws


def _stats(store: LocalStore, ws: Workspace | None) -> None:
    counts = store_stats(store)
    print(f"store:          {store.root}")
    print(f"action entries: {counts.entries}")
    print(f"blobs:          {counts.blobs}")
    print(f"size:           {human_bytes(counts.size)}")
    if ws is not None:
        usage = state_usage(ws.state_dir)
        print(f"action state:   {human_bytes(sum(usage.values()))} in {ws.state_dir}")
        for kind, size in sorted(usage.items()):
            print(f"  {kind + ':':<22}{human_bytes(size)}")
        try:
            rep = json.loads((ws.out / "build-report.json").read_text())
            looked = rep["actions_run"] + rep["cache_hits_local"] + rep["cache_hits_remote"]
            hits = rep["cache_hits_local"] + rep["cache_hits_remote"]
            rate = f"{100 * hits / looked:.0f}%" if looked else "n/a (everything was up to date)"
            print(f"last build:     {rep['actions_run']} run, {rep['cache_hits_local']} local hits, "
                  f"{rep['cache_hits_remote']} remote hits, {rep['up_to_date']} up to date; "
                  f"hit rate {rate}")
        except (OSError, ValueError, KeyError):
            print("last build:     no build-report.json yet")


def _gc(store: LocalStore, max_size: int) -> None:
    r = gc(store, max_size)
    print(f"removed {r.removed_entries} action entries and {r.removed_blobs} blobs "
          f"({human_bytes(r.freed_blob_bytes)} of blobs); kept {r.kept_entries} entries, "
          f"{human_bytes(r.kept_bytes)}")


def _verify(store: LocalStore) -> int:
    r = verify(store)
    for digest in r.corrupt_blobs:
        print(f"corrupt blob removed: {digest}")
    for key in r.corrupt_entries:
        print(f"corrupt action entry removed: {key}")
    print(f"verified {r.blobs_checked} blobs: {r.bad} corrupt entr{'y' if r.bad == 1 else 'ies'} "
          "removed")
    return 1 if r.bad else 0


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
        _stats(store, ws)
        return 0
    if args.command == "gc":
        _gc(store, parse_size(args.max_size))
        return 0
    return _verify(store)
