"""``occlum-rules worker`` against a real BuildGrid (Execution + Bots on PostgreSQL).

Two worker processes take BuildGrid's leases; the test client uploads hand-built Actions and
calls Execute. What must hold: the ActionResult describes exactly what the command wrote
(contents, executable bits, directories as Trees, symlinks) and every blob it names is in
CAS; the command saw only its own environment; a worker killed mid-action costs a retry,
not the build, and leaves nothing partial behind.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from occlum_rules import __version__
from tests.support.buildgrid import (  # noqa: F401 - fixtures
    BuildGrid,
    buildgrid_execution_fixture,
    postgres_fixture,
)
from tests.support.nginx import free_port
from tests.support.reapi_worker import (  # noqa: F401 - a fixture
    Client,
    WorkerProcess,
    two_workers_fixture,
)

SHELL_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture(name="client")
def client_fixture(buildgrid_execution: BuildGrid) -> Iterator[Client]:
    client = Client(buildgrid_execution)
    try:
        yield client
    finally:
        client.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(client: Client, digest: Any) -> Any:
    tree = client.pb.re.Tree()
    tree.ParseFromString(client.blob(digest))
    return tree


def _all_digests(client: Client, result: Any) -> list[Any]:
    """Every blob the result names, through its Trees."""
    digests = [f.digest for f in result.output_files]
    digests += [result.stdout_digest, result.stderr_digest]
    for directory in result.output_directories:
        digests.append(directory.tree_digest)
        tree = _tree(client, directory.tree_digest)
        for node in [tree.root, *tree.children]:
            digests += [f.digest for f in node.files]
    return [d for d in digests if d.size_bytes > 0]


def test_runs_an_action_and_stores_its_outputs(client: Client,
                                               two_workers: list[WorkerProcess]) -> None:
    script = (b"set -e\n"
              b"mkdir -p out/dir/sub\n"
              b"tr a-z A-Z < in.txt > out/file.txt\n"
              b"printf '#!/bin/sh\\necho hi\\n' > out/dir/sub/tool && chmod 755 out/dir/sub/tool\n"
              b"printf data > out/dir/plain\n"
              b"ln -s plain out/dir/alias\n"
              b"ln -s file.txt out/link\n"
              b"echo to-stdout; echo to-stderr >&2\n")
    action = client.action(["sh", "script.sh"],
                           files={"script.sh": (script, False), "in.txt": (b"hello\n", False)},
                           env=SHELL_ENV,
                           output_paths=["out/file.txt", "out/dir", "out/link", "out/absent"])
    response = client.execute(action)
    assert response.status.code == 0, response.status
    result = response.result
    assert result.exit_code == 0, client.blob(result.stderr_digest)
    assert client.blob(result.stdout_digest) == b"to-stdout\n"
    assert client.blob(result.stderr_digest) == b"to-stderr\n"

    assert [(f.path, f.digest.hash, f.is_executable) for f in result.output_files] == \
        [("out/file.txt", _sha(b"HELLO\n"), False)]
    assert [(s.path, s.target) for s in result.output_symlinks] == [("out/link", "file.txt")]
    assert [d.path for d in result.output_directories] == ["out/dir"]
    tree = _tree(client, result.output_directories[0].tree_digest)
    assert [(f.name, f.digest.hash) for f in tree.root.files] == [("plain", _sha(b"data"))]
    assert [(s.name, s.target) for s in tree.root.symlinks] == [("alias", "plain")]
    assert [d.name for d in tree.root.directories] == ["sub"]
    (sub,) = tree.children
    assert client.digest(sub.SerializeToString(deterministic=True)) == \
        tree.root.directories[0].digest
    assert [(f.name, f.is_executable) for f in sub.files] == [("tool", True)]
    assert client.blob(sub.files[0].digest) == b"#!/bin/sh\necho hi\n"

    assert client.missing(_all_digests(client, result)) == []
    cached = client.cached_result(action)
    assert cached is not None and list(cached.output_files) == list(result.output_files)


def test_command_sees_only_its_own_environment(client: Client,
                                               two_workers: list[WorkerProcess]) -> None:
    action = client.action(["/usr/bin/env"], env={"ONLY": "this"})
    response = client.execute(action)
    assert response.result.exit_code == 0
    assert client.blob(response.result.stdout_digest) == b"ONLY=this\n"


def test_failing_command_reports_its_exit_code(client: Client,
                                               two_workers: list[WorkerProcess]) -> None:
    action = client.action(["sh", "-c", "echo nope >&2; exit 3"], env=SHELL_ENV)
    response = client.execute(action)
    assert response.status.code == 0
    assert response.result.exit_code == 3
    assert client.blob(response.result.stderr_digest) == b"nope\n"


def test_occlum_rules_argv0_runs_the_workers_own_install(
        client: Client, two_workers: list[WorkerProcess]) -> None:
    action = client.action(["occlum-rules", "version"])
    response = client.execute(action)
    assert response.result.exit_code == 0, client.blob(response.result.stderr_digest)
    assert __version__ in client.blob(response.result.stdout_digest).decode()


def _lease_started(workers: list[WorkerProcess], deadline: float) -> tuple[WorkerProcess, str]:
    while time.monotonic() < deadline:
        for worker in workers:
            found = re.search(r"lease (\S+): started", worker.log())
            if found:
                return worker, found.group(1)
        time.sleep(0.05)
    raise AssertionError("no worker started the lease: " + " | ".join(w.log() for w in workers))


def test_worker_killed_mid_action_costs_a_retry_not_the_build(
        client: Client, two_workers: list[WorkerProcess], tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    marker.mkdir()
    script = (f"set -e\nmkdir -p out\nprintf partial > out/result.txt\n"
              f"touch {marker}/run.$$\nsleep 3\nprintf complete > out/result.txt\n").encode()
    action = client.action(["sh", "script.sh"], files={"script.sh": (script, False)},
                           env=SHELL_ENV, output_paths=["out/result.txt"])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.execute, action, 120.0)
        victim, lease = _lease_started(two_workers, time.monotonic() + 60)
        while not any(marker.iterdir()):  # the command itself is running
            time.sleep(0.05)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        assert client.cached_result(action) is None  # nothing stored while it is retried
        response = pending.result(timeout=120)
    (survivor,) = [w for w in two_workers if w is not victim]
    assert response.status.code == 0, response.status
    result = response.result
    assert result.exit_code == 0, client.blob(result.stderr_digest)
    assert [(f.path, client.blob(f.digest)) for f in result.output_files] == \
        [("out/result.txt", b"complete")]
    assert f"lease {lease}: completed" in survivor.log()
    assert len(list(marker.iterdir())) == 2  # it ran twice: once killed, once to the end
    cached = client.cached_result(action)
    assert cached is not None
    assert [(f.path, f.digest.hash) for f in cached.output_files] == \
        [("out/result.txt", _sha(b"complete"))]
    assert client.missing(_all_digests(client, cached)) == []


def test_sigterm_stops_cleanly_with_one_line(buildgrid_execution: BuildGrid,
                                             tmp_path: Path) -> None:
    from tests.support.reapi_worker import start_worker

    worker = start_worker(buildgrid_execution, tmp_path / "w")
    assert worker.stop() == 0
    log = worker.log()
    assert "Traceback" not in log
    assert log.splitlines()[-1] == "worker: stopped (SIGTERM)"


def test_dead_server_is_one_error_line_within_bounded_time(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "occlum_rules", "worker", "--server",
         f"grpc://127.0.0.1:{free_port()}", "--server-timeout", "2", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "did not answer for 2 s" in lines[0]


def test_bad_jobs_value_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "occlum_rules", "worker", "--server",
                           "grpc://127.0.0.1:1", "--jobs", "0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "--jobs" in done.stderr and "Traceback" not in done.stderr
