"""The remote cache client against a real nginx WebDAV server and small real HTTP servers.

nginx plays the team's cache; ``http.server`` plays a sick one (500s, slow answers, closed
keep-alive connections); a closed port plays a dead one. The failure tests measure wall
time, because "the build continues locally within a few seconds" is the promise.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from occlum_rules.core.cache_entry import fetch_remote
from occlum_rules.core.digests import tree_digest
from occlum_rules.core.remote_cache import RemoteCache, RemoteCacheStats, remote_from_config
from occlum_rules.core.store import LocalStore
from occlum_rules.credentials import (
    RemoteCredentials,
    credentials_from_env,
    redact_url,
)
from occlum_rules.errors import UserError
from tests.support.nginx import (  # noqa: F401 - the fixture is used by its name
    NGINX_TEST_PASSWORD,
    NGINX_TEST_TOKEN,
    NGINX_TEST_USER,
    NginxCache,
    nginx_cache_fixture,
)

LOGGER = "occlum_rules.remote_cache"
ENV_KEYS = (
    "OCCLUM_RULES_REMOTE_CACHE",
    "OCCLUM_RULES_REMOTE_UPLOAD",
    "OCCLUM_RULES_REMOTE_TIMEOUT",
    "OCCLUM_RULES_REMOTE_USER",
    "OCCLUM_RULES_REMOTE_PASSWORD",
    "OCCLUM_RULES_REMOTE_TOKEN",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    return caplog


def remote_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def make_blob(directory: Path, data: bytes, name: str = "blob") -> tuple[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), path


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ a sick server


class StubServer:
    """A real HTTP/1.1 server answering every request with ``status`` after ``delay``.

    ``close_after_response`` drops the connection after each answer without saying so,
    the way an idle keep-alive connection dies on a real server.
    """

    def __init__(
        self,
        status: int = 500,
        delay: float = 0.0,
        body: bytes = b"stub",
        close_after_response: bool = False,
    ):
        self.status = status
        self.delay = delay
        self.body = body
        self.close_after_response = close_after_response
        self.requests: list[tuple[str, str, str | None]] = []
        self.release = threading.Event()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                stub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if stub.delay:
                    stub.release.wait(stub.delay)
                self.send_response(stub.status)
                self.send_header("Content-Length", str(len(stub.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(stub.body)
                if stub.close_after_response:
                    self.close_connection = True

            do_GET = do_PUT = do_HEAD = _answer

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 64  # the default 5 drops SYNs from many threads (1 s retry)

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the client hanging up on a slow answer is the point of some tests

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/base"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------ nginx round trips


def test_blob_round_trip_through_nginx(nginx_cache: NginxCache, tmp_path: Path) -> None:
    data = b"occlum image file\n" * 1000
    digest, src = make_blob(tmp_path / "src", data)
    with RemoteCache(nginx_cache.url()) as remote:
        assert remote.put_blob(digest, src) is True
        assert nginx_cache.stored_path("cas", digest).read_bytes() == data
        assert remote.has_blob(digest) is True
        dest = tmp_path / "out" / "nested" / digest
        assert remote.fetch_blob(digest, dest) is True
        assert dest.read_bytes() == data
        assert remote.stats.uploads == 1 and remote.stats.hits == 1
        assert remote.stats.bytes_up == len(data) and remote.stats.bytes_down == len(data)
        assert not remote.disabled and remote.stats.errors == 0
    assert [p.name for p in dest.parent.iterdir()] == [digest]  # no temp file left


def test_large_blob_streams_both_ways(nginx_cache: NginxCache, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest, src = make_blob(tmp_path, data)
    remote = RemoteCache(nginx_cache.url())
    assert remote.put_blob(digest, src)
    dest = tmp_path / "copy"
    assert remote.fetch_blob(digest, dest, mode=0o444)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert dest.stat().st_mode & 0o777 == 0o444
    remote.close()


def test_fetched_blobs_take_their_outputs_modes_so_restores_link(
        nginx_cache: NginxCache, tmp_path: Path) -> None:
    """A blob fetched for an entry gets the mode of the first output made of it (here a file
    of a tree); a blob no well-formed record names a mode for stays read-only."""
    store = LocalStore(tmp_path / "a")
    tool, data = store.put_bytes(b"#!/bin/sh\n"), store.put_bytes(b"data\n" * 100)
    entries = [{"path": "bin", "type": "dir", "mode": 0o755},
               {"path": "bin/tool", "type": "file", "mode": 0o755, "size": 10, "sha256": tool},
               {"path": "data", "type": "file", "mode": 0o4755, "size": 500, "sha256": data}]
    manifest = {"outputs": [{"path": "out/tree", "type": "dir", "entries": entries,
                             "digest": "tree:" + tree_digest(entries)}],
                "label": "//t:t", "kind": "test", "dynamic": []}
    key = key_of("modes")
    with RemoteCache(nginx_cache.url()) as remote:
        assert remote.put_entry(store, key, manifest) is True
    fresh = LocalStore(tmp_path / "b")
    with RemoteCache(nginx_cache.url()) as remote:
        assert fetch_remote(remote, fresh, key) is not None
    assert fresh.cas_path(tool).stat().st_mode & 0o7777 == 0o755
    assert fresh.cas_path(data).stat().st_mode & 0o7777 == 0o444  # not a permission mode
    fresh.restore(tool, tmp_path / "tool", 0o755)
    assert (tmp_path / "tool").stat().st_ino == fresh.cas_path(tool).stat().st_ino


def test_action_result_round_trip_and_miss(nginx_cache: NginxCache) -> None:
    remote = RemoteCache(nginx_cache.url())
    key = key_of("action")
    entry = b'{"outputs": {"app": "abc"}}'
    assert remote.get_action_result(key) is None
    assert remote.put_action_result(key, entry) is True
    assert nginx_cache.stored_path("ac", key).read_bytes() == entry
    assert remote.get_action_result(key) == entry
    assert (remote.stats.hits, remote.stats.misses, remote.stats.uploads) == (1, 1, 1)
    assert not remote.disabled


def test_put_blob_heads_first_and_skips_existing(nginx_cache: NginxCache, tmp_path: Path) -> None:
    digest, src = make_blob(tmp_path, b"already there")
    remote = RemoteCache(nginx_cache.url())
    assert remote.put_blob(digest, src)
    assert remote.put_blob(digest, src)
    methods = [e.method for e in nginx_cache.access_entries(at_least=3)]
    assert methods == ["HEAD", "PUT", "HEAD"]
    assert remote.stats.uploads == 1 and remote.stats.upload_skips == 1


def test_miss_is_not_retried(nginx_cache: NginxCache, tmp_path: Path) -> None:
    remote = RemoteCache(nginx_cache.url())
    assert remote.fetch_blob(key_of("absent"), tmp_path / "x") is False
    entries = nginx_cache.access_entries(at_least=1)
    time.sleep(0.1)  # room for a retry to show up in the log, if there were one
    entries = nginx_cache.access_entries()
    assert [(e.method, e.status) for e in entries] == [("GET", 404)]
    assert remote.stats.misses == 1 and remote.stats.errors == 0 and not remote.disabled
    assert not (tmp_path / "x").exists()


def test_one_keep_alive_connection_serves_a_thread(nginx_cache: NginxCache) -> None:
    remote = RemoteCache(nginx_cache.url())
    for i in range(6):
        remote.put_action_result(key_of(str(i)), b"x")
        remote.get_action_result(key_of(str(i)))
    entries = nginx_cache.access_entries(at_least=12)
    assert len(entries) == 12
    assert len({e.connection for e in entries}) == 1
    assert [e.connection_requests for e in entries] == list(range(1, 13))


def test_forked_child_does_not_share_the_parents_socket(nginx_cache: NginxCache) -> None:
    remote = RemoteCache(nginx_cache.url())
    assert remote.put_action_result(key_of("parent"), b"p")  # the parent's connection is open
    pid = os.fork()
    if pid == 0:  # the child: what doit -P process does with an inherited client
        ok = remote.get_action_result(key_of("parent")) == b"p" and remote.put_action_result(
            key_of("child"), b"c"
        )
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert remote.get_action_result(key_of("child")) == b"c"  # the parent's socket still works
    entries = nginx_cache.access_entries(at_least=4)
    parent_conn = entries[0].connection
    assert [e.connection == parent_conn for e in entries] == [True, False, False, True]
    assert remote.stats.errors == 0
    remote.close()


def test_threads_each_reuse_their_own_connection(nginx_cache: NginxCache, tmp_path: Path) -> None:
    remote = RemoteCache(nginx_cache.url())
    blobs = [make_blob(tmp_path / "src", os.urandom(4096), f"b{i}") for i in range(24)]
    for digest, path in blobs:
        assert remote.put_blob(digest, path)
    before = len(nginx_cache.access_entries(at_least=48))
    results: list[bool] = []

    def worker(chunk: list[tuple[str, Path]]) -> None:
        for digest, _ in chunk:
            results.append(remote.fetch_blob(digest, tmp_path / "dest" / digest))

    threads = [threading.Thread(target=worker, args=(blobs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 24
    fetches = nginx_cache.access_entries(at_least=before + 24)[before:]
    assert len(fetches) == 24 and len({e.connection for e in fetches}) <= 4
    remote.close()


# ------------------------------------------------------------ integrity


def test_tampered_blob_is_never_used(
    nginx_cache: NginxCache, tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    digest, src = make_blob(tmp_path / "src", b"genuine bytes")
    good_digest, good = make_blob(tmp_path / "src", b"another genuine blob", "good")
    remote = RemoteCache(nginx_cache.url())
    assert remote.put_blob(digest, src) and remote.put_blob(good_digest, good)
    nginx_cache.stored_path("cas", digest).write_bytes(b"evil bytes!!!")

    dest_dir = tmp_path / "dest"
    assert remote.fetch_blob(digest, dest_dir / "blob") is False
    assert list(dest_dir.iterdir()) == []  # neither the blob nor a temp file
    assert remote.stats.digest_mismatches == 1 and remote.stats.misses == 1
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and digest in lines[0] and "sha256" in lines[0]
    # a mismatch is the blob's fault, not the server's: the remote stays on
    assert not remote.disabled
    assert remote.fetch_blob(good_digest, dest_dir / "good")


# ------------------------------------------------------------ failure handling


def test_dead_server_switches_off_quickly_with_one_warning(
    tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    remote = RemoteCache(f"http://127.0.0.1:{closed_port()}/cache")
    digest, src = make_blob(tmp_path, b"data")
    started = time.monotonic()
    assert remote.fetch_blob(digest, tmp_path / "out") is False
    assert time.monotonic() - started < 2.0
    assert remote.disabled and remote.stats.errors == 3

    started = time.monotonic()
    for _ in range(50):
        assert remote.fetch_blob(digest, tmp_path / "out") is False
        assert remote.get_action_result(digest) is None
        assert remote.put_blob(digest, src) is False
        assert remote.put_action_result(digest, b"x") is False
    assert time.monotonic() - started < 0.5
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1
    assert "switched off" in lines[0] and "3 failed requests in a row" in lines[0]
    assert remote.stats.errors == 3  # nothing more was attempted


def test_unanswered_connect_is_bounded_by_the_failure_budget(
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    # A listening socket whose backlog is full drops further SYNs, like a firewalled host.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)
        try:
            remote = RemoteCache(f"http://127.0.0.1:{port}/c", failure_budget=1.0)  # 5 s timeouts
            started = time.monotonic()
            for i in range(3):
                assert remote.get_action_result(key_of(str(i))) is None
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert 0.9 < elapsed < 1.6
    assert remote.disabled
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and "timed out" in lines[0]


def test_http_500_is_retried_then_switched_off(
    tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    with StubServer(status=500) as stub:
        remote = RemoteCache(stub.url, retries=2, backoff=0.01)
        assert remote.get_action_result(key_of("a")) is None
        assert len(stub.requests) == 3
        assert all(method == "GET" for method, _, _ in stub.requests)
        assert stub.requests[0][1] == f"/base/ac/{key_of('a')}"
        assert remote.disabled
        assert remote.get_action_result(key_of("b")) is None
        assert remote.fetch_blob(key_of("c"), tmp_path / "c") is False
        assert len(stub.requests) == 3
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and "HTTP 500" in lines[0]


def test_single_5xx_is_recovered_by_retry(tmp_path: Path) -> None:
    with StubServer(status=503) as stub:
        remote = RemoteCache(stub.url, retries=2, backoff=0.01, max_failures=3)
        stub_answers = iter([503, 200])

        original = stub.server.RequestHandlerClass._answer  # type: ignore[attr-defined]

        def flaky(handler: http.server.BaseHTTPRequestHandler) -> None:
            stub.status = next(stub_answers, 200)
            original(handler)

        stub.server.RequestHandlerClass.do_GET = flaky  # type: ignore[attr-defined]
        stub.body = b"entry"
        assert remote.get_action_result(key_of("k")) == b"entry"
        assert len(stub.requests) == 2 and remote.stats.errors == 1 and not remote.disabled


def test_slow_server_is_cut_off_by_the_read_timeout(
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    with StubServer(status=200, delay=5.0) as stub:
        remote = RemoteCache(stub.url, read_timeout=0.3, retries=2, backoff=0.01)
        started = time.monotonic()
        assert remote.get_action_result(key_of("slow")) is None
        elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 2.0  # three attempts of 0.3 s, not the server's 5 s
    assert remote.disabled
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and "timed out" in lines[0]


def test_failure_budget_bounds_the_total_delay(warnings_log: pytest.LogCaptureFixture) -> None:
    with StubServer(status=200, delay=5.0) as stub:
        remote = RemoteCache(stub.url, read_timeout=4.0, failure_budget=0.6, max_failures=10)
        started = time.monotonic()
        for i in range(5):
            assert remote.get_action_result(key_of(str(i))) is None
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert remote.disabled
    assert len(remote_warnings(warnings_log)) == 1


def test_idle_connection_closed_by_server_is_reopened_silently() -> None:
    with StubServer(status=200, body=b"payload", close_after_response=True) as stub:
        remote = RemoteCache(stub.url)
        for i in range(5):
            assert remote.get_action_result(key_of(str(i))) == b"payload"
        assert remote.stats.errors == 0 and not remote.disabled
        assert len(stub.requests) == 5


# ------------------------------------------------------------ upload switch


def test_upload_disabled_sends_no_puts(
    nginx_cache: NginxCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_UPLOAD", "0")
    remote = remote_from_config(nginx_cache.url(), upload=True)
    assert remote is not None and remote.upload_enabled is False
    digest, src = make_blob(tmp_path, b"not for upload")
    assert remote.put_blob(digest, src) is False
    assert remote.put_action_result(key_of("k"), b"entry") is False
    assert remote.get_action_result(key_of("k")) is None  # reads still happen
    assert nginx_cache.stored_files() == []
    assert [e.method for e in nginx_cache.access_entries(at_least=1)] == ["GET"]
    assert remote.stats.uploads == 0


# ------------------------------------------------------------ credentials


def test_basic_auth_from_env_and_secret_never_shown(
    nginx_cache: NginxCache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_USER", NGINX_TEST_USER)
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_PASSWORD", NGINX_TEST_PASSWORD)
    remote = remote_from_config(nginx_cache.url("private"), upload=True)
    assert remote is not None
    digest, src = make_blob(tmp_path, b"private blob")
    assert remote.put_blob(digest, src)
    assert remote.fetch_blob(digest, tmp_path / "back")
    assert remote.put_action_result(key_of("p"), b"entry")
    assert remote.get_action_result(key_of("p")) == b"entry"
    assert nginx_cache.stored_path("cas", digest, "private").exists()
    entries = nginx_cache.access_entries(at_least=5)
    assert [(e.method, e.status) for e in entries] == [
        ("HEAD", 404),
        ("PUT", 201),
        ("GET", 200),
        ("PUT", 201),
        ("GET", 200),
    ]

    # the same location without credentials is refused: switched off, one clear warning
    anonymous = RemoteCache(nginx_cache.url("private"))
    assert anonymous.fetch_blob(digest, tmp_path / "anon") is False
    assert anonymous.disabled
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and "HTTP 401" in lines[0] and "OCCLUM_RULES_REMOTE_USER" in lines[0]

    shown = " ".join([repr(remote), str(remote.stats), repr(remote._credentials)])
    out, err = capfd.readouterr()
    for text in (shown, out, err, warnings_log.text, *lines):
        assert NGINX_TEST_PASSWORD not in text


def test_wrong_password_is_refused_without_leaking_it(
    nginx_cache: NginxCache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    wrong = "WRONG-" + NGINX_TEST_PASSWORD
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_USER", NGINX_TEST_USER)
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_PASSWORD", wrong)
    remote = remote_from_config(nginx_cache.url("private"), upload=True)
    assert remote is not None
    started = time.monotonic()
    assert remote.get_action_result(key_of("x")) is None
    assert time.monotonic() - started < 1.0
    assert remote.disabled
    nginx_cache.access_entries(at_least=1)
    time.sleep(0.1)
    assert len(nginx_cache.access_entries()) == 1  # 401 is not retried
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and "401" in lines[0] and repr(NGINX_TEST_USER) in lines[0]
    out, err = capfd.readouterr()
    for text in (out, err, warnings_log.text, repr(remote)):
        assert wrong not in text and NGINX_TEST_PASSWORD not in text


def test_anonymous_reads_with_authenticated_writes(
    nginx_cache: NginxCache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    writer = RemoteCache(
        nginx_cache.url("readonly"),
        credentials=RemoteCredentials("basic", NGINX_TEST_PASSWORD, user=NGINX_TEST_USER),
    )
    digest, src = make_blob(tmp_path, b"published by main")
    assert writer.put_blob(digest, src)

    reader = RemoteCache(nginx_cache.url("readonly"), upload=True)  # a fork's CI job
    other, other_src = make_blob(tmp_path, b"from a pull request", "pr")
    assert reader.put_blob(other, other_src) is False
    assert reader.stats.uploads_disabled and not reader.disabled
    assert reader.fetch_blob(digest, tmp_path / "got")  # downloads continue
    assert reader.put_action_result(key_of("pr"), b"x") is False  # no further PUT tried
    entries = nginx_cache.access_entries(at_least=5)  # HEAD PUT | HEAD PUT GET
    puts = [e for e in entries if e.method == "PUT"]
    assert [e.status for e in puts] == [201, 401]
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and "uploads switched off" in lines[0]


def test_bearer_token_from_env(
    nginx_cache: NginxCache,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_TOKEN", NGINX_TEST_TOKEN)
    remote = remote_from_config(nginx_cache.url("token"), upload=True)
    assert remote is not None
    assert remote.put_action_result(key_of("t"), b"token entry")
    assert remote.get_action_result(key_of("t")) == b"token entry"
    monkeypatch.delenv("OCCLUM_RULES_REMOTE_TOKEN")
    anonymous = remote_from_config(nginx_cache.url("token"), upload=True)
    assert anonymous is not None and anonymous.get_action_result(key_of("t")) is None
    assert anonymous.disabled
    out, err = capfd.readouterr()
    for text in (out, err, warnings_log.text, repr(remote)):
        assert NGINX_TEST_TOKEN not in text


def test_credentials_in_url_are_rejected_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "hunter2-very-secret"
    with pytest.raises(UserError) as info:
        remote_from_config(f"https://bob:{secret}@cache.example.com/c", upload=None)
    message = str(info.value)
    assert secret not in message and "bob" not in message
    assert "OCCLUM_RULES_REMOTE_USER" in message and "WORKSPACE.yaml" in message

    monkeypatch.setenv("OCCLUM_RULES_REMOTE_CACHE", f"http://{secret}@cache.example.com")
    with pytest.raises(UserError) as info:
        remote_from_config(None, upload=None)
    assert secret not in str(info.value) and "OCCLUM_RULES_REMOTE_CACHE" in str(info.value)


def test_half_set_or_conflicting_credentials_are_errors() -> None:
    with pytest.raises(UserError, match="OCCLUM_RULES_REMOTE_PASSWORD is missing"):
        credentials_from_env({"OCCLUM_RULES_REMOTE_USER": "u"})
    with pytest.raises(UserError, match="not both"):
        credentials_from_env({"OCCLUM_RULES_REMOTE_TOKEN": "t", "OCCLUM_RULES_REMOTE_USER": "u"})
    creds = credentials_from_env(
        {"OCCLUM_RULES_REMOTE_USER": "u", "OCCLUM_RULES_REMOTE_PASSWORD": "pw-xyz"}
    )
    assert creds is not None and creds.authorization_header() == "Basic dTpwdy14eXo="
    assert "pw-xyz" not in repr(creds) and "pw-xyz" not in str(creds)
    assert credentials_from_env({}) is None


def test_plain_http_credentials_to_a_remote_host_warn(
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    creds = RemoteCredentials("bearer", "tok-abc")
    RemoteCache("http://cache.example.com/c", credentials=creds)
    RemoteCache("http://127.0.0.1:9/c", credentials=creds)
    RemoteCache("https://cache.example.com/c", credentials=creds)
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and "plain http" in lines[0] and "tok-abc" not in lines[0]


# ------------------------------------------------------------ configuration


def test_environment_overrides_workspace_config() -> None:
    env = {"OCCLUM_RULES_REMOTE_CACHE": "http://env.example:8080/c"}
    remote = remote_from_config("http://ws.example/c", upload=None, environ=env)
    assert remote is not None and remote.display_url == "http://env.example:8080/c"
    assert remote.upload_enabled is False  # uploads only when asked for

    assert remote_from_config(None, upload=None, environ={}) is None
    assert remote_from_config("", upload=True, environ={}) is None
    off = {"OCCLUM_RULES_REMOTE_CACHE": "off"}
    assert remote_from_config("http://ws.example/c", upload=True, environ=off) is None
    empty = {"OCCLUM_RULES_REMOTE_CACHE": "", "OCCLUM_RULES_REMOTE_UPLOAD": ""}
    kept = remote_from_config("http://ws.example/c", upload=True, environ=empty)
    assert kept is not None and kept.display_url == "http://ws.example/c" and kept.upload_enabled

    ws = remote_from_config("http://ws.example/c", upload=False, environ={})
    assert ws is not None and ws.upload_enabled is False
    forced = remote_from_config(
        "http://ws.example/c", upload=False, environ={"OCCLUM_RULES_REMOTE_UPLOAD": "1"}
    )
    assert forced is not None and forced.upload_enabled is True

    timed = remote_from_config(
        "http://ws.example/c", upload=None, environ={"OCCLUM_RULES_REMOTE_TIMEOUT": "1.5"}
    )
    assert timed is not None and timed.connect_timeout == timed.read_timeout == 1.5


@pytest.mark.parametrize(
    ("url", "upload", "env", "where"),
    [
        ("ftp://ws.example/c", None, {}, "WORKSPACE.yaml: cache.remote"),
        ("http://", None, {}, "WORKSPACE.yaml: cache.remote"),
        ("http://ws.example:99999/c", None, {}, "WORKSPACE.yaml: cache.remote"),
        ("http://ws.example/c", "yes", {}, "WORKSPACE.yaml: cache.upload"),
        (
            "http://ws.example/c",
            None,
            {"OCCLUM_RULES_REMOTE_UPLOAD": "maybe"},
            "OCCLUM_RULES_REMOTE_UPLOAD",
        ),
        (
            "http://ws.example/c",
            None,
            {"OCCLUM_RULES_REMOTE_TIMEOUT": "-1"},
            "OCCLUM_RULES_REMOTE_TIMEOUT",
        ),
        (None, None, {"OCCLUM_RULES_REMOTE_CACHE": "cache.example"}, "OCCLUM_RULES_REMOTE_CACHE"),
    ],
)
def test_bad_configuration_is_one_clear_error(
    url: str | None, upload: object, env: dict[str, str], where: str
) -> None:
    with pytest.raises(UserError) as info:
        remote_from_config(url, upload, environ=env)  # type: ignore[arg-type]
    assert info.value.where == where


def test_malformed_digests_are_refused_before_any_request(tmp_path: Path) -> None:
    remote = RemoteCache(f"http://127.0.0.1:{closed_port()}")
    for bad in ("../../etc/passwd", "ABC", "a" * 63, "A" * 64):
        with pytest.raises(ValueError):
            remote.fetch_blob(bad, tmp_path / "x")
        with pytest.raises(ValueError):
            remote.get_action_result(bad)
    assert remote.stats.errors == 0


def test_redact_url() -> None:
    assert redact_url("https://u:p@h.example:1/x?sig=abc") == "https://***@h.example:1/x?***"
    assert redact_url("http://h/x") == "http://h/x"


def test_stats_summary_is_one_line() -> None:
    stats = RemoteCacheStats(hits=2, misses=1, bytes_down=3 * 1024 * 1024, disabled=True)
    line = stats.summary()
    assert "\n" not in line and "2 hits" in line and "3.0 MiB down" in line
    assert "switched off" in line
    assert stats.as_dict()["hits"] == 2


def test_rejected_action_upload_names_the_bazel_remote_fix(
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    with StubServer(status=400) as stub:
        remote = RemoteCache(stub.url)
        assert remote.put_action_result(key_of("k"), b'{"not": "protobuf"}') is False
        assert remote.put_action_result(key_of("k2"), b"again") is False
        assert len(stub.requests) == 1 and stub.requests[0][0] == "PUT"
    assert remote.stats.uploads_disabled and not remote.disabled
    lines = remote_warnings(warnings_log)
    assert len(lines) == 1 and "--disable_http_ac_validation" in lines[0]


def test_too_many_requests_is_retried(warnings_log: pytest.LogCaptureFixture) -> None:
    with StubServer(status=429) as stub:
        remote = RemoteCache(stub.url, retries=2, backoff=0.01)
        assert remote.get_action_result(key_of("k")) is None
        assert len(stub.requests) == 3 and remote.disabled


def test_concurrent_failures_still_warn_once(
    tmp_path: Path, warnings_log: pytest.LogCaptureFixture
) -> None:
    with StubServer(status=503, delay=0.01) as stub:
        remote = RemoteCache(stub.url, backoff=0.01, max_failures=2)
        barrier = threading.Barrier(8)
        crashes: list[BaseException] = []

        def worker(i: int) -> None:
            barrier.wait()
            try:
                for j in range(3):
                    assert remote.get_action_result(key_of(f"{i}-{j}")) is None
            except BaseException as exc:  # a failing remote must never raise into a build
                crashes.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - started < 2.0
    assert crashes == []
    assert remote.disabled
    assert len(remote_warnings(warnings_log)) == 1


@pytest.mark.parametrize("entry", ["garbage", "escaping digest"])
def test_foreign_action_entry_is_a_miss(nginx_cache: NginxCache, tmp_path: Path,
                                        entry: str) -> None:
    from occlum_rules.core import action_result as ar
    from occlum_rules.core.reapi_stubs import load_messages
    from occlum_rules.core.store import LocalStore

    pb = load_messages()
    key = key_of(entry)
    if entry == "garbage":
        data = b"\xff\xfe not a protobuf"
    else:
        data = ar.serialize(pb.re.ActionResult(output_directories=[pb.re.OutputDirectory(
            path="out/d", tree_digest=pb.re.Digest(hash="../../../etc/passwd", size_bytes=9))]))
    remote = RemoteCache(nginx_cache.url())
    assert remote.put_action_result(ar.action_digest_hash(pb, key), data)
    assert remote.get_entry(key, LocalStore(tmp_path / "store")) is None
    assert not (tmp_path / "etc").exists() and not remote.disabled
    remote.close()
