"""``occlum-rules worker`` against a real BuildGrid (Execution + Bots on PostgreSQL).

Two worker processes take BuildGrid's leases; the test client uploads hand-built Actions and
calls Execute. What must hold: the ActionResult describes exactly what the command wrote
(contents, executable bits, directories as Trees, symlinks) and every blob it names is in
CAS; the command saw only its own environment; a worker killed mid-action costs a retry,
not the build, and leaves nothing partial behind.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
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
from tests.support.reapi_worker import (  # noqa: F401 - a fixture
    Client,
    WorkerProcess,
    lease_started,
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


def _running_in(directory: Path) -> list[int]:
    """Processes whose working directory is inside ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(f"{directory}/"):
                found.append(int(entry.name))
    return found


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
        victim, lease = lease_started(two_workers, time.monotonic() + 60)
        while not any(marker.iterdir()):  # the command itself is running
            time.sleep(0.05)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        # its command (a `sleep 3` just started) dies with it, not 3 s later
        deadline = time.monotonic() + 1.0
        while _running_in(victim.work_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running_in(victim.work_dir) == []
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


def test_a_worker_offers_its_workspace_toolchains(buildgrid_execution: BuildGrid,
                                                  client: Client, tmp_path: Path) -> None:
    """An action that asks for gcc's fingerprint runs on a worker whose workspace resolves
    that gcc; the worker without a workspace (no toolchain properties) cannot take it."""
    from occlum_rules.core.workspace import load_workspace
    from occlum_rules.toolchains import Toolchains
    from tests.support.reapi_worker import start_worker
    from tests.support.workspace import make_workspace

    root = make_workspace(tmp_path / "ws", {}, "toolchains:\n  cc: [gcc]\n")
    gcc = Toolchains(load_workspace(root)).cc()
    bare = start_worker(buildgrid_execution, tmp_path / "bare")
    try:
        action = client.action([gcc.path, "--version"], fingerprints=[gcc.fingerprint])
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.execute, action, 120.0)
            time.sleep(3)
            assert not pending.done()  # queued: the bare worker does not match
            assert "started" not in bare.log()
            equipped = start_worker(buildgrid_execution, tmp_path / "equipped",
                                    "--workspace", str(root))
            try:
                response = pending.result(timeout=120)
            finally:
                equipped.stop()
        assert response.result.exit_code == 0
        here = subprocess.run([gcc.path, "--version"], capture_output=True, check=True).stdout
        assert client.blob(response.result.stdout_digest) == here
        assert "completed" in equipped.log() and "started" not in bare.log()
    finally:
        bare.stop()


def test_jobs_run_leases_side_by_side(buildgrid_execution: BuildGrid, client: Client,
                                      tmp_path: Path) -> None:
    from tests.support.reapi_worker import start_worker

    marker = tmp_path / "running"
    marker.mkdir()
    # each action waits (up to 20 s) until both are running: only parallel leases finish fast
    script = (f"touch {marker}/$1\nn=0\nwhile [ $(ls {marker} | wc -l) -lt 2 ]; do\n"
              f"  n=$((n+1)); [ $n -gt 200 ] && exit 9; sleep 0.1\ndone\n").encode()
    worker = start_worker(buildgrid_execution, tmp_path / "w", "--jobs", "2")
    try:
        actions = [client.action(["sh", "script.sh", name], files={"script.sh": (script, False)},
                                 env=SHELL_ENV) for name in ("a", "b")]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(lambda a: client.execute(a, 120.0), actions))
    finally:
        worker.stop()
    assert [r.result.exit_code for r in responses] == [0, 0]
    assert worker.log().count("completed, exit code 0") == 2


def test_a_failed_upload_leaves_no_action_result(buildgrid_execution: BuildGrid,
                                                 client: Client, tmp_path: Path) -> None:
    """The outputs cannot be uploaded (a client with uploads off): the lease fails with a
    retryable status and nothing of the result is reported."""
    from occlum_rules.core.reapi_cache import ReapiCache, parse_target
    from occlum_rules.core.reapi_worker import UNAVAILABLE, Job, LeaseFailed, run_action

    action_digest = client.action(["sh", "-c", "echo out > o.txt"], env=SHELL_ENV,
                                  output_paths=["o.txt"])
    action = client.pb.re.Action()
    action.ParseFromString(client.blob(action_digest))
    no_upload = ReapiCache(parse_target(buildgrid_execution.url, buildgrid_execution.instance,
                                        "url", "instance"), upload=False)
    try:
        with pytest.raises(LeaseFailed) as failed:
            run_action(no_upload, client.pb, action, Job("lease"), tmp_path)
    finally:
        no_upload.close()
    assert failed.value.code == UNAVAILABLE
    assert list(tmp_path.iterdir()) == []  # the fresh directory is gone too
    assert client.cached_result(action_digest) is None


def test_sigterm_mid_action_hands_the_lease_back(client: Client,
                                                 two_workers: list[WorkerProcess],
                                                 tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    marker.mkdir()
    script = (f"touch {marker}/run.$$\nsleep 3\nprintf done > out.txt\n").encode()
    action = client.action(["sh", "script.sh"], files={"script.sh": (script, False)},
                           env=SHELL_ENV, output_paths=["out.txt"])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.execute, action, 120.0)
        stopped, lease = lease_started(two_workers, time.monotonic() + 60)
        while not any(marker.iterdir()):
            time.sleep(0.05)
        assert stopped.stop() == 0
        response = pending.result(timeout=120)
    (other,) = [w for w in two_workers if w is not stopped]
    assert stopped.log().splitlines()[-1] == "worker: stopped (SIGTERM)"
    assert "Traceback" not in stopped.log()
    assert response.result.exit_code == 0
    assert [(f.path, client.blob(f.digest)) for f in response.result.output_files] == \
        [("out.txt", b"done")]
    assert f"lease {lease}: completed" in other.log()
    assert len(list(marker.iterdir())) == 2
