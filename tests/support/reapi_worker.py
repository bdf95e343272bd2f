"""Real ``occlum-rules worker`` processes against the execution BuildGrid, and a small
REAPI client that uploads a hand-built Action and calls Execute with the raw stubs.

The remote execution tests (this project's worker, and the build engine's client side)
need workers that BuildGrid really schedules on; they are started here as separate
processes, as a team would run them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from occlum_rules.core import reapi_platform
from occlum_rules.core.reapi_cache import ReapiCache, parse_target
from occlum_rules.core.reapi_stubs import load_stubs
from tests.support.buildgrid import BuildGrid


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    work_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as a service manager would; kill only if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def start_worker(server: BuildGrid, directory: Path, *extra: str,
                 env: Mapping[str, str] | None = None) -> WorkerProcess:
    """``python -m occlum_rules worker`` for ``server``, its output in ``directory/worker.log``."""
    directory.mkdir(parents=True, exist_ok=True)
    work_dir = directory / "work"
    log_path = directory / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "occlum_rules", "worker", "--server", server.url,
             "--instance", server.instance, "--work-dir", str(work_dir), *extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=directory,
            env=dict(os.environ if env is None else env))
    worker = WorkerProcess(process, log_path, work_dir)
    deadline = time.monotonic() + 30
    while "bot session" not in worker.log():
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"the worker did not start: {worker.log()[-2000:]}")
        time.sleep(0.1)
    return worker


def lease_started(workers: list[WorkerProcess], deadline: float) -> tuple[WorkerProcess, str]:
    """The first worker whose log says it started a lease, and the lease's id."""
    while time.monotonic() < deadline:
        for worker in workers:
            found = re.search(r"lease (\S+): started", worker.log())
            if found:
                return worker, found.group(1)
        time.sleep(0.05)
    raise AssertionError("no worker started a lease: " + " | ".join(w.log() for w in workers))


@contextlib.contextmanager
def running_workers(server: BuildGrid, directory: Path, count: int = 2,
                    workspace: Path | None = None) -> Iterator[list[WorkerProcess]]:
    """``count`` workers with one job each (offering ``workspace``'s toolchains), stopped
    with SIGTERM on the way out: what a build through remote execution runs against."""
    extra = ["--jobs", "1"] + (["--workspace", str(workspace)] if workspace else [])
    workers: list[WorkerProcess] = []
    try:
        for n in range(count):
            workers.append(start_worker(server, directory / f"worker{n}", *extra))
        yield workers
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture(name="two_workers")
def two_workers_fixture(buildgrid_execution: BuildGrid,
                        tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Two workers with one job each, stopped (SIGTERM) after the test."""
    with running_workers(buildgrid_execution, tmp_path) as workers:
        yield workers


@dataclass
class Client:
    """Uploads inputs and Actions, runs them through Execute, reads results and blobs."""

    server: BuildGrid
    cas: ReapiCache = field(init=False)
    pb: Any = field(init=False)

    def __post_init__(self) -> None:
        self.pb = load_stubs()
        self.cas = ReapiCache(parse_target(self.server.url, self.server.instance, "url",
                                           "instance"), timeout=30.0)

    def close(self) -> None:
        self.cas.close()

    def put(self, *blobs: bytes) -> None:
        assert self.cas.upload_blobs({hashlib.sha256(b).hexdigest(): (len(b), b)
                                      for b in blobs})

    def digest(self, data: bytes) -> Any:
        return self.pb.re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))

    def message(self, message: Any) -> Any:
        """Upload a message; its digest."""
        data = message.SerializeToString(deterministic=True)
        self.put(data)
        return self.digest(data)

    def action(self, argv: Sequence[str], *, files: Mapping[str, tuple[bytes, bool]] = {},
               env: Mapping[str, str] | None = None, output_paths: Sequence[str] = (),
               fingerprints: Sequence[str] = ()) -> Any:
        """An Action over a flat input root of ``files`` (name → (data, executable));
        uploads everything and returns the Action's digest."""
        re = self.pb.re
        root = re.Directory(files=[
            re.FileNode(name=name, digest=self.digest(data), is_executable=executable)
            for name, (data, executable) in sorted(files.items())])
        self.put(*(data for data, _ in files.values()))
        platform = re.Platform(properties=[
            re.Platform.Property(name=k, value=v)
            for k, v in reapi_platform.action_properties(fingerprints)])
        command = re.Command(
            arguments=list(argv),
            environment_variables=[re.Command.EnvironmentVariable(name=k, value=v)
                                   for k, v in sorted((env or {}).items())],
            output_paths=sorted(output_paths), platform=platform)
        action = re.Action(command_digest=self.message(command),
                           input_root_digest=self.message(root), platform=platform,
                           do_not_cache=False)
        return self.message(action)

    def execute(self, action_digest: Any, timeout: float = 120.0) -> Any:
        """Execute (skipping the cache) and wait: the ExecuteResponse."""
        re = self.pb.re
        stub = self.pb.re_grpc.ExecutionStub(self.cas.channel())
        request = re.ExecuteRequest(instance_name=self.server.instance,
                                    action_digest=action_digest, skip_cache_lookup=True)
        for operation in stub.Execute(request, timeout=timeout):
            if operation.done:
                assert operation.WhichOneof("result") == "response", operation
                response = re.ExecuteResponse()
                operation.response.Unpack(response)
                return response
        raise AssertionError("the Execute stream ended before the operation was done")

    def cached_result(self, action_digest: Any) -> Any | None:
        stub = self.pb.re_grpc.ActionCacheStub(self.cas.channel())
        try:
            return stub.GetActionResult(self.pb.re.GetActionResultRequest(
                instance_name=self.server.instance, action_digest=action_digest), timeout=30)
        except self.pb.grpc.RpcError as exc:
            if exc.code() == self.pb.grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def blob(self, digest: Any) -> bytes:
        if digest.size_bytes == 0:
            return b""
        got = self.cas.read_blobs({digest.hash: digest.size_bytes})
        assert got is not None, f"blob {digest.hash} is not in CAS"
        return got[digest.hash]

    def missing(self, digests: Sequence[Any]) -> list[str]:
        stub = self.pb.re_grpc.ContentAddressableStorageStub(self.cas.channel())
        answer = stub.FindMissingBlobs(self.pb.re.FindMissingBlobsRequest(
            instance_name=self.server.instance, blob_digests=list(digests)), timeout=30)
        return sorted(d.hash for d in answer.missing_blob_digests)
