"""``occlum-rules run-action FILE``: run one action inside its REAPI input root (on a worker).

Argument parsing only; core/remote_run.py runs the action.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from occlum_rules.core.remote_run import read_document, run_in_root


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="occlum-rules run-action",
        description="Run the action described by FILE (.occlum-rules/action.json of a remote "
                    "execution input root) with the current directory as its workspace.")
    parser.add_argument("file", help="the action's parameter file, relative to the input root")
    args = parser.parse_args(argv)
    run_in_root(Path.cwd(), read_document(Path(args.file)))
    return 0
