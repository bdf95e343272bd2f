"""A Remote Workers API bot: runs the actions a REAPI scheduler (BuildGrid) leases to it.

BuildGrid queues and assigns work but runs nothing itself; its usual bots (buildbox) are not
installable everywhere. This bot keeps to the standard and to little else:

- one ``CreateBotSession``, then ``UpdateBotSession`` calls that long-poll for leases; a
  finished job cancels the poll so its result goes back at once. ``capacity`` (a worker
  config BuildGrid reads) is ``--jobs``; the primary device offers the platform properties
  of ``core/reapi_platform.py``, so only actions our toolchains can run come here;
- a lease's Action is run in a fresh directory holding exactly its input root (fetched from
  CAS through ``core/reapi_cache.py``'s client), with exactly the Command's environment;
  argv[0] ``occlum-rules`` runs this worker's own interpreter and release;
- outputs, stdout and stderr go to CAS (``FindMissingBlobs`` first) *before* the lease is
  reported COMPLETED with the ActionResult. If anything fails on the way, the lease reports
  UNAVAILABLE with no result, which BuildGrid retries on a bot; a bot killed mid-action
  stops answering, so BuildGrid reaps its session and requeues the lease. Either way no
  partial ActionResult exists: BuildGrid writes one only from a COMPLETED lease.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from occlum_rules.core.reapi_cache import ReapiCache
from occlum_rules.errors import UserError

ENGINE_ARGV0 = "occlum-rules"
CAPACITY_KEY = "capacity"  # the worker config BuildGrid reads as a bot's lease capacity
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# google.rpc.Code values the Bots API carries in Lease.status
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE = 0, 3, 4, 13, 14

# google.devtools.remoteworkers.v1test2 LeaseState / BotStatus
PENDING, ACTIVE, COMPLETED, CANCELLED = 1, 2, 4, 5
BOT_OK = 1


class LeaseFailed(Exception):
    """A lease that cannot produce an ActionResult; ``code`` says whether a retry may help."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def load_bot_stubs() -> Any:
    from buildgrid.common.protos.google.devtools.remoteworkers.v1test2 import (
        bots_pb2,
        bots_pb2_grpc,
        worker_pb2,
    )
    from buildgrid.common.protos.google.rpc import status_pb2

    return bots_pb2, bots_pb2_grpc, worker_pb2, status_pb2


# ------------------------------------------------------------------ the input root


