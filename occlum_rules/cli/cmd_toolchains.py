"""``occlum-rules toolchains``: what was resolved, and why."""

from __future__ import annotations

import argparse
from pathlib import Path

from occlum_rules.core.workspace import find_root, load_workspace
from occlum_rules.errors import UserError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="occlum-rules toolchains",
                                     description="Show the toolchains the workspace resolves to.")
    parser.parse_args(argv)
    from occlum_rules.toolchains import Toolchains

    ws = load_workspace(find_root(Path.cwd()))
    tc = Toolchains(ws)
    describe = getattr(tc, "describe", None)
    if describe is not None:
        print(describe())
        return 0
    for kind, finder in (("cc", tc.cc), ("ar", tc.ar)):
        try:
            tool = finder()
            print(f"{kind:6} {tool.path}  [{tool.version}]  from {tool.source}")
        except UserError as exc:
            print(f"{kind:6} not found: {exc}")
    return 0
