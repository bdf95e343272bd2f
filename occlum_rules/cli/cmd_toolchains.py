"""``occlum-rules toolchains``: what the workspace resolves to, and why.

A build that silently picked musl-gcc instead of occlum-gcc, or the stand-in LibOS instead
of an install, produces an instance that fails far away from the cause; this command shows
each choice with the setting or search that made it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from occlum_rules.core.workspace import find_root, load_workspace
from occlum_rules.errors import UserError


def _as_json(tc) -> dict:
    from occlum_rules.toolchains.resolve import CargoToolchain

    home, why = tc.occlum_home()
    install = tc.occlum()
    data: dict = {"occlum_home": str(home), "occlum_home_source": why,
                  "occlum": install.as_dict() if install else None,
                  "notes": list(tc.notes), "stages": tc.ws.stages, "tools": {}}
    for kind, finder in (("cc", tc.cc), ("ar", tc.ar), ("cargo", tc.cargo), ("go", tc.go)):
        try:
            tool = finder()
        except UserError as exc:
            data["tools"][kind] = {"error": exc.message}
            continue
        if isinstance(tool, CargoToolchain):
            data["tools"][kind] = {"path": tool.cargo.path, "version": tool.cargo.version,
                                   "source": tool.cargo.source, "runs": tool.run_cargo,
                                   "rustc": tool.rustc.path, "rustc_version": tool.rustc.version,
                                   "fingerprint": tool.fingerprint}
        else:
            data["tools"][kind] = {"path": tool.path, "version": tool.version,
                                   "source": tool.source, "fingerprint": tool.fingerprint}
    return data


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="occlum-rules toolchains",
        description="Show the Occlum install and the compilers the workspace resolves to, "
                    "where each came from (WORKSPACE.yaml, $OCCLUM_HOME, PATH, ...) and its "
                    "fingerprint (the part of every action key that a tool upgrade changes).")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("-C", "--directory", default=".",
                        help="look for the workspace from this directory (default: .)")
    args = parser.parse_args(argv)
    from occlum_rules.toolchains import Toolchains

    ws = load_workspace(find_root(Path(args.directory)))
    tc = Toolchains(ws)
    if args.json:
        print(json.dumps(_as_json(tc), indent=2, sort_keys=True))
    else:
        print(tc.describe())
    return 0