def _child(base: Path, name: str) -> Path:
    """A Directory entry's name is one path component: anything else could escape the root."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise LeaseFailed(INVALID_ARGUMENT, f"invalid name {name!r} in the input root")
    return base / name


def materialize(cas: ReapiCache, pb: Any, root_digest: Any, dest: Path) -> None:
    """Write the Directory tree ``root_digest`` into ``dest`` (an empty directory).

    Directory messages are fetched a level at a time in batches; small files too, large
    ones streamed to disk; a file digest seen twice is fetched once and copied."""
    level: list[tuple[Path, str, int]] = [(dest, root_digest.hash, root_digest.size_bytes)]
    files: dict[str, list[tuple[Path, int, bool]]] = {}
    while level:
        wanted = {h: s for _, h, s in level if s > 0}
        blobs = cas.read_blobs(wanted)
        if blobs is None:
            raise LeaseFailed(UNAVAILABLE, "could not fetch the input root's directories")
        next_level: list[tuple[Path, str, int]] = []
        for path, digest, size in level:
            directory = pb.re.Directory()
            if size > 0:
                directory.ParseFromString(blobs[digest])
            path.mkdir(exist_ok=True)
            for f in directory.files:
                files.setdefault(f.digest.hash, []).append(
                    (_child(path, f.name), f.digest.size_bytes, f.is_executable))
            for d in directory.directories:
                next_level.append((_child(path, d.name), d.digest.hash, d.digest.size_bytes))
            for link in directory.symlinks:
                os.symlink(link.target, _child(path, link.name))
        level = next_level
    for digest, places in sorted(files.items()):
        first, size, _ = places[0]
        if size == 0:
            first.touch()
        elif not cas.download_file(digest, size, first, 0o644):
            raise LeaseFailed(UNAVAILABLE, f"could not fetch input blob {digest[:12]}…")
        for path, _, _ in places[1:]:
            shutil.copyfile(first, path)
        for path, _, executable in places:
            os.chmod(path, 0o755 if executable else 0o644)


# ------------------------------------------------------------------ outputs


@dataclass
class _Blobs:
    """What an ActionResult names, to upload before the result exists: sha256 → source."""

    items: dict[str, tuple[int, bytes | Path]] = field(default_factory=dict)

    def file(self, pb: Any, path: Path) -> Any:
        import hashlib

        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
        self.items[digest.hexdigest()] = (size, path)
        return pb.re.Digest(hash=digest.hexdigest(), size_bytes=size)

    def message(self, pb: Any, message: Any) -> Any:
        import hashlib

        data = message.SerializeToString(deterministic=True)
        digest = hashlib.sha256(data).hexdigest()
        self.items[digest] = (len(data), data)
        return pb.re.Digest(hash=digest, size_bytes=len(data))


def _is_executable(path: Path) -> bool:
    return bool(os.stat(path).st_mode & stat.S_IXUSR)


def _directory(pb: Any, blobs: _Blobs, path: Path, children: dict[str, Any]) -> Any:
    """The Directory message of ``path`` (recursively; children collected for the Tree)."""
    directory = pb.re.Directory()
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        full = Path(entry.path)
        if entry.is_symlink():
            directory.symlinks.add(name=entry.name, target=os.readlink(full))
        elif entry.is_dir():
            child = _directory(pb, blobs, full, children)
            data = child.SerializeToString(deterministic=True)
            import hashlib

            digest = hashlib.sha256(data).hexdigest()
            children[digest] = child
            directory.directories.add(name=entry.name, digest=pb.re.Digest(
                hash=digest, size_bytes=len(data)))
        elif entry.is_file():
            directory.files.add(name=entry.name, digest=blobs.file(pb, full),
                                is_executable=_is_executable(full))
    return directory


def _inside(root: Path, relative: str) -> Path:
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise LeaseFailed(INVALID_ARGUMENT, f"output path {relative!r} leaves the input root")
    return root / pure


def collect_outputs(pb: Any, command: Any, workdir: Path, result: Any, blobs: _Blobs) -> None:
    """Fill ``result``'s outputs from ``workdir`` (the Command's working directory).

    ``output_paths`` (REAPI v2.1) when set, else ``output_files`` + ``output_directories``;
    a path that was not produced is left out, as the API says."""
    wanted: list[tuple[str, str | None]]
    if command.output_paths:
        wanted = [(p, None) for p in command.output_paths]
    else:
        wanted = [(p, "file") for p in command.output_files] + \
                 [(p, "dir") for p in command.output_directories]
    for relative, kind in sorted(wanted):
        path = _inside(workdir, relative)
        if path.is_symlink():
            target = os.readlink(path)
            if kind is None:
                result.output_symlinks.add(path=relative, target=target)
            elif kind == "file":
                result.output_file_symlinks.add(path=relative, target=target)
            else:
                result.output_directory_symlinks.add(path=relative, target=target)
        elif path.is_dir() and kind in (None, "dir"):
            children: dict[str, Any] = {}
            root = _directory(pb, blobs, path, children)
            tree = pb.re.Tree(root=root, children=[children[d] for d in sorted(children)])
            result.output_directories.add(path=relative, tree_digest=blobs.message(pb, tree))
        elif path.is_file() and kind in (None, "file"):
            result.output_files.add(path=relative, digest=blobs.file(pb, path),
                                    is_executable=_is_executable(path))


# ------------------------------------------------------------------ one action


def command_argv(arguments: Iterable[str]) -> list[str]:
    """``occlum-rules …`` runs through this interpreter (the ENGINE property pins the release)."""
    argv = list(arguments)
    if argv and argv[0] == ENGINE_ARGV0:
        return [sys.executable, "-m", "occlum_rules", *argv[1:]]
    return argv


# The guard is the command's process-group leader: the kernel sends it SIGTERM when the
# worker thread that started it dies (even by SIGKILL), and it then kills the whole group, so
# no compiler outlives its worker. dash exports PWD, which the Command did not ask for.
_GUARD = 'trap "kill -KILL 0" TERM; "$@" & wait $!'


def guarded_argv(argv: list[str], env: dict[str, str]) -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None or not os.path.exists("/bin/sh"):
        return argv
    script = _GUARD if "PWD" in env else "unset PWD; " + _GUARD
    return [setpriv, "--pdeathsig", "TERM", "--", "/bin/sh", "-c", script, "sh", *argv]


@dataclass
class Job:
    """One running lease: its process, so cancelling or stopping can kill it."""

    lease_id: str
    process: subprocess.Popen[bytes] | None = None
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def kill(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.process is not None and self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def run_action(cas: ReapiCache, pb: Any, action: Any, job: Job, work_root: Path) -> Any:
    """Run ``action`` in a fresh directory and return its ActionResult, its blobs in CAS.

    Raises LeaseFailed when no complete result can be had."""
    fetched = cas.read_blobs({action.command_digest.hash: action.command_digest.size_bytes})
    if fetched is None:
        raise LeaseFailed(UNAVAILABLE, "could not fetch the Command")
    command = pb.re.Command()
    command.ParseFromString(fetched[action.command_digest.hash])
    if not command.arguments:
        raise LeaseFailed(INVALID_ARGUMENT, "the Command has no arguments")
    jobdir = Path(tempfile.mkdtemp(prefix="lease-", dir=work_root))
    try:
        root = jobdir / "root"
        root.mkdir()
        materialize(cas, pb, action.input_root_digest, root)
        cwd = _inside(root, command.working_directory or ".")
        if command.output_paths:
            parents = list(command.output_paths)
        else:
            parents = [*command.output_files, *command.output_directories]
        for relative in parents:  # REAPI: the worker creates outputs' parent directories
            _inside(cwd, relative).parent.mkdir(parents=True, exist_ok=True)
        env = {v.name: v.value for v in command.environment_variables}
        timeout = action.timeout.seconds + action.timeout.nanos / 1e9 \
            if action.HasField("timeout") else None
        stdout, stderr = jobdir / "stdout", jobdir / "stderr"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            with job.lock:
                if job.cancelled:
                    raise LeaseFailed(UNAVAILABLE, "cancelled")
                try:
                    job.process = subprocess.Popen(
                        guarded_argv(command_argv(command.arguments), env), cwd=cwd, env=env,
                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                        start_new_session=True)
                except OSError as exc:
                    err.write(f"{command.arguments[0]}: {exc.strerror}\n".encode())
                    job.process = None
            timed_out = False
            if job.process is None:
                exit_code = 127
            else:
                try:
                    exit_code = job.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    job.kill()
                    exit_code = job.process.wait()
                    timed_out = True
        if job.cancelled and not timed_out:
            raise LeaseFailed(UNAVAILABLE, "cancelled")
        result = pb.re.ActionResult(exit_code=exit_code)
        blobs = _Blobs()
        collect_outputs(pb, command, cwd, result, blobs)
        result.stdout_digest.CopyFrom(blobs.file(pb, stdout))
        result.stderr_digest.CopyFrom(blobs.file(pb, stderr))
        blobs.items.pop(EMPTY_SHA256, None)  # the empty blob is implied by its digest
        if not cas.upload_blobs(blobs.items):
            raise LeaseFailed(UNAVAILABLE, "could not upload the outputs")
        if timed_out:
            raise LeaseFailed(DEADLINE_EXCEEDED, f"the action ran longer than {timeout} s")
        return result
    finally:
        shutil.rmtree(jobdir, ignore_errors=True)


# ------------------------------------------------------------------ the bot


QUICK_ANSWER = 0.2  # seconds: an UpdateBotSession answered faster did not long-poll


@dataclass
class WorkerOptions:
    instance: str
    jobs: int
    work_dir: Path
    properties: list[tuple[str, str]]
    server_timeout: float = 30.0  # how long the server may be unreachable before we give up
    poll_timeout: float = 30.0


class Bot:
    """The session loop; jobs run on a thread pool of ``jobs`` threads."""

    def __init__(self, cas: ReapiCache, options: WorkerOptions,
                 log: Callable[[str], None] = lambda _: None):
        self.cas = cas
        self.pb = cas.stubs
        self.options = options
        self.log = log
        self.bots_pb2, bots_grpc, self.worker_pb2, self.status_pb2 = load_bot_stubs()
        self.stub = bots_grpc.BotsStub(cas.channel())
        self.metadata = cas.call_metadata
        self.pool = ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="lease")
        self.running: dict[str, tuple[Job, Future[Any]]] = {}
        self.outbox: dict[str, Any] = {}  # lease id -> COMPLETED Lease not yet delivered
        self.finished = threading.Event()
        self.stopping = threading.Event()
        self.session: Any = None

    def _bot_session(self) -> Any:
        worker = self.worker_pb2.Worker(
            devices=[self.worker_pb2.Device(
                handle=socket.gethostname(),
                properties=[self.worker_pb2.Device.Property(key=k, value=v)
                            for k, v in self.options.properties])],
            configs=[self.worker_pb2.Worker.Config(key=CAPACITY_KEY,
                                                   value=str(self.options.jobs))])
        bot_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return self.bots_pb2.BotSession(bot_id=bot_id, status=BOT_OK, worker=worker)

    def _call(self, make: Callable[[], Any]) -> Any:
        """A Bots call, retried while the server is unreachable for up to server_timeout."""
        grpc = self.pb.grpc
        give_up = time.monotonic() + self.options.server_timeout
        pause = 0.2
        while True:
            future = make()
            while not future.done():
                if self.stopping.is_set() or (self.finished.wait(0.05) and self._any_done()):
                    future.cancel()
            try:
                return future.result()
            except grpc.FutureCancelledError:
                return None
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.CANCELLED:
                    return None
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION):
                    raise UserError(f"the server refused the bot session: {code.name}: "
                                    f"{exc.details()}", where=self.cas.display_url) from None
                if time.monotonic() + pause > give_up:
                    raise UserError(
                        f"the server did not answer for {self.options.server_timeout:g} s "
                        f"({code.name})", where=self.cas.display_url) from None
                if self.stopping.wait(pause):
                    return None
                pause = min(pause * 2, 2.0)

    def _any_done(self) -> bool:
        return any(future.done() for _, future in self.running.values())

    def _start(self, lease: Any) -> None:
        action = self.pb.re.Action()
        digest = self.pb.re.Digest()
        payload_action = lease.payload.Is(action.DESCRIPTOR)
        if payload_action:
            lease.payload.Unpack(action)
        else:
            lease.payload.Unpack(digest)
        job = Job(lease.id)

        def work() -> Any:
            try:
                if not payload_action:
                    got = self.cas.read_blobs({digest.hash: digest.size_bytes})
                    if got is None:
                        raise LeaseFailed(UNAVAILABLE, "could not fetch the Action")
                    action.ParseFromString(got[digest.hash])
                return run_action(self.cas, self.pb, action, job, self.options.work_dir)
            finally:
                self.finished.set()

        self.running[lease.id] = (job, self.pool.submit(work))
        self.log(f"lease {lease.id}: started")

    def _report_finished(self) -> None:
        """Move finished jobs into the outbox: COMPLETED leases sent until an update lands."""
        self.finished.clear()
        for lease_id, (job, future) in list(self.running.items()):
            if not future.done():
                continue
            del self.running[lease_id]
            if job.cancelled:
                continue  # the server cancelled it: nothing to report
            lease = self.bots_pb2.Lease(id=lease_id, state=COMPLETED)
            exc = future.exception()
            if exc is None:
                lease.status.CopyFrom(self.status_pb2.Status(code=OK))
                lease.result.Pack(future.result())
                self.log(f"lease {lease_id}: completed, exit code {future.result().exit_code}")
            else:
                code = exc.code if isinstance(exc, LeaseFailed) else INTERNAL
                lease.status.CopyFrom(self.status_pb2.Status(code=code, message=str(exc)))
                self.log(f"lease {lease_id}: failed: {exc}")
            self.outbox[lease_id] = lease

    def _sync(self) -> None:
        """Start new leases, kill cancelled ones and those the server no longer lists."""
        listed = set()
        for lease in self.session.leases:
            listed.add(lease.id)
            # BuildGrid hands out new leases already ACTIVE; the API's PENDING works too
            if lease.state in (PENDING, ACTIVE) and lease.id not in self.running \
                    and lease.id not in self.outbox:
                self._start(lease)
            elif lease.state == CANCELLED and lease.id in self.running:
                self.running[lease.id][0].kill()
        for lease_id in [i for i in self.running if i not in listed]:
            self.running[lease_id][0].kill()  # the server took it back

    def _outgoing(self) -> Any:
        """The session to send: the running leases (ACTIVE) and the outbox."""
        session = self.bots_pb2.BotSession()
        session.CopyFrom(self.session)
        del session.leases[:]
        for lease in self.session.leases:
            if lease.id in self.running and lease.id not in self.outbox:
                active = session.leases.add()
                active.CopyFrom(lease)
                active.state = ACTIVE
        session.leases.extend(self.outbox[i] for i in sorted(self.outbox))
        return session

    def run(self) -> None:
        parent = self.options.instance
        session = self._bot_session()
        self.session = self._call(lambda: self.stub.CreateBotSession.future(
            self.bots_pb2.CreateBotSessionRequest(parent=parent, bot_session=session),
            timeout=self.options.poll_timeout, metadata=self.metadata))
        if self.session is None:
            return
        self.log(f"bot session {self.session.name}: {self.options.jobs} job(s), "
                 f"{len(self.options.properties)} platform properties")
        quick = 0
        while not self.stopping.is_set():
            self._sync()
            self._report_finished()
            request = self.bots_pb2.UpdateBotSessionRequest(name=self.session.name,
                                                            bot_session=self._outgoing())
            started = time.monotonic()
            answer = self._call(partial(self.stub.UpdateBotSession.future, request,
                                        timeout=self.options.poll_timeout,
                                        metadata=self.metadata))
            if answer is None:
                continue  # cancelled for a finished job (or a stop): the outbox goes next
            self.outbox.clear()
            self.session = answer
            # A server that answers at once with nothing new is not long-polling (yet): ask
            # again soon, since a lease may be waiting already, but back off if it keeps on.
            fresh = any(lease.state in (PENDING, ACTIVE) and lease.id not in self.running
                        for lease in answer.leases)
            if time.monotonic() - started < QUICK_ANSWER and not self._any_done() and not fresh:
                quick += 1
                self.stopping.wait(min(QUICK_ANSWER, 0.005 * 2 ** quick))
            else:
                quick = 0
        self._give_back()

    def _give_back(self) -> None:
        """On a clean stop: kill the jobs and hand their leases back (UNAVAILABLE: retry)."""
        for job, _ in self.running.values():
            job.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.session is None:
            return
        session = self._outgoing()
        for lease in session.leases:
            if lease.state == ACTIVE:
                lease.state = COMPLETED
                lease.status.CopyFrom(self.status_pb2.Status(code=UNAVAILABLE,
                                                             message="the worker stopped"))
        if not session.leases:
            return
        try:
            self.stub.UpdateBotSession(self.bots_pb2.UpdateBotSessionRequest(
                name=self.session.name, bot_session=session), timeout=2.0,
                metadata=self.metadata)
        except self.pb.grpc.RpcError:
            pass  # the server reaps the session and requeues the leases itself

    def stop(self) -> None:
        self.stopping.set()
