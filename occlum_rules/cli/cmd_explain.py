"""``occlum-rules explain LABEL``: why an action re-ran (or would re-run).

The state of every action keeps the material its key was computed from, and the material of
the build before it. Comparing the two names the input file, parameter or toolchain that
changed.
"""

from __future__ import annotations

import argparse

from occlum_rules.cli.common import load
from occlum_rules.core.action import key_material
from occlum_rules.core.doit_bridge import build_env
from occlum_rules.core.executor import (
    _previous_material,
    input_digests,
    read_state,
)
from occlum_rules.errors import UserError


def diff_material(old: dict, new: dict) -> list[str]:
    reasons: list[str] = []
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    for path in sorted(set(old_in) | set(new_in)):
        if path not in old_in:
            reasons.append(f"input added: {path}")
        elif path not in new_in:
            reasons.append(f"input removed: {path}")
        elif old_in[path] != new_in[path]:
            reasons.append(f"input changed: {path} ({old_in[path][:12]} -> {new_in[path][:12]})")
    if old.get("toolchains") != new.get("toolchains"):
        before, after = set(old.get("toolchains", [])), set(new.get("toolchains", []))
        for t in sorted(before - after):
            reasons.append(f"toolchain removed: {t}")
        for t in sorted(after - before):
            reasons.append(f"toolchain now: {t}")
    for field in ("kind", "argv", "func", "env", "outputs"):
        if old.get(field) != new.get(field):
            reasons.append(f"{field} changed")
    op, np_ = old.get("params", {}), new.get("params", {})
    for key in sorted(set(op) | set(np_)):
        if op.get(key) != np_.get(key):
            reasons.append(f"parameter changed: {key}")
    return reasons


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="occlum-rules explain",
                                     description="Say what changed in an action's key since its "
                                                 "last build (why it re-ran or will re-run).")
    parser.add_argument("label", help="a target label (//pkg:name) or an action id (//pkg:name:action)")
    args = parser.parse_args(argv)
    ws, graph = load()
    env = build_env(ws)
    actions = [a for a in graph.actions if a.label == args.label or a.id == args.label]
    if not actions:
        raise UserError(f"no target or action '{args.label}' (see `doit list --all`)")
    for action in actions:
        payload = action.to_dict()
        state = read_state(env, action.id)
        try:
            current = key_material(payload, input_digests(payload, env))
        except UserError as exc:
            print(f"{action.id}: cannot compute its key now: {exc}")
            continue
        if not state:
            print(f"{action.id}: not built yet (or its last run did not finish)")
            previous = _previous_material(env, action.id)
            if previous:
                for reason in diff_material(previous, current) or ["nothing in its key changed"]:
                    print(f"  - {reason}")
            continue
        pending = diff_material(state.get("material") or {}, current)
        if pending:
            print(f"{action.id}: will re-run:")
            for reason in pending:
                print(f"  - {reason}")
        else:
            print(f"{action.id}: up to date (key {state['key'][:16]})")
            if state.get("previous"):
                why = diff_material(state["previous"], state["material"])
                if why:
                    print("  last re-run because:")
                    for reason in why:
                        print(f"  - {reason}")
    return 0
