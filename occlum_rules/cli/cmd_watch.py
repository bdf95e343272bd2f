"""``occlum-rules watch``: run the watcher daemon of the workspace here, in the foreground.

Argument parsing and messages; core/watcher.py is the daemon, core/watch_client.py the
build's side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from occlum_rules.core.watch_client import SOCKET, status
from occlum_rules.core.workspace import find_root, load_workspace
from occlum_rules.errors import UserError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="occlum-rules watch",
        description="Watch this workspace's output trees (Linux inotify) so a null build "
                    "need not stat every output file. Runs until interrupted; without it, "
                    "builds check outputs by walking them, as always.")
    parser.add_argument("--status", action="store_true",
                        help="print what a running watcher knows and exit (1 if none runs)")
    args = parser.parse_args(argv)
    ws = load_workspace(find_root(Path.cwd()))
    if args.status:
        found = status(str(ws.state_dir))
        if found is None:
            print(f"no watcher serves {ws.root}", file=sys.stderr)
            return 1
        print(json.dumps(found, sort_keys=True))
        return 0
    if not sys.platform.startswith("linux"):
        raise UserError("occlum-rules watch needs Linux inotify; builds walk their outputs instead")
    sock = ws.state_dir / SOCKET
    if len(str(sock).encode()) > 107:
        raise UserError(f"the watcher's socket path {sock} is longer than a Unix socket "
                        "allows (107 bytes); move the workspace to a shorter path")
    from occlum_rules.core.watcher import serve  # only this command needs the daemon

    ws.state_dir.mkdir(parents=True, exist_ok=True)
    return serve(ws.state_dir, ws.out,
                 ready=lambda: print(f"occlum-rules watch: watching {ws.out}", flush=True))
