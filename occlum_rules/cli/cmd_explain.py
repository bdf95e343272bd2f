"""``occlum-rules explain LABEL``: why an action re-ran (or would re-run).

Argument parsing and printing; core/explain.py compares the key materials.
"""

from __future__ import annotations

import argparse

from occlum_rules.cli.common import load
from occlum_rules.core.doit_bridge import build_env
from occlum_rules.core.explain import explain
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
        found = explain(action, env)
        if found.status == "unknown":
            print(f"{action.id}: cannot compute its key now: {found.detail}")
        elif found.status == "not built":
            print(f"{action.id}: not built yet (or its last run did not finish)")
        elif found.status == "will re-run":
            print(f"{action.id}: will re-run:")
        else:
            print(f"{action.id}: up to date (key {found.detail})")
            if found.reasons:
                print("  last re-run because:")
        for reason in found.reasons:
            print(f"  - {reason}")
    return 0
