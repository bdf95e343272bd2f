"""Run a REAPI action the way the contract says a worker runs it, without a worker.

The input root is materialized from the Directory messages and blobs a client would upload
(files from their local sources, small blobs from memory), the Command runs there with
exactly its environment (``occlum-rules`` as argv[0] meaning this interpreter's
``-m occlum_rules``), and the output paths are read back. It proves the Command and input
root are self-contained before any scheduler is involved."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from occlum_rules.core.reapi_action import ENTRY_POINT, RemoteAction


def materialize(pb, remote: RemoteAction, dest: Path) -> None:
    dest.mkdir(parents=True)

    def blob_to(digest: str, path: Path) -> None:
        if digest in remote.memory:
            path.write_bytes(remote.memory[digest])
        else:
            shutil.copyfile(remote.files[digest].source, path)

    def walk(digest: str, where: Path) -> None:
        directory = pb.re.Directory()
        directory.ParseFromString(remote.memory[digest])
        for f in directory.files:
            blob_to(f.digest.hash, where / f.name)
            os.chmod(where / f.name, 0o755 if f.is_executable else 0o644)
        for link in directory.symlinks:
            os.symlink(link.target, where / link.name)
        for d in directory.directories:
            (where / d.name).mkdir()
            walk(d.digest.hash, where / d.name)

    walk(remote.root_digest, dest)


def run_command(pb, remote: RemoteAction, root: Path) -> subprocess.CompletedProcess:
    command = pb.re.Command()
    command.ParseFromString(remote.command_bytes)
    argv = list(command.arguments)
    if argv[0] == ENTRY_POINT:
        argv = [sys.executable, "-m", "occlum_rules", *argv[1:]]
    env = {v.name: v.value for v in command.environment_variables}
    cwd = root / command.working_directory if command.working_directory else root
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
