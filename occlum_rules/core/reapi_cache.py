"""Client for a Remote Execution API (REAPI v2, gRPC) cache: CAS, ByteStream, ActionCache.

``cache.remote: grpc://host:port`` (or ``grpcs://`` for TLS) with ``cache.instance_name``
makes a build read results from, and with uploads on write results to, any REAPI cache:
BuildGrid, bazel-remote's gRPC port, Buildbarn, NativeLink, BuildBuddy, EngFlow. It keeps
the promises of the HTTP client (``core/remote_cache.py``), whose statistics it shares:

- every blob that comes back is hashed and its size and sha256 compared with the digest it
  was asked for before it is used; a mismatch is a miss, reported once per blob;
- the server is an accelerator: every failure is a miss; after ``max_failures`` failed calls
  in a row, or once failed calls have cost ``failure_budget`` seconds, the remote is switched
  off for the rest of the process with one warning; every call has a deadline clipped to
  what is left of that budget (ByteStream transfers get one more second per MiB);
- uploads only when allowed, and an action result only after every blob it names is on the
  server (``FindMissingBlobs`` first, then ``BatchUpdateBlobs`` for small blobs and a
  ByteStream ``Write`` streamed from the file for large ones);
- credentials only from the environment (``core/credentials.py``): a bearer token (or basic
  auth) as ``authorization`` metadata, TLS roots and an mTLS client certificate from files
  named by ``OCCLUM_RULES_REMOTE_TLS_*``; nothing of them is logged.

At the first call the server's capabilities are checked: SHA256 among its digest functions
(else the remote is switched off), its batch limit (``max_batch_total_size_bytes``) and
whether it accepts action results. How our action key becomes an Action digest, and how a
manifest becomes an ``ActionResult``, is in ``core/action_result.py``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.core import action_result as ar
from occlum_rules.core.reapi_stubs import load_stubs
from occlum_rules.core.remote_health import RemoteAccounting
from occlum_rules.core.store import FETCHED_MODE, LocalStore, manifest_blobs
from occlum_rules.credentials import RemoteCredentials, TlsFiles
from occlum_rules.errors import UserError

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 0.1
DEFAULT_MAX_FAILURES = 3
DEFAULT_FAILURE_BUDGET = 5.0
DEFAULT_MAX_TREE = 64 * 1024 * 1024

# gRPC's default message limit is 4 MiB; batches stay under it with room for the framing.
_GRPC_MESSAGE_LIMIT = 4 * 1024 * 1024
_BATCH_OVERHEAD = 64 * 1024
_STREAM_CHUNK = 1024 * 1024
_SECONDS_PER_MIB = 1.0
_FIND_MISSING_PAGE = 4096
_PER_BLOB_OVERHEAD = 128  # digest, status and framing of one blob in a batch
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_RESERVED_SEGMENTS = {"blobs", "uploads", "actions", "actionResults", "operations",
                      "capabilities", "compressed-blobs"}
_INSTANCE_SEGMENT = re.compile(r"[A-Za-z0-9._~+=@:,-]+\Z")


class _Failed:
    """Sentinel: the call failed (already counted); the caller reports a miss."""


_FAILED = _Failed()
_NOT_FOUND = object()


class _LocalIOError(Exception):
    """An OSError from a *local* file, so it is not mistaken for a network failure."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class _BadAnswer(Exception):
    """The server answered, but not with what REAPI promises (wrong sizes, missing blobs)."""


@dataclass(frozen=True)
class ReapiTarget:
    """Where the cache is: ``host:port``, TLS or not, and the instance name."""

    host: str
    port: int
    tls: bool
    instance_name: str

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def display(self) -> str:
        scheme = "grpcs" if self.tls else "grpc"
        suffix = f" (instance {self.instance_name!r})" if self.instance_name else ""
        return f"{scheme}://{self.address}{suffix}"


