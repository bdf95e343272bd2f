"""The REAPI (gRPC) cache client against a real BuildGrid, and against sick servers.

BuildGrid plays the team's cache (CAS + ByteStream + ActionCache + Capabilities, blobs on
disk in the test's temp dir); a closed port plays a dead server, a socket that accepts and
never answers a hung one, and a socket that answers with junk a confused one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from occlum_rules.core import action_result as ar
from occlum_rules.core import reapi_stubs
from occlum_rules.core.cache_entry import fetch_remote
from occlum_rules.core.reapi_cache import ReapiCache, ReapiTarget, parse_target
from occlum_rules.core.remote_cache import remote_from_config
from occlum_rules.core.store import LocalStore
from occlum_rules.credentials import tls_files_from_env
from occlum_rules.errors import UserError
from tests.support.buildgrid import (  # noqa: F401 - the fixture
    BuildGrid,
    buildgrid_fixture,
    make_tls,
    require_bgd,
    start_buildgrid,
)

LOGGER = "occlum_rules.remote_cache"
ENV_KEYS = ("OCCLUM_RULES_REMOTE_CACHE", "OCCLUM_RULES_REMOTE_UPLOAD", "OCCLUM_RULES_REMOTE_TIMEOUT",
            "OCCLUM_RULES_REMOTE_USER", "OCCLUM_RULES_REMOTE_PASSWORD", "OCCLUM_RULES_REMOTE_TOKEN",
            "OCCLUM_RULES_REMOTE_INSTANCE", "OCCLUM_RULES_REMOTE_TLS_CA",
            "OCCLUM_RULES_REMOTE_TLS_CERT", "OCCLUM_RULES_REMOTE_TLS_KEY")
TOKEN = "tok-reapi-" + os.urandom(8).hex()


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


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def client(server: BuildGrid, **options: object) -> ReapiCache:
    return ReapiCache(ReapiTarget("127.0.0.1", server.port, False, server.instance), **options)


def entry_with(store: LocalStore, **blobs: bytes) -> dict:
    """A manifest of file outputs named after ``blobs``' keys, their bytes in the store."""
    outputs = []
    for name, data in blobs.items():
        digest = store.put_bytes(data)
        outputs.append({"path": f"out/{name}", "type": "file", "mode": 0o644, "size": len(data),
                        "sha256": digest, "digest": digest})
    return {"outputs": outputs, "label": "//t:t", "kind": "test", "dynamic": []}


# ------------------------------------------------------------------- BuildGrid


