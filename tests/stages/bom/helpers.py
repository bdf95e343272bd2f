"""Shared helpers for the copy_bom stage tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
HOST_LOADER_CONFIG = Path("/opt/occlum/etc/template/occlum_elf_loader.config")
REDIS_FIXTURE = Path("/srv/bom-fixtures/redis/bin")


def require_host_setup() -> None:
    """Skip unless setup-host.sh of the bom vectors has been run on this machine."""
    missing = [str(p) for p in (HOST_LOADER_CONFIG, REDIS_FIXTURE, Path("/usr/bin/redis-server"),
                                Path("/lib/ld-musl-x86_64.so.1")) if not p.exists()]
    if missing:
        pytest.skip("bom vector host setup absent (run `bash ../shared/vectors/bom/setup-host.sh` "
                    f"as root): missing {', '.join(missing)}")


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "occlum_rules", "copy-bom", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} not installed")
    return path
