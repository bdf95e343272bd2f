"""``occlum-rules explain LABEL``: why an action re-ran (or would re-run).

The state of every action keeps the material its key was computed from, and the material of
the build before it. Comparing the two names the input file, parameter or toolchain that
changed.
"""

from __future__ import annotations

import argparse

from occlum_rules.cli.common import load
from occlum_rules.core.action import key_material, material_changes
from occlum_rules.core.doit_bridge import build_env
from occlum_rules.core.executor import (
    input_digests,
    previous_material,
    read_state,
)
from occlum_rules.errors import UserError


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
            previous = previous_material(env, action.id)
            if previous:
                for reason in material_changes(previous, current) or ["nothing in its key changed"]:
                    print(f"  - {reason}")
            continue
        pending = material_changes(state.get("material") or {}, current)
        if pending:
            print(f"{action.id}: will re-run:")
            for reason in pending:
                print(f"  - {reason}")
        else:
            print(f"{action.id}: up to date (key {state['key'][:16]})")
            if state.get("previous"):
                why = material_changes(state["previous"], state["material"])
                if why:
                    print("  last re-run because:")
                    for reason in why:
                        print(f"  - {reason}")
    return 0