def test_entry_round_trip_small_and_large_blobs(buildgrid: BuildGrid, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a")
    large = os.urandom(5 * 1024 * 1024 + 3)  # over the 4 MiB batch limit: ByteStream
    manifest = entry_with(store, small=b"small blob\n", large=large)
    key = key_of("round trip")
    with client(buildgrid, upload=True) as remote:
        assert remote.get_entry(key) is None
        assert remote.put_entry(store, key, manifest) is True
        assert remote.stats.errors == 0 and not remote.disabled
    on_server = {p.read_bytes() for p in buildgrid.blob_paths()}
    assert large in on_server and b"small blob\n" in on_server

    fresh = LocalStore(tmp_path / "b")
    with client(buildgrid) as remote:
        got = remote.get_entry(key)
        assert got is not None
        decoded, sizes = got
        assert decoded == manifest
        assert remote.fetch_blobs(fresh, sizes) is True
        assert remote.stats.hits == 1 and remote.stats.bytes_down >= len(large)
    digest = hashlib.sha256(large).hexdigest()
    assert fresh.cas_path(digest).read_bytes() == large
    assert fresh.cas_path(digest).stat().st_mode & 0o777 == 0o444
    assert [p.name for p in fresh.cas_path(digest).parent.iterdir()] == [digest]


def test_fetched_blobs_take_their_outputs_modes_so_restores_link(
        buildgrid: BuildGrid, tmp_path: Path) -> None:
    """A blob fetched for an entry gets the mode of the output made of it (batched and
    streamed alike), so restoring that output is a link, not a second write of the bytes."""
    store = LocalStore(tmp_path / "a")
    large = os.urandom(5 * 1024 * 1024 + 3)
    manifest = entry_with(store, small=b"small tool\n", large=large)
    manifest["outputs"][0]["mode"] = 0o755
    manifest["outputs"][1]["mode"] = 0o640
    key = key_of("modes")
    with client(buildgrid, upload=True) as remote:
        assert remote.put_entry(store, key, manifest) is True
    fresh = LocalStore(tmp_path / "b")
    with client(buildgrid) as remote:
        assert fetch_remote(remote, fresh, key) is not None
    for out in manifest["outputs"]:
        blob = fresh.cas_path(out["sha256"])
        assert blob.stat().st_mode & 0o777 == out["mode"]
        dest = tmp_path / out["path"].replace("/", "_")
        fresh.restore(out["sha256"], dest, out["mode"])
        assert dest.stat().st_ino == blob.stat().st_ino


def test_find_missing_skips_blobs_the_server_has(buildgrid: BuildGrid, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    manifest = entry_with(store, one=b"1", two=b"2")
    with client(buildgrid, upload=True) as remote:
        assert remote.put_entry(store, key_of("a"), manifest)
        uploads = remote.stats.uploads
        assert remote.put_entry(store, key_of("b"), manifest)
        # the second entry names the same files: only its Action, Command and result go up
        assert remote.stats.uploads - uploads == 3
        assert remote.stats.upload_skips == 2


def test_uploads_off_sends_nothing(buildgrid: BuildGrid, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    manifest = entry_with(store, one=b"never sent")
    with client(buildgrid, upload=False) as remote:
        assert remote.put_entry(store, key_of("x"), manifest) is False
        assert remote.get_entry(key_of("x")) is None
    assert not buildgrid.blob_path(manifest["outputs"][0]["sha256"]).exists()


def test_stored_result_is_a_standard_action_result(buildgrid: BuildGrid, tmp_path: Path) -> None:
    import grpc

    pb = reapi_stubs.load_stubs()
    store = LocalStore(tmp_path / "s")
    manifest = entry_with(store, app=b"\x7fELF")
    manifest["outputs"][0]["mode"] = 0o755
    key = key_of("standard")
    with client(buildgrid, upload=True) as remote:
        assert remote.put_entry(store, key, manifest)
    action, command = ar.action_messages(pb, key)
    with grpc.insecure_channel(f"127.0.0.1:{buildgrid.port}") as channel:
        stub = pb.re_grpc.ActionCacheStub(channel)
        result = stub.GetActionResult(pb.re.GetActionResultRequest(
            instance_name=buildgrid.instance, action_digest=ar.blob_digest(pb, action)))
    (out,) = result.output_files
    assert (out.path, out.is_executable, out.digest.size_bytes) == ("out/app", True, 4)
    assert out.digest.hash == hashlib.sha256(b"\x7fELF").hexdigest()
    # the Action and Command behind the action digest are real blobs on the server
    assert buildgrid.blob_path(hashlib.sha256(action).hexdigest()).read_bytes() == action
    assert buildgrid.blob_path(hashlib.sha256(command).hexdigest()).read_bytes() == command


@pytest.mark.parametrize("size", [100, 5 * 1024 * 1024], ids=["batch", "bytestream"])
def test_corrupted_blob_on_the_server_is_never_used(
        buildgrid: BuildGrid, tmp_path: Path, warnings_log: pytest.LogCaptureFixture,
        size: int) -> None:
    store = LocalStore(tmp_path / "a")
    data = os.urandom(size)
    manifest = entry_with(store, blob=data)
    key = key_of(f"corrupt {size}")
    with client(buildgrid, upload=True) as remote:
        assert remote.put_entry(store, key, manifest)
    digest = hashlib.sha256(data).hexdigest()
    damaged = bytearray(data)
    damaged[size // 2] ^= 0xFF  # same size, one byte flipped on the server's disk
    path = buildgrid.blob_path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(bytes(damaged))

    fresh = LocalStore(tmp_path / "b")
    with client(buildgrid) as remote:
        got = remote.get_entry(key)
        assert got is not None
        assert remote.fetch_blobs(fresh, got[1]) is False
        assert remote.stats.digest_mismatches == 1
        assert not remote.disabled  # a bad blob is a miss, not a sick server
    assert not fresh.cas_path(digest).exists()
    assert not any(fresh.cas_path(digest).parent.glob("*")) if fresh.cas_path(
        digest).parent.exists() else True
    (warning,) = remote_warnings(warnings_log)
    assert digest in warning and "not used" in warning


def test_result_with_an_escaping_tree_is_a_miss(
        buildgrid: BuildGrid, tmp_path: Path, warnings_log: pytest.LogCaptureFixture) -> None:
    """Another client's (or an attacker's) result whose tree names ``../escape``."""
    import grpc

    pb = reapi_stubs.load_stubs()
    key = key_of("foreign")
    content = b"payload"
    tree = pb.re.Tree(root=pb.re.Directory(files=[pb.re.FileNode(
        name="../escape", digest=ar.blob_digest(pb, content))]))
    junk = ar.serialize(tree)
    action, _ = ar.action_messages(pb, key)
    result = pb.re.ActionResult(output_directories=[pb.re.OutputDirectory(
        path="out/d", tree_digest=ar.blob_digest(pb, junk))])
    with grpc.insecure_channel(f"127.0.0.1:{buildgrid.port}") as channel:
        cas = pb.re_grpc.ContentAddressableStorageStub(channel)
        cas.BatchUpdateBlobs(pb.re.BatchUpdateBlobsRequest(
            instance_name=buildgrid.instance, requests=[pb.re.BatchUpdateBlobsRequest.Request(
                digest=ar.blob_digest(pb, data), data=data) for data in (junk, content)]))
        pb.re_grpc.ActionCacheStub(channel).UpdateActionResult(pb.re.UpdateActionResultRequest(
            instance_name=buildgrid.instance, action_digest=ar.blob_digest(pb, action),
            action_result=result))
    with client(buildgrid) as remote:
        assert remote.get_entry(key) is None
        assert remote.stats.misses == 1 and not remote.disabled
    assert any("not one of ours" in w for w in remote_warnings(warnings_log))


def test_wrong_instance_name_is_a_clear_switch_off(
        buildgrid: BuildGrid, warnings_log: pytest.LogCaptureFixture) -> None:
    remote = ReapiCache(ReapiTarget("127.0.0.1", buildgrid.port, False, "no-such-instance"))
    started = time.monotonic()
    for n in range(5):
        assert remote.get_entry(key_of(str(n))) is None
    assert time.monotonic() - started < 10
    assert remote.disabled
    assert len(remote_warnings(warnings_log)) == 1
    remote.close()


def test_token_is_sent_but_never_logged(buildgrid: BuildGrid, tmp_path: Path,
                                        warnings_log: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_TOKEN", TOKEN)
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_UPLOAD", "1")
    monkeypatch.setenv("OCCLUM_RULES_REMOTE_INSTANCE", buildgrid.instance)
    remote = remote_from_config(buildgrid.url, None)
    assert isinstance(remote, ReapiCache)
    assert remote._metadata == (("authorization", f"Bearer {TOKEN}"),)
    store = LocalStore(tmp_path / "s")
    assert remote.put_entry(store, key_of("t"), entry_with(store, f=b"x"))
    assert TOKEN not in repr(remote) and TOKEN not in str(remote.stats.as_dict())
    remote._disable("test")  # a warning is printed: it names the server, not the secret
    assert all(TOKEN not in w for w in remote_warnings(warnings_log))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes()
    remote.close()


# ------------------------------------------------------------------ sick servers


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SickServer:
    """A TCP server on loopback that never speaks gRPC: ``silent`` accepts and says nothing,
    ``junk`` answers every connection with bytes that are not HTTP/2."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.mode == "junk":
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\njunk!" * 3)
                except OSError:
                    pass
                conn.close()
            else:
                self.held.append(conn)

    def __enter__(self) -> SickServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture(params=["down", "silent", "junk"])
def sick_port(request: pytest.FixtureRequest) -> Iterator[int]:
    if request.param == "down":
        yield closed_port()
        return
    with SickServer(request.param) as server:
        yield server.port


def test_sick_server_costs_a_bounded_delay_and_one_warning(
        sick_port: int, tmp_path: Path, warnings_log: pytest.LogCaptureFixture) -> None:
    remote = ReapiCache(ReapiTarget("127.0.0.1", sick_port, False, ""), upload=True,
                        timeout=1.0, failure_budget=2.0)
    store = LocalStore(tmp_path / "s")
    manifest = entry_with(store, f=b"data")
    started = time.monotonic()
    for n in range(20):
        assert remote.get_entry(key_of(str(n))) is None
        assert remote.put_entry(store, key_of(str(n)), manifest) is False
    assert time.monotonic() - started < 6  # the 2 s budget plus one deadline, not 40 calls
    assert remote.disabled
    warnings = remote_warnings(warnings_log)
    assert len(warnings) == 1 and "switched off" in warnings[0], warnings
    remote.close()


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("url, instance, message", [
    ("grpc://cache.example.com", None, "no port"),
    ("grpc://cache.example.com:8980/main", None, "instance name"),
    ("grpc://user:pw@cache.example.com:8980", None, "must not contain credentials"),
    ("grpc://:8980", None, "no host"),
    ("grpc://cache.example.com:99999", None, "not a valid URL"),
    ("grpc://cache.example.com:8980", "a//b", "not a valid instance name"),
    ("grpc://cache.example.com:8980", "main/blobs", "reserved word"),
    ("grpc://cache.example.com:8980", "spaces are bad", "not a valid instance name"),
])
def test_bad_url_or_instance_is_one_clear_error(url: str, instance: str | None,
                                                message: str) -> None:
    with pytest.raises(UserError) as exc:
        remote_from_config(url, None, environ={}, instance_name=instance)
    assert message in str(exc.value)
    assert "pw" not in str(exc.value)
    where = "cache.instance_name" if instance else "cache.remote"
    assert str(exc.value).startswith(f"WORKSPACE.yaml: {where}: ")


def test_environment_sets_url_and_instance() -> None:
    remote = remote_from_config(None, None, environ={
        "OCCLUM_RULES_REMOTE_CACHE": "grpcs://cache.example.com",
        "OCCLUM_RULES_REMOTE_INSTANCE": "ci/main", "OCCLUM_RULES_REMOTE_TIMEOUT": "2"})
    assert isinstance(remote, ReapiCache)
    assert remote.target == ReapiTarget("cache.example.com", 443, True, "ci/main")
    assert remote.timeout == 2.0 and not remote.upload_enabled
    assert parse_target("grpc://[::1]:8980", "", "w", "i").address == "[::1]:8980"


def test_tls_files_from_the_environment(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    key = b"-----BEGIN PRIVATE KEY-----\nsecret-key-bytes\n-----END PRIVATE KEY-----\n"
    (tmp_path / "ca.pem").write_bytes(pem)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(key)
    files = tls_files_from_env({"OCCLUM_RULES_REMOTE_TLS_CA": str(tmp_path / "ca.pem"),
                                "OCCLUM_RULES_REMOTE_TLS_CERT": str(tmp_path / "cert.pem"),
                                "OCCLUM_RULES_REMOTE_TLS_KEY": str(tmp_path / "key.pem")})
    assert files is not None and files.read("key") == key
    assert "secret-key-bytes" not in repr(files) and "ca, cert, key" in repr(files)
    with pytest.raises(UserError, match="must be set together"):
        tls_files_from_env({"OCCLUM_RULES_REMOTE_TLS_CERT": str(tmp_path / "cert.pem")})
    (tmp_path / "junk").write_bytes(b"not pem")
    with pytest.raises(UserError, match="not a PEM file"):
        tls_files_from_env({"OCCLUM_RULES_REMOTE_TLS_CA": str(tmp_path / "junk")})
    with pytest.raises(UserError, match="use grpcs://"):
        remote_from_config("grpc://127.0.0.1:1", None, environ={
            "OCCLUM_RULES_REMOTE_TLS_CA": str(tmp_path / "ca.pem")})


def test_grpc_url_without_the_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reapi_stubs, "_STUBS", None)
    monkeypatch.setitem(sys.modules, "grpc", None)  # an import of grpc now fails
    with pytest.raises(UserError) as exc:
        remote_from_config("grpc://127.0.0.1:8980", None, environ={})
    assert "pip install 'occlum-rules[remote]'" in str(exc.value)


def test_http_cache_never_imports_grpc(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['grpc'] = None\n"
        "sys.modules['google.protobuf'] = None\n"
        "from occlum_rules.core import executor, cache_entry\n"
        "from occlum_rules.core.remote_cache import RemoteCache, remote_from_config\n"
        "r = remote_from_config('http://127.0.0.1:1/c', None, environ={})\n"
        "assert isinstance(r, RemoteCache)\n"
        "assert not any(m.startswith('buildgrid') for m in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_mutual_tls_with_files_from_the_environment(tmp_path: Path,
                                                    warnings_log: pytest.LogCaptureFixture) -> None:
    """BuildGrid accepting only clients with a certificate from its CA: with the TLS files
    named in the environment the round trip works; without the client certificate the
    handshake fails and the remote is switched off with one warning."""
    tls = make_tls(tmp_path / "tls")
    server = start_buildgrid(tmp_path / "bg", require_bgd(), tls=tls)
    try:
        env = {"OCCLUM_RULES_REMOTE_TLS_CA": str(tls.ca),
               "OCCLUM_RULES_REMOTE_TLS_CERT": str(tls.client_cert),
               "OCCLUM_RULES_REMOTE_TLS_KEY": str(tls.client_key),
               "OCCLUM_RULES_REMOTE_INSTANCE": server.instance,
               "OCCLUM_RULES_REMOTE_UPLOAD": "1"}
        store = LocalStore(tmp_path / "s")
        manifest = entry_with(store, f=b"over mutual TLS")
        with remote_from_config(server.url, None, environ=env) as remote:
            assert remote.put_entry(store, key_of("mtls"), manifest)
            got = remote.get_entry(key_of("mtls"))
            assert got is not None and got[0] == manifest
        assert remote_warnings(warnings_log) == []
        without_cert = {k: v for k, v in env.items() if "CERT" not in k and "KEY" not in k}
        with remote_from_config(server.url, None, environ=without_cert, timeout=1.0) as remote:
            assert remote.get_entry(key_of("mtls")) is None
            assert remote.disabled
        (warning,) = remote_warnings(warnings_log)
        assert "switched off" in warning
        assert tls.client_key.read_text() not in warning
    finally:
        server.stop()