def parse_target(url: str, instance_name: str | None, where: str,
                 instance_where: str) -> ReapiTarget:
    """Check a ``grpc://host:port`` / ``grpcs://host[:port]`` URL and an instance name."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UserError("not a valid URL; expected grpc://host:port or grpcs://host[:port]",
                        where=where) from None
    if parts.scheme not in ("grpc", "grpcs"):
        raise UserError("expected grpc://host:port or grpcs://host[:port]", where=where)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UserError(
            "a remote cache URL must not contain credentials; set OCCLUM_RULES_REMOTE_TOKEN "
            "(or OCCLUM_RULES_REMOTE_USER + OCCLUM_RULES_REMOTE_PASSWORD) in the environment",
            where=where)
    if not parts.hostname:
        raise UserError("the URL has no host; expected grpc://host:port", where=where)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UserError("a grpc:// URL names only host and port; put the instance name in "
                        "cache.instance_name (or OCCLUM_RULES_REMOTE_INSTANCE)", where=where)
    tls = parts.scheme == "grpcs"
    if port is None:
        if not tls:
            raise UserError("the URL has no port; expected grpc://host:port", where=where)
        port = 443
    return ReapiTarget(parts.hostname, port, tls, check_instance_name(instance_name,
                                                                       instance_where))


def check_instance_name(name: Any, where: str) -> str:
    """An REAPI instance name: empty, or ``/``-separated segments that are not reserved words."""
    if name is None or name == "":
        return ""
    if not isinstance(name, str):
        raise UserError(f"expected a string, got {type(name).__name__}", where=where)
    segments = name.split("/")
    for segment in segments:
        if not segment or segment in (".", "..") or not _INSTANCE_SEGMENT.match(segment):
            raise UserError(
                f"not a valid instance name: {name!r}; expected segments of letters, digits "
                "and ._~+=@:,- separated by single '/'", where=where)
        if segment in _RESERVED_SEGMENTS:
            raise UserError(f"instance name {name!r} uses the reserved word {segment!r}",
                            where=where)
    return name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReapiCache(RemoteAccounting):
    """A REAPI cache client, safe to share between threads (one channel per process)."""

    def __init__(
        self,
        target: ReapiTarget,
        *,
        upload: bool = True,
        credentials: RemoteCredentials | None = None,
        tls_files: TlsFiles | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_failures: int = DEFAULT_MAX_FAILURES,
        failure_budget: float = DEFAULT_FAILURE_BUDGET,
        max_tree_size: int = DEFAULT_MAX_TREE,
        warn: Callable[[str], None] | None = None,
        writes_action_results: bool = True,
    ):
        self._pb = load_stubs()
        self.target = target
        self.display_url = target.display
        self.upload_enabled = bool(upload)
        self._credentials = credentials
        self._tls_files = tls_files
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_failures = max(1, int(max_failures))
        self.failure_budget = float(failure_budget)
        self.max_tree_size = int(max_tree_size)
        self._writes_action_results = bool(writes_action_results)
        self._init_accounting(warn, unit="calls")
        self._channel: Any = None
        self._channel_pid = 0
        self._ready: bool | None = None  # capabilities: None = not asked yet
        self._batch_limit = _GRPC_MESSAGE_LIMIT - _BATCH_OVERHEAD
        self._metadata: tuple[tuple[str, str], ...] = ()
        codes = self._pb.grpc.StatusCode
        self._retryable = (codes.UNAVAILABLE, codes.DEADLINE_EXCEEDED, codes.RESOURCE_EXHAUSTED,
                           codes.ABORTED, codes.INTERNAL, codes.UNKNOWN, codes.CANCELLED)
        if credentials is not None:
            self._metadata = (("authorization", credentials.authorization_header()),)
            if not target.tls and not _is_loopback(target.host):
                self._warn(f"remote cache {self.display_url}: {credentials.describe()} is sent "
                           "over plain grpc://; use grpcs:// so it cannot be read on the way")
        if tls_files is not None and not target.tls:
            raise UserError("TLS files are set (OCCLUM_RULES_REMOTE_TLS_*) but the URL is "
                            "grpc://; use grpcs://", where="OCCLUM_RULES_REMOTE_TLS_CA")

    # ----------------------------------------------------------------- public API

    def get_entry(self, key: str,
                  store: LocalStore | None = None) -> tuple[dict, dict[str, int]] | None:
        """(manifest, blob sizes) stored for our action ``key``, or None (miss or failure).

        The ActionResult and every Tree it names are fetched and decoded; the Tree blobs are
        verified by digest like any other blob (in memory: ``store`` is not needed)."""
        _check_hex64(key)
        if not self._usable():
            self._count(misses=1)
            return None
        pb = self._pb
        action_bytes, _ = ar.action_messages(pb, key)
        request = pb.re.GetActionResultRequest(
            instance_name=self.target.instance_name,
            action_digest=ar.blob_digest(pb, action_bytes))
        result = self._rpc("GetActionResult",
                           lambda t: self._ac().GetActionResult(request, timeout=t,
                                                                metadata=self._metadata))
        if result is _FAILED or result is _NOT_FOUND:
            self._count(misses=1)
            return None
        try:
            trees: dict[str, bytes] = {}
            for digest in ar.tree_digests(result):
                if digest.size_bytes > self.max_tree_size:
                    raise ar.BadActionResult(f"tree of {digest.size_bytes} bytes is too large")
                data = self._read_small(digest.hash, digest.size_bytes)
                if data is None:
                    self._count(misses=1)
                    return None
                trees[digest.hash] = data
            manifest, sizes = ar.from_action_result(pb, result, trees)
        except ar.BadActionResult as exc:
            self._count(misses=1, errors=1)
            self._warn_limited(f"action result for {key[:12]}… is not one of ours ({exc}); "
                               "treated as a miss")
            return None
        self._count(hits=1, bytes_down=result.ByteSize())
        return manifest, sizes

    def fetch_blobs(self, store: LocalStore, blobs: Mapping[str, int | None],
                    modes: Mapping[str, int] | None = None) -> bool:
        """Download ``blobs`` (sha256 → size) into the store, with ``modes`` (sha256 → mode;
        read-only where it names none); True only if all arrived intact."""
        modes = modes or {}
        if not blobs:
            return True
        if not self._usable() or any(size is None for size in blobs.values()):
            return False
        small = [(d, int(s or 0)) for d, s in sorted(blobs.items())
                 if (s or 0) <= self._batch_limit]
        large = [(d, int(s or 0)) for d, s in sorted(blobs.items()) if (s or 0) > self._batch_limit]
        for batch in _batches(small, self._batch_limit):
            if not self._batch_read(store, batch, modes):
                return False
        return all(self._stream_read(store, d, s, modes.get(d, FETCHED_MODE)) for d, s in large)

    def put_entry(self, store: LocalStore, key: str, manifest: dict) -> bool:
        """Upload the blobs of ``manifest`` the server lacks, then its ActionResult.

        True when the server holds the entry afterwards. Nothing is uploaded when uploads
        are off; the result is never stored unless all of its blobs are there."""
        _check_hex64(key)
        if not self._uploads_allowed() or not self._usable():
            return False
        pb = self._pb
        try:
            sizes = {d: os.stat(store.cas_path(d)).st_size for d in set(manifest_blobs(manifest))}
        except OSError:
            return False  # the local store lost a blob meanwhile: nothing to promise
        result, trees = ar.to_action_result(pb, manifest, sizes)
        action_bytes, command_bytes = ar.action_messages(pb, key)
        blobs: dict[str, tuple[int, bytes | Path]] = {
            d: (size, store.cas_path(d)) for d, size in sizes.items()}
        blobs.update({hashlib.sha256(b).hexdigest(): (len(b), b)
                      for b in (*trees, action_bytes, command_bytes)})
        if not self.upload_blobs(blobs):
            return False
        request = pb.re.UpdateActionResultRequest(
            instance_name=self.target.instance_name,
            action_digest=ar.blob_digest(pb, action_bytes), action_result=result)
        outcome = self._rpc("UpdateActionResult",
                            lambda t: self._ac().UpdateActionResult(request, timeout=t,
                                                                    metadata=self._metadata),
                            write=True)
        if outcome is _FAILED or outcome is _NOT_FOUND:
            return False
        self._count(uploads=1, bytes_up=result.ByteSize())
        return True

    def upload_blobs(self, blobs: Mapping[str, tuple[int, bytes | Path]]) -> bool:
        """Put ``blobs`` (sha256 → (size, bytes or file)) the server lacks into its CAS.

        ``FindMissingBlobs`` first; small blobs in batches, large ones streamed from their
        file. True only when every blob is on the server afterwards."""
        if not blobs:
            return True
        if not self._uploads_allowed() or not self._usable():
            return False
        missing = self._find_missing({d: size for d, (size, _) in blobs.items()})
        if missing is None:
            return False
        self._count(upload_skips=len(blobs) - len(missing))
        small = [(d, blobs[d][0]) for d in sorted(missing) if blobs[d][0] <= self._batch_limit]
        large = [(d, blobs[d][0]) for d in sorted(missing) if blobs[d][0] > self._batch_limit]
        for batch in _batches(small, self._batch_limit):
            if not self._batch_update([(d, s, blobs[d][1]) for d, s in batch]):
                return False
        return all(self._stream_write(d, s, blobs[d][1]) for d, s in large)

    def read_blobs(self, wanted: Mapping[str, int]) -> dict[str, bytes] | None:
        """Small blobs (sha256 → size) into memory, each verified; None unless all arrived."""
        if not wanted:
            return {}
        if not self._usable():
            return None
        got: dict[str, bytes] = {}
        small = [(d, s) for d, s in sorted(wanted.items()) if s <= self._batch_limit]
        for batch in _batches(small, self._batch_limit):
            part = self._batch_fetch(batch)
            if part is None or len(part) != len(batch):
                return None
            got.update(part)
        for digest, size in sorted(wanted.items()):
            if size > self._batch_limit:
                data = self._read_small(digest, size)
                if data is None:
                    return None
                got[digest] = data
        return got

    def download_file(self, digest: str, size: int, dest: Path, mode: int = 0o444) -> bool:
        """One blob into ``dest`` (atomically, with ``mode``), streamed when it is large."""
        if not self._usable():
            return False
        if size > self._batch_limit:
            return self._stream_read_to(dest, digest, size, mode)
        got = self._batch_fetch([(digest, size)])
        if got is None or digest not in got:
            return False
        with AtomicFile(dest, mode=mode) as tmp:
            tmp.file.write(got[digest])
        return True

    @property
    def stubs(self) -> Any:
        """The generated modules (:func:`reapi_stubs.load_stubs`), for callers of other
        services on the same server (the Bots API of ``core/reapi_worker.py``)."""
        return self._pb

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The ``authorization`` metadata every call carries (never log it)."""
        return self._metadata

    def channel(self) -> Any:
        """This process's channel to the server (with the TLS files, if any)."""
        return self._chan()

    def usable(self) -> bool:
        """Whether the server may be called (capabilities fine, not switched off)."""
        return self._usable()

    def call(self, what: str, call: Callable[[Any, float, Any], Any], deadline: float) -> Any:
        """A call of another REAPI service on this channel, with this client's retries and
        failure accounting; None when it failed or found nothing. ``call`` gets the channel,
        the timeout and the metadata (credentials) to send; ``deadline`` replaces the usual
        per-call timeout (an Execute waits for a whole run)."""
        answer = self._rpc(what, lambda t: call(self._chan(), t, self._metadata),
                           deadline=deadline)
        return None if answer is _FAILED or answer is _NOT_FOUND else answer

    @property
    def batch_limit(self) -> int:
        """The largest blob that goes through batch calls (after the capabilities check)."""
        self._usable()
        return self._batch_limit

    def close(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None and self._channel_pid == os.getpid():
            channel.close()

    def __enter__(self) -> ReapiCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "disabled" if self.disabled else "enabled"
        return f"ReapiCache({self.display_url!r}, upload={self.upload_enabled}, {state})"

    # ------------------------------------------------------------- capabilities

    def _usable(self) -> bool:
        """Not switched off, and the server's capabilities fit (asked once)."""
        if self.disabled:
            return False
        if self._ready is None:
            self._check_capabilities()
        return bool(self._ready) and not self.disabled

    def _check_capabilities(self) -> None:
        pb = self._pb
        stub = pb.re_grpc.CapabilitiesStub(self._chan())
        request = pb.re.GetCapabilitiesRequest(instance_name=self.target.instance_name)
        caps = self._rpc("GetCapabilities",
                         lambda t: stub.GetCapabilities(request, timeout=t,
                                                        metadata=self._metadata))
        if caps is _FAILED or caps is _NOT_FOUND:
            return  # counted; asked again next time until the remote is switched off
        cache = caps.cache_capabilities
        if pb.re.DigestFunction.SHA256 not in cache.digest_function:
            self._disable("the server does not offer SHA256 digests")
            self._ready = False
            return
        if cache.max_batch_total_size_bytes > 0:
            self._batch_limit = min(self._batch_limit,
                                    int(cache.max_batch_total_size_bytes) - _BATCH_OVERHEAD)
        if self._batch_limit <= 0:
            self._batch_limit = 0  # everything through ByteStream
        if self.upload_enabled and self._writes_action_results and \
                cache.HasField("action_cache_update_capabilities") and \
                not cache.action_cache_update_capabilities.update_enabled:
            self._disable_uploads("the server does not accept action results from clients")
        self._ready = True

    # ------------------------------------------------------------------ blobs

    def _find_missing(self, wanted: Mapping[str, int]) -> set[str] | None:
        pb = self._pb
        missing: set[str] = set()
        items = sorted(wanted.items())
        for start in range(0, len(items), _FIND_MISSING_PAGE):
            page = items[start:start + _FIND_MISSING_PAGE]
            request = pb.re.FindMissingBlobsRequest(
                instance_name=self.target.instance_name,
                blob_digests=[pb.re.Digest(hash=d, size_bytes=s) for d, s in page])
            answer = self._rpc("FindMissingBlobs", self._unary("FindMissingBlobs", request))
            if answer is _FAILED or answer is _NOT_FOUND:
                return None
            missing.update(d.hash for d in answer.missing_blob_digests if d.hash in wanted)
        return missing

    def _read_small(self, digest: str, size: int) -> bytes | None:
        """One blob into memory (Trees), verified; None on a miss or failure."""
        if size > self._batch_limit:
            chunks: list[bytes] = []
            ok = self._stream(digest, size, chunks.append, chunks.clear)
            data = b"".join(chunks)
        else:
            got = self._batch_fetch([(digest, size)])
            ok = got is not None and digest in got
            data = got[digest] if ok and got is not None else b""
        if not ok:
            return None
        return data

    def _batch_fetch(self, batch: list[tuple[str, int]]) -> dict[str, bytes] | None:
        """BatchReadBlobs: the blobs that arrived intact (by digest), or None on failure."""
        pb = self._pb
        request = pb.re.BatchReadBlobsRequest(
            instance_name=self.target.instance_name,
            digests=[pb.re.Digest(hash=d, size_bytes=s) for d, s in batch])
        answer = self._rpc("BatchReadBlobs",
                           lambda t: self._cas().BatchReadBlobs(request, timeout=t,
                                                                metadata=self._metadata),
                           transfer=sum(s for _, s in batch))
        if answer is _FAILED or answer is _NOT_FOUND:
            return None
        sizes = dict(batch)
        good: dict[str, bytes] = {}
        for response in answer.responses:
            digest = response.digest.hash
            if digest not in sizes or response.status.code != 0:
                continue
            data = bytes(response.data)
            self._count(bytes_down=len(data))
            if len(data) != sizes[digest] or hashlib.sha256(data).hexdigest() != digest:
                self._report_mismatch(digest)
                continue
            good[digest] = data
        return good

    def _batch_read(self, store: LocalStore, batch: list[tuple[str, int]],
                    modes: Mapping[str, int]) -> bool:
        good = self._batch_fetch(batch)
        if good is None or len(good) != len(batch):
            return False
        for digest, data in good.items():
            dest = store.cas_path(digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with AtomicFile(dest, mode=modes.get(digest, FETCHED_MODE)) as tmp:
                tmp.file.write(data)
        return True

    def _stream_read(self, store: LocalStore, digest: str, size: int, mode: int) -> bool:
        dest = store.cas_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return self._stream_read_to(dest, digest, size, mode)

    def _stream_read_to(self, dest: Path, digest: str, size: int, mode: int) -> bool:
        tmp = AtomicFile(dest, mode=mode)
        try:
            def restart() -> None:
                try:
                    tmp.file.seek(0)
                    tmp.file.truncate()
                except OSError as exc:
                    raise _LocalIOError(exc) from exc

            def write(chunk: bytes) -> None:
                try:
                    tmp.file.write(chunk)
                except OSError as exc:
                    raise _LocalIOError(exc) from exc

            if not self._stream(digest, size, write, restart):
                return False
            tmp.commit()
            return True
        finally:
            tmp.discard()

    def _stream(self, digest: str, size: int, sink: Callable[[bytes], None],
                restart: Callable[[], None]) -> bool:
        """ByteStream Read of one blob into ``sink``, hashed on the way; True if intact."""
        pb = self._pb
        name = self._resource(f"blobs/{digest}/{size}")
        request = pb.bs.ReadRequest(resource_name=name, read_offset=0)

        def call(timeout: float) -> str:
            restart()
            hasher = hashlib.sha256()
            received = 0
            responses = self._bytestream().Read(request, timeout=timeout,
                                                metadata=self._metadata)
            for response in responses:
                data = response.data
                received += len(data)
                if received > size:
                    responses.cancel()  # more than the digest says: stop reading now
                    return "mismatch"
                hasher.update(data)
                sink(data)
            self._count(bytes_down=received)
            return "ok" if received == size and hasher.hexdigest() == digest else "mismatch"

        outcome = self._rpc("ByteStream.Read", call, transfer=size)
        if outcome == "mismatch":
            self._report_mismatch(digest)
        return outcome == "ok"

    def _batch_update(self, batch: list[tuple[str, int, bytes | Path]]) -> bool:
        pb = self._pb
        requests = []
        for digest, size, src in batch:
            try:
                data = src if isinstance(src, bytes) else Path(src).read_bytes()
            except OSError:
                return False
            requests.append(pb.re.BatchUpdateBlobsRequest.Request(
                digest=pb.re.Digest(hash=digest, size_bytes=size), data=data))
        request = pb.re.BatchUpdateBlobsRequest(instance_name=self.target.instance_name,
                                                requests=requests)
        answer = self._rpc("BatchUpdateBlobs",
                           lambda t: self._cas().BatchUpdateBlobs(request, timeout=t,
                                                                  metadata=self._metadata),
                           transfer=sum(s for _, s, _ in batch), write=True)
        if answer is _FAILED or answer is _NOT_FOUND:
            return False
        stored = {r.digest.hash for r in answer.responses if r.status.code == 0}
        if stored != {d for d, _, _ in batch}:
            self._count(errors=1)
            self._disable_uploads("the server refused some blobs of a BatchUpdateBlobs call")
            return False
        self._count(uploads=len(batch), bytes_up=sum(s for _, s, _ in batch))
        return True

    def _stream_write(self, digest: str, size: int, src: bytes | Path) -> bool:
        """ByteStream Write of one blob, read from its file chunk by chunk."""
        pb = self._pb
        name = self._resource(f"uploads/{uuid.uuid4()}/blobs/{digest}/{size}")

        def chunks() -> Iterator[Any]:
            offset = 0
            with (open(src, "rb") if isinstance(src, Path) else _BytesReader(src)) as f:
                while True:
                    try:
                        data = f.read(_STREAM_CHUNK)
                    except OSError as exc:
                        raise _LocalIOError(exc) from exc
                    last = offset + len(data) >= size or not data
                    yield pb.bs.WriteRequest(resource_name=name if offset == 0 else "",
                                             write_offset=offset, data=data, finish_write=last)
                    offset += len(data)
                    if last:
                        return

        def call(timeout: float) -> Any:
            answer = self._bytestream().Write(chunks(), timeout=timeout, metadata=self._metadata)
            if answer.committed_size not in (size, -1):
                raise _BadAnswer(f"committed {answer.committed_size} of {size} bytes")
            return answer

        outcome = self._rpc("ByteStream.Write", call, transfer=size, write=True)
        if outcome is _FAILED or outcome is _NOT_FOUND:
            return False
        self._count(uploads=1, bytes_up=size)
        return True

    def _unary(self, method: str, request: Any) -> Callable[[float], Any]:
        """A CAS call of ``request`` with a deadline, for :meth:`_rpc`."""
        def call(timeout: float) -> Any:
            return getattr(self._cas(), method)(request, timeout=timeout, metadata=self._metadata)
        return call

    def _resource(self, tail: str) -> str:
        prefix = self.target.instance_name
        return f"{prefix}/{tail}" if prefix else tail

    # --------------------------------------------------------------- channel

    def _chan(self) -> Any:
        with self._lock:
            if self._channel is None or self._channel_pid != os.getpid():
                # a forked child (doit -P process) never uses its parent's channel
                self._channel = self._open_channel()
                self._channel_pid = os.getpid()
            return self._channel

    def _open_channel(self) -> Any:
        grpc = self._pb.grpc
        options = [
            ("grpc.max_receive_message_length", _GRPC_MESSAGE_LIMIT + _BATCH_OVERHEAD),
            ("grpc.max_send_message_length", _GRPC_MESSAGE_LIMIT + _BATCH_OVERHEAD),
            ("grpc.enable_retries", 0),  # retries and their budget are ours
            ("grpc.primary_user_agent", "occlum-rules"),
        ]
        if not self.target.tls:
            return grpc.insecure_channel(self.target.address, options=options)
        files = self._tls_files
        credentials = grpc.ssl_channel_credentials(
            root_certificates=files.read("ca") if files else None,
            private_key=files.read("key") if files else None,
            certificate_chain=files.read("cert") if files else None,
        )
        return grpc.secure_channel(self.target.address, credentials, options=options)

    def _cas(self) -> Any:
        return self._pb.re_grpc.ContentAddressableStorageStub(self._chan())

    def _ac(self) -> Any:
        return self._pb.re_grpc.ActionCacheStub(self._chan())

    def _bytestream(self) -> Any:
        return self._pb.bs_grpc.ByteStreamStub(self._chan())

    # ------------------------------------------------------------- the call

    def _rpc(self, what: str, call: Callable[[float], Any], *, transfer: int = 0,
             write: bool = False, deadline: float | None = None) -> Any:
        """One call with retries: its answer, ``_NOT_FOUND`` or ``_FAILED``.

        Every failed attempt counts against the failure limits; reaching one switches the
        remote off. The deadline is the timeout clipped to what is left of the failure
        budget, plus a second per MiB for transfers."""
        grpc = self._pb.grpc
        attempt = 0
        while True:
            if self.disabled or (write and not self._uploads_allowed()):
                return _FAILED
            remaining = self._budget_left()
            if remaining <= 0:
                self._disable("the failure time budget is spent")
                return _FAILED
            timeout = deadline if deadline is not None else \
                min(self.timeout, remaining) + _SECONDS_PER_MIB * transfer / (1 << 20)
            started = time.monotonic()
            try:
                answer = call(timeout)
            except _LocalIOError as exc:
                raise exc.error from None
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                name = getattr(code, "name", "UNKNOWN")
                if code == grpc.StatusCode.NOT_FOUND:
                    self._record_success()
                    return _NOT_FOUND
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    return self._refused(what, name, write)
                reason = f"{what}: {name}"
                self._record_failure(time.monotonic() - started, reason)
                if code in self._retryable:
                    if attempt >= self.retries or self.disabled:
                        return _FAILED
                    pause = min(self.backoff * (2 ** attempt), max(0.0, self._budget_left()))
                    time.sleep(pause)
                    self._spend(pause)
                    attempt += 1
                    continue
                if write:
                    self._disable_uploads(f"the server refused {reason}")
                return _FAILED
            except (_BadAnswer, ValueError) as exc:  # ValueError: protobuf decode errors
                self._record_failure(time.monotonic() - started, f"{what}: {exc}")
                return _FAILED
            self._record_success()
            return answer

    def _refused(self, what: str, code: str, write: bool) -> _Failed:
        who = self._credentials.describe() if self._credentials else "no credentials"
        self._count(errors=1)
        if write:
            self._disable_uploads(f"the server refused {what} with {code} (sent {who})")
        else:
            self._disable(f"the server refused {what} with {code} (sent {who}; set "
                          "OCCLUM_RULES_REMOTE_TOKEN, or the TLS client certificate variables)")
        return _FAILED


class _BytesReader:
    """``open()``-like reading of an in-memory blob (Trees, Action messages)."""

    def __init__(self, data: bytes):
        self._view = memoryview(data)
        self._at = 0

    def read(self, n: int) -> bytes:
        chunk = bytes(self._view[self._at:self._at + n])
        self._at += len(chunk)
        return chunk

    def __enter__(self) -> _BytesReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._view.release()


def _batches(items: list[tuple[str, int]], limit: int) -> Iterator[list[tuple[str, int]]]:
    """Groups of (digest, size) whose sizes add up to at most ``limit`` each."""
    batch: list[tuple[str, int]] = []
    total = 0
    for digest, size in items:
        cost = size + _PER_BLOB_OVERHEAD
        if batch and total + cost > limit:
            yield batch
            batch, total = [], 0
        batch.append((digest, size))
        total += cost
    if batch:
        yield batch


def _check_hex64(value: str) -> None:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"action key must be 64 lowercase hex digits (sha256), got {value!r}")
