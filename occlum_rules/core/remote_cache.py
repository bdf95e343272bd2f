"""Client for the Bazel HTTP remote-cache protocol (``/cas/<sha256>``, ``/ac/<key>``).

Any server speaking that protocol works: nginx with WebDAV PUT, bazel-remote, or an S3/GCS
proxy. Action entries are REAPI ``ActionResult`` protobufs under ``/ac/<Action digest>``
(``core/action_result.py``) when the ``remote`` extra is installed, else the JSON manifests
of earlier versions under ``/ac/<action key>`` (bazel-remote then needs
``--disable_http_ac_validation``). The remote is an accelerator, never a dependency: every failure turns into a
cache miss, and a remote that keeps failing is switched off for the rest of the process
with a single warning, so a dead or slow server costs a bounded few seconds, not a build.

Bytes coming back are never trusted: a blob is hashed while it streams to a temporary
file next to its destination and renamed into place only when its sha256 matches.

The transport is the standard library's ``http.client``: one keep-alive connection per thread,
separate connect and read timeouts, a few retries with exponential backoff on connection
errors and 5xx, none on 404.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.core import action_result as ar
from occlum_rules.core.action_result import action_digest_hash
from occlum_rules.core.reapi_stubs import optional_messages
from occlum_rules.core.remote_health import RemoteAccounting
from occlum_rules.core.remote_health import RemoteCacheStats as RemoteCacheStats
from occlum_rules.core.store import FETCHED_MODE, LocalStore, manifest_blobs
from occlum_rules.credentials import (
    RemoteCredentials,
    credentials_from_env,
    redact_url,
    tls_files_from_env,
)
from occlum_rules.errors import UserError
from occlum_rules.http_connection import HTTPConnection as _HTTPConnection
from occlum_rules.http_connection import HTTPSConnection as _HTTPSConnection

ENV_URL = "OCCLUM_RULES_REMOTE_CACHE"
ENV_UPLOAD = "OCCLUM_RULES_REMOTE_UPLOAD"
ENV_TIMEOUT = "OCCLUM_RULES_REMOTE_TIMEOUT"
ENV_INSTANCE = "OCCLUM_RULES_REMOTE_INSTANCE"

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 0.1
DEFAULT_MAX_FAILURES = 3
DEFAULT_FAILURE_BUDGET = 5.0
DEFAULT_MAX_ACTION_RESULT = 64 * 1024 * 1024

_CHUNK = 256 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")

try:  # the package version for the User-Agent, without making it a hard dependency
    from importlib.metadata import version as _dist_version

    _USER_AGENT = f"occlum-rules/{_dist_version('occlum-rules')}"
except Exception:  # noqa: BLE001 - not installed as a distribution
    _USER_AGENT = "occlum-rules"


class _Failed:
    """Sentinel: the exchange failed (already counted); the caller reports a miss."""


_FAILED = _Failed()


class _RetryableStatus(Exception):
    """A 5xx (or 408/429) answer: the server is there but not well; worth another try."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status


class _RejectedStatus(Exception):
    """A 4xx answer other than 404: retrying the same request cannot help."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status


class _LocalIOError(Exception):
    """Wraps an OSError from a *local* file so it is not mistaken for a network failure."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _found(resp: http.client.HTTPResponse) -> bool:
    """True for a 200 answer to a GET; False for a 404 (a miss); any other status is
    refused. The body of a non-200 answer is drained so the connection can be reused."""
    if resp.status == 200:
        return True
    resp.read()
    if resp.status == 404:
        return False
    raise _RejectedStatus(resp.status, resp.reason)


# Request Timeout and Too Many Requests: the server asks us to come back, like a 5xx.
_RETRYABLE_4XX = (408, 429)

_STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_hex64(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex digits (sha256), got {value!r}")
    return value


class RemoteCache(RemoteAccounting):
    """A Bazel-protocol HTTP cache, safe to share between threads.

    ``connect_timeout`` and ``read_timeout`` bound each network wait. A failed attempt
    (connection error, timeout, 5xx) is retried ``retries`` times with exponential backoff
    starting at ``backoff`` seconds. After ``max_failures`` failed attempts in a row, or
    once failed attempts (plus their backoff) have cost ``failure_budget`` seconds in this
    process, the remote is switched off: one warning, and every later call is a miss
    without touching the network. Waits are clipped to what is left of the budget, so a
    dead or silent server costs at most about ``failure_budget`` seconds per process.
    """

    def __init__(
        self,
        base_url: str,
        *,
        upload: bool = True,
        credentials: RemoteCredentials | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_failures: int = DEFAULT_MAX_FAILURES,
        failure_budget: float = DEFAULT_FAILURE_BUDGET,
        max_action_result_size: int = DEFAULT_MAX_ACTION_RESULT,
        warn: Callable[[str], None] | None = None,
        where: str = "remote cache URL",
    ):
        self.display_url = redact_url(base_url)
        parts = self._parse_url(base_url, where)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._query = f"?{parts.query}" if parts.query else ""
        self.upload_enabled = bool(upload)
        self._credentials = credentials
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_failures = max(1, int(max_failures))
        self.failure_budget = float(failure_budget)
        self.max_action_result_size = int(max_action_result_size)
        self._init_accounting(warn, unit="requests")
        self._local = threading.local()
        self._connections: set[http.client.HTTPConnection] = set()
        self._ssl_context = ssl.create_default_context() if self._tls else None
        _LIVE_CLIENTS.add(self)

        if credentials is not None and not self._tls and not _is_loopback(self._host):
            self._warn(
                f"remote cache {self.display_url}: {credentials.describe()} is sent over plain "
                "http; use an https URL so it cannot be read on the way"
            )

    # ----------------------------------------------------------------- public API

    def has_blob(self, digest: str) -> bool:
        """Whether the remote holds the blob (HEAD). Failures answer False."""
        _check_hex64(digest, "blob digest")
        if self.disabled:
            return False
        return self._head(f"/cas/{digest}") is True

    def fetch_blob(self, digest: str, dest_path: str | os.PathLike[str], mode: int = 0o644) -> bool:
        """Download blob ``digest`` to ``dest_path``; True only if it arrived intact.

        The bytes go to a temporary file in the destination directory and are renamed
        into place (with permissions ``mode``) after their sha256 matched, so ``dest_path``
        never holds a partial or wrong blob. Any failure or mismatch is a miss (False);
        only a local I/O error (disk full, no permission) raises.
        """
        _check_hex64(digest, "blob digest")
        if self.disabled:
            self._count(misses=1)
            return False
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = AtomicFile(dest, mode=mode)
        try:
            outcome = self._exchange(
                "GET", f"/cas/{digest}", handle=lambda r: self._receive_blob(r, tmp.file, digest)
            )
            if outcome is True:
                tmp.commit()
                self._count(hits=1)
                return True
            if outcome == "mismatch":
                self._report_mismatch(digest)
            self._count(misses=1)
            return False
        finally:
            tmp.discard()  # nothing left to drop after a commit

    def put_blob(self, digest: str, path: str | os.PathLike[str]) -> bool:
        """Upload the file at ``path`` as blob ``digest`` unless the remote has it already.

        True when the remote holds the blob afterwards. The caller guarantees that the
        file's sha256 is ``digest`` (readers verify it anyway). Does nothing and answers
        False when uploads are off.
        """
        _check_hex64(digest, "blob digest")
        if not self._uploads_allowed():
            return False
        present = self._head(f"/cas/{digest}")
        if present is _FAILED:
            return False
        if present:
            self._count(upload_skips=1)
            return True
        with open(path, "rb") as body:
            size = os.fstat(body.fileno()).st_size
            ok = self._put(f"/cas/{digest}", body, size)
        return ok

    def get_action_result(self, key: str) -> bytes | None:
        """The action entry stored under ``key``, or None on a miss or any failure."""
        _check_hex64(key, "action key")
        if self.disabled:
            self._count(misses=1)
            return None
        outcome = self._exchange("GET", f"/ac/{key}", handle=self._receive_small)
        if isinstance(outcome, bytes):
            self._count(hits=1)
            return outcome
        self._count(misses=1)
        return None

    def put_action_result(self, key: str, data: bytes) -> bool:
        """Store the action entry ``data`` under ``key``; True if the remote accepted it."""
        _check_hex64(key, "action key")
        if not self._uploads_allowed():
            return False
        return self._put(f"/ac/{key}", bytes(data), len(data))

    # ------------------------------------------ entries (the interface cache_entry uses)

    def get_entry(self, key: str, store: LocalStore) -> tuple[dict, dict[str, int]] | None:
        """(manifest, blob sizes) stored for our action ``key``, or None.

        With the ``remote`` extra installed, entries are REAPI ActionResults under
        ``/ac/<Action digest>`` (see ``core/action_result.py``), their Trees fetched into
        ``store`` and verified like any blob; without it, the JSON manifests of earlier
        versions under ``/ac/<action key>``, which name blobs by sha256 alone (no sizes)."""
        pb = optional_messages()
        if pb is None:
            return self._get_json_entry(key)
        data = self.get_action_result(action_digest_hash(pb, key))
        if data is None:
            return None
        try:
            result = pb.re.ActionResult.FromString(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError: not an ActionResult
            self._count(errors=1)
            return None
        try:
            trees: dict[str, bytes] = {}
            for digest in ar.tree_digests(result):
                tree = self._tree_blob(store, digest.hash, digest.size_bytes)
                if tree is None:
                    return None
                trees[digest.hash] = tree
            return ar.from_action_result(pb, result, trees)
        except ar.BadActionResult as exc:
            self._count(errors=1)
            self._warn_limited(f"action entry for {key[:12]}… is not one of ours ({exc}); "
                               "treated as a miss")
            return None

    def _get_json_entry(self, key: str) -> tuple[dict, dict[str, int]] | None:
        data = self.get_action_result(key)
        if data is None:
            return None
        try:
            manifest = json.loads(data)
            manifest_blobs(manifest)  # every record has what a restore needs
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(manifest, dict):
            return None
        return manifest, {}

    def _tree_blob(self, store: LocalStore, digest: str, size: int) -> bytes | None:
        """A Tree blob's bytes, fetched into the store if it is not there; verified."""
        if not _HEX64.match(digest) or size > self.max_action_result_size:
            return None
        path = store.cas_path(digest)
        if not store.has_blob(digest):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not self.fetch_blob(digest, path, mode=0o444):
                return None
        data = path.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            return None
        return data

    def fetch_blobs(self, store: LocalStore, blobs: Mapping[str, int | None],
                    modes: Mapping[str, int] | None = None) -> bool:
        """Download ``blobs`` (sha256 → size or None) into the store, each verified, with
        ``modes`` (sha256 → mode; read-only where it names none)."""
        for digest in sorted(blobs):
            store.cas_path(digest).parent.mkdir(parents=True, exist_ok=True)
            mode = (modes or {}).get(digest, FETCHED_MODE)
            if not self.fetch_blob(digest, store.cas_path(digest), mode=mode):
                return False
        return True

    def put_entry(self, store: LocalStore, key: str, manifest: dict) -> bool:
        """Upload the blobs ``manifest`` needs (and its Trees), then the entry: an
        ActionResult with the ``remote`` extra, else the JSON manifest the store holds."""
        blobs = sorted(set(manifest_blobs(manifest)))
        pb = optional_messages()
        if pb is not None:
            try:
                sizes = {d: os.stat(store.cas_path(d)).st_size for d in blobs}
            except OSError:
                return False
            result, trees = ar.to_action_result(pb, manifest, sizes)
            blobs += [store.put_bytes(tree) for tree in trees]
        for digest in blobs:
            if not self.put_blob(digest, store.cas_path(digest)):
                return False  # an action entry must never point at blobs the remote lacks
        if pb is not None:
            return self.put_action_result(action_digest_hash(pb, key), ar.serialize(result))
        data = store.action_bytes(key)
        return data is not None and self.put_action_result(key, data)

    def close(self) -> None:
        """Close every connection this client opened (from any thread)."""
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            conn.close()

    def _reset_after_fork(self) -> None:
        """In a forked child (``doit -P process``): never share the parent's sockets.

        Two processes writing requests into one inherited keep-alive socket would mix
        their bytes; the child closes its copies (the parent's stay open) and starts fresh.
        A lock held by another parent thread at fork time would never be released here.
        """
        self._lock = threading.Lock()
        connections, self._connections = self._connections, set()
        self._local = threading.local()
        for conn in connections:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing our copy of the fd only
                pass

    def __del__(self) -> None:  # a forgotten close() must not leak sockets
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown or half-built object
            pass

    def __enter__(self) -> RemoteCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "disabled" if self.disabled else "enabled"
        return f"RemoteCache({self.display_url!r}, upload={self.upload_enabled}, {state})"

    # ------------------------------------------------------------- per operation

    def _head(self, path: str) -> bool | _Failed:
        def handle(resp: http.client.HTTPResponse) -> bool:
            resp.read()
            if resp.status == 200:
                return True
            if resp.status == 404:
                return False
            raise _RejectedStatus(resp.status, resp.reason)

        return self._exchange("HEAD", path, handle=handle)

    def _put(self, path: str, body: IO[bytes] | bytes, size: int) -> bool:
        def handle(resp: http.client.HTTPResponse) -> bool:
            resp.read()
            if 200 <= resp.status < 300:
                return True
            raise _RejectedStatus(resp.status, resp.reason)

        outcome = self._exchange("PUT", path, handle=handle, body=body, size=size)
        if outcome is True:
            self._count(uploads=1, bytes_up=size)
            return True
        return False

    def _receive_blob(self, resp: http.client.HTTPResponse, tmp: IO[bytes], digest: str) -> Any:
        if not _found(resp):
            return False
        try:  # a retry starts the file over
            tmp.seek(0)
            tmp.truncate()
        except OSError as exc:
            raise _LocalIOError(exc) from exc
        hasher = hashlib.sha256()
        received = 0
        while True:
            chunk = resp.read(_CHUNK)
            if not chunk:
                break
            received += len(chunk)
            hasher.update(chunk)
            try:
                tmp.write(chunk)
            except OSError as exc:
                raise _LocalIOError(exc) from exc
        self._count(bytes_down=received)
        try:
            tmp.flush()
        except OSError as exc:
            raise _LocalIOError(exc) from exc
        return True if hasher.hexdigest() == digest else "mismatch"

    def _receive_small(self, resp: http.client.HTTPResponse) -> bytes | bool:
        if not _found(resp):
            return False
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_action_result_size:
            resp.close()  # do not read a huge body into memory; the connection is dropped
            self._drop_connection()
            self._count(errors=1)
            self._warn(
                f"remote cache {self.display_url}: action entry of {length} bytes exceeds the "
                f"{self.max_action_result_size}-byte limit; treated as a miss"
            )
            return False
        data = resp.read(self.max_action_result_size + 1)
        if len(data) > self.max_action_result_size:
            resp.close()
            self._drop_connection()
            self._count(errors=1)
            return False
        self._count(bytes_down=len(data))
        return data

    # ------------------------------------------------------------ the exchange

    def _exchange(
        self,
        method: str,
        path: str,
        *,
        handle: Callable[[http.client.HTTPResponse], Any],
        body: IO[bytes] | bytes | None = None,
        size: int | None = None,
    ) -> Any:
        """One request with retries; the handler's answer, or ``_FAILED``.

        Every failed attempt is counted against the failure limits; reaching one switches
        the remote off. A keep-alive connection the server closed while idle is retried
        at once on a fresh one without counting, because nothing went wrong.
        """
        target = self._prefix + path + self._query
        headers = {"User-Agent": _USER_AGENT}
        if self._credentials is not None:
            headers["Authorization"] = self._credentials.authorization_header()
        if method == "PUT":
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(size if size is not None else 0)
        attempt = 0
        stale_retry_used = False
        while True:
            if self.disabled:
                return _FAILED
            remaining = self._budget_left()
            if remaining <= 0:
                self._disable("the failure time budget is spent")
                return _FAILED
            started = time.monotonic()
            reused = False
            try:
                conn, reused = self._connection(remaining)
                if body is not None and not isinstance(body, bytes):
                    try:
                        body.seek(0)
                    except OSError as exc:
                        raise _LocalIOError(exc) from exc
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                if resp.status >= 500 or resp.status in _RETRYABLE_4XX:
                    resp.read()
                    raise _RetryableStatus(resp.status, resp.reason)
                if resp.status in (401, 403):
                    resp.read()
                    return self._refused(method, path, resp.status, resp.reason)
                result = handle(resp)
                if resp.will_close:
                    self._drop_connection()
            except _LocalIOError as exc:
                self._drop_connection()
                raise exc.error from None
            except _RejectedStatus as exc:
                self._record_failure(time.monotonic() - started, self._explain(method, path, exc))
                if method == "PUT":
                    self._disable_uploads(self._explain(method, path, exc))
                return _FAILED
            except (OSError, http.client.HTTPException, _RetryableStatus) as exc:
                self._drop_connection()
                if reused and isinstance(exc, _STALE_CONNECTION_ERRORS) and not stale_retry_used:
                    stale_retry_used = True
                    continue
                self._record_failure(time.monotonic() - started, self._explain(method, path, exc))
                if attempt >= self.retries or self.disabled:
                    return _FAILED
                pause = min(self.backoff * (2**attempt), max(0.0, self._budget_left()))
                time.sleep(pause)
                self._spend(pause)
                attempt += 1
                continue
            self._record_success()
            return result

    def _explain(self, method: str, path: str, exc: BaseException) -> str:
        kind = path.split("/")[1]
        if isinstance(exc, _RetryableStatus | _RejectedStatus):
            text = str(exc)
        elif isinstance(exc, TimeoutError | socket.timeout):
            text = "timed out"
        else:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return f"{method} /{kind}/…: {text}"

    def _refused(self, method: str, path: str, status: int, reason: str) -> _Failed:
        """401/403: credentials missing or wrong. Retrying cannot help."""
        who = self._credentials.describe() if self._credentials else "no credentials"
        hint = (
            f"(sent {who}; set OCCLUM_RULES_REMOTE_USER + OCCLUM_RULES_REMOTE_PASSWORD or "
            "OCCLUM_RULES_REMOTE_TOKEN)"
        )
        self._count(errors=1)
        if method == "PUT":
            self._disable_uploads(f"the server refused the upload with HTTP {status} (sent {who})")
        else:
            self._disable(f"the server refused access with HTTP {status} {reason} {hint}")
        return _FAILED

    # --------------------------------------------------------- connections

    def _connection(self, budget_left: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection (opened if needed) and whether it served before."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        connect_timeout = min(self.connect_timeout, budget_left)
        read_timeout = min(self.read_timeout, budget_left)
        if conn is None:
            if self._tls:
                conn = _HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=connect_timeout,
                    context=self._ssl_context,
                    blocksize=_CHUNK,
                )
            else:
                conn = _HTTPConnection(
                    self._host, self._port, timeout=connect_timeout, blocksize=_CHUNK
                )
            conn.read_timeout = read_timeout
            conn.connect()
            self._local.conn = conn
            with self._lock:
                self._connections.add(conn)
            return conn, False
        conn.timeout = connect_timeout
        conn.read_timeout = read_timeout  # type: ignore[attr-defined]
        if conn.sock is None:
            conn.connect()
            with self._lock:
                self._connections.add(conn)
            return conn, False
        conn.sock.settimeout(read_timeout)
        return conn, True

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    # ------------------------------------------------- failure accounting (hooks)

    def _after_disable(self) -> None:
        # Only this thread's connection: closing one another thread is using would make
        # http.client fail there with something other than a network error.
        self._drop_connection()

    def _uploads_hint(self, why: str) -> str:
        if "/ac/" in why and "HTTP 400" in why:
            return (
                " (bazel-remote accepts only protobuf ActionResults in /ac/: install "
                "'occlum-rules[remote]', which writes them, or run it with "
                "--disable_http_ac_validation)"
            )
        return ""

    @staticmethod
    def _parse_url(url: str, where: str) -> Any:
        shown = redact_url(url)
        try:
            parts = urlsplit(url.strip())
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise UserError(f"not a valid URL: {shown}", where=where) from None
        if parts.scheme not in ("http", "https"):
            raise UserError(
                "remote cache URL must start with http://, https://, grpc:// or grpcs://, got "
                f"{shown}", where=where
            )
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise UserError(
                f"remote cache URL must not contain credentials ({shown}); set "
                "OCCLUM_RULES_REMOTE_USER and OCCLUM_RULES_REMOTE_PASSWORD, or "
                "OCCLUM_RULES_REMOTE_TOKEN, in the environment instead",
                where=where,
            )
        if not parts.hostname:
            raise UserError(f"remote cache URL has no host: {shown}", where=where)
        if parts.fragment:
            raise UserError(f"remote cache URL must not have a #fragment: {shown}", where=where)
        return parts


_LIVE_CLIENTS: weakref.WeakSet[RemoteCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_LIVE_CLIENTS):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------- configuration

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def configured_url(setting: object, where: str, environ: Mapping[str, str],
                   env_name: str) -> tuple[str | None, str]:
    """A service URL from WORKSPACE.yaml (``setting``, found at ``where``) unless the
    environment variable ``env_name`` names one; (None, where) when neither does or the
    variable says ``off``/``none``. Empty counts as unset: CI templates expand missing
    variables to ""."""
    env_url = environ.get(env_name, "").strip()
    if env_url:
        if env_url.lower() in ("off", "none"):
            return None, env_name
        setting, where = env_url, env_name
    if setting is not None and not isinstance(setting, str):
        raise UserError(f"expected a URL string, got {type(setting).__name__}", where=where)
    if not setting or not setting.strip():
        return None, where
    return setting, where


def _env_bool(environ: Mapping[str, str], name: str) -> bool | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UserError(f"expected 1 or 0 (true/false), got {raw!r}", where=name)


def env_seconds(environ: Mapping[str, str], name: str) -> float | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise UserError(f"expected a positive number of seconds, got {raw!r}", where=name)
    return value


def remote_from_config(
    remote_url: str | None,
    upload: bool | None,
    environ: Mapping[str, str] | None = None,
    instance_name: str | None = None,
    **options: Any,
) -> Any:
    """The remote cache this build should use (:class:`RemoteCache`, or a
    ``reapi_cache.ReapiCache`` for ``grpc://`` and ``grpcs://`` URLs), or None.

    ``remote_url``, ``upload`` and ``instance_name`` are WORKSPACE.yaml's ``cache.remote``,
    ``cache.upload`` and ``cache.instance_name`` (gRPC only). The environment wins over
    them: ``OCCLUM_RULES_REMOTE_CACHE`` (``off`` switches the remote off; empty counts as
    unset), ``OCCLUM_RULES_REMOTE_UPLOAD=1|0``, ``OCCLUM_RULES_REMOTE_INSTANCE`` and
    ``OCCLUM_RULES_REMOTE_TIMEOUT`` (seconds, for both connect and read). Credentials come
    only from the environment. Uploads are off unless one of them turns them on, so a job
    that was merely given the URL (a pull request, a laptop) reads but never writes.
    ``options`` go to the client.
    """
    # (``environ`` defaults to None, not os.environ: a default shown by help() or a
    # traceback would print the whole environment, credentials included.)
    if environ is None:
        environ = os.environ
    url, where = configured_url(remote_url, "WORKSPACE.yaml: cache.remote", environ, ENV_URL)
    if url is None:
        return None
    env_upload = _env_bool(environ, ENV_UPLOAD)
    if env_upload is not None:
        upload_on = env_upload
    elif upload is None:
        upload_on = False
    elif isinstance(upload, bool):
        upload_on = upload
    else:
        raise UserError(
            f"expected true or false, got {upload!r}", where="WORKSPACE.yaml: cache.upload"
        )
    timeout = env_seconds(environ, ENV_TIMEOUT)
    credentials = credentials_from_env(environ)
    if url.strip().lower().startswith(("grpc://", "grpcs://")):
        from occlum_rules.core.reapi_cache import ReapiCache, parse_target

        instance_where = "WORKSPACE.yaml: cache.instance_name"
        env_instance = environ.get(ENV_INSTANCE, "").strip()
        if env_instance:
            instance_name, instance_where = env_instance, ENV_INSTANCE
        target = parse_target(url, instance_name, where, instance_where)
        if timeout is not None:
            options.setdefault("timeout", timeout)
        return ReapiCache(target, upload=upload_on, credentials=credentials,
                          tls_files=tls_files_from_env(environ), **options)
    if timeout is not None:
        options.setdefault("connect_timeout", timeout)
        options.setdefault("read_timeout", timeout)
    return RemoteCache(
        url.strip(), upload=upload_on, credentials=credentials, where=where, **options
    )
