"""``occlum-rules worker`` as a command: its help, and its errors without a server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.support.nginx import free_port


def _worker(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "occlum_rules", "worker", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def test_help_names_the_options(tmp_path: Path) -> None:
    done = _worker("--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in ("--server", "--instance", "--jobs", "--work-dir", "--workspace"):
        assert option in done.stdout


def test_dead_server_is_one_error_line_within_bounded_time(tmp_path: Path) -> None:
    started = time.monotonic()
    done = _worker("--server", f"grpc://127.0.0.1:{free_port()}", "--server-timeout", "2",
                   "--quiet", cwd=tmp_path)
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "did not answer for 2 s" in lines[0]


def test_bad_jobs_value_is_a_usage_error(tmp_path: Path) -> None:
    done = _worker("--server", "grpc://127.0.0.1:1", "--jobs", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert "--jobs" in done.stderr and "Traceback" not in done.stderr


def test_a_workspace_without_workspace_yaml_is_one_clear_error(tmp_path: Path) -> None:
    done = _worker("--server", "grpc://127.0.0.1:1", "--workspace", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: --workspace: no WORKSPACE.yaml in {tmp_path}"


def test_a_bad_server_url_is_one_clear_error(tmp_path: Path) -> None:
    done = _worker("--server", "http://127.0.0.1:1", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: --server: ") and "grpc://" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
