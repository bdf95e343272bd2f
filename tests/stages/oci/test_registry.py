"""Push and pull against a real registry (Debian's docker-registry), and the errors of a
registry that refuses, breaks or lies (a tiny http.server: a real registry cannot be made to
answer garbage)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from occlum_rules.credentials import REGISTRY_ENV, credentials_from_env
from occlum_rules.errors import UserError
from occlum_rules.stages.oci import media
from occlum_rules.stages.oci.pull import pull_layout
from occlum_rules.stages.oci.push import push, push_built_image, read_layout
from occlum_rules.stages.oci.registry import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    Registry,
    parse_reference,
    timeouts_from_env,
)
from tests.support.oci_layout import layer_tar, make_layout
from tests.support.registry import (
    SKOPEO,
    free_port,
    needs_registry,
    needs_skopeo,
    run_registry,
)

PLATFORM = "linux/amd64"


@pytest.fixture
def layout(tmp_path):
    """A layout with a 300 KiB incompressible layer (so a small chunk size really chunks)."""
    noise = os.urandom(300 * 1024)
    digest = make_layout(tmp_path / "layout", [layer_tar({"bin/sh": b"#!sh\n"}),
                                               layer_tar({"data/noise": noise})])
    return tmp_path / "layout", digest


def _blob_names(layout: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (layout / "blobs/sha256").iterdir()}


@needs_registry
@needs_skopeo
def test_push_chunked_then_repush_uploads_nothing_and_pull_gives_the_same_bytes(
        registry, layout, tmp_path):
    path, digest = layout
    image = read_layout(path)
    first = push(Registry(registry.host, "team/app", insecure=True), image, ["v1"],
                 chunk_size=64 * 1024)
    assert first.reference == f"{registry.host}/team/app@{digest}"
    assert (first.uploaded, first.skipped) == (len(image.blobs), 0)
    chunk = 64 * 1024
    patches = sum(-(-size // chunk) for _, size, _ in image.blobs if size > chunk)
    assert patches >= 4   # the noise layer really went in chunks
    assert registry.log.read_text().count('"PATCH /v2/team/app/blobs/uploads/') == patches
    inspect = json.loads(subprocess.run(
        [SKOPEO, "inspect", "--tls-verify=false", f"docker://{registry.host}/team/app:v1"],
        check=True, capture_output=True, text=True).stdout)
    assert inspect["Digest"] == digest
    again = push(Registry(registry.host, "team/app", insecure=True), image, ["v1", "v2"])
    assert (again.uploaded, again.skipped) == (0, len(image.blobs))
    mounted = push(Registry(registry.host, "team/copy", insecure=True, mount_from=("team/app",)),
                   image, ["v1"])
    assert (mounted.uploaded, mounted.mounted) == (0, len(image.blobs))
    pull_layout(Registry(registry.host, "team/copy", insecure=True), digest, PLATFORM,
                tmp_path / "pulled")
    assert _blob_names(tmp_path / "pulled") == _blob_names(path)
    index = json.loads((tmp_path / "pulled/index.json").read_text())
    assert index["manifests"][0]["digest"] == digest


@needs_registry
def test_htpasswd_registry_needs_the_env_credentials(tmp_path, layout):
    path, digest = layout
    with run_registry(tmp_path / "reg", users={"ci": "s3cret-pw"}) as reg:
        with pytest.raises(UserError) as exc:
            push(Registry(reg.host, "app", insecure=True), read_layout(path), ["v1"])
        assert str(exc.value).count("HTTP 401") == 1 and reg.host in str(exc.value)
        assert "repository app" in str(exc.value)
        wrong = credentials_from_env({"OCCLUM_RULES_REGISTRY_USER": "ci",
                                      "OCCLUM_RULES_REGISTRY_PASSWORD": "nope"}, REGISTRY_ENV)
        with pytest.raises(UserError) as exc:
            push(Registry(reg.host, "app", insecure=True, credentials=wrong), read_layout(path),
                 ["v1"])
        assert "refused the credentials" in str(exc.value) and "nope" not in str(exc.value)
        creds = credentials_from_env({"OCCLUM_RULES_REGISTRY_USER": "ci",
                                      "OCCLUM_RULES_REGISTRY_PASSWORD": "s3cret-pw"}, REGISTRY_ENV)
        assert "s3cret-pw" not in repr(creds)
        done = push(Registry(reg.host, "app", insecure=True, credentials=creds),
                    read_layout(path), ["v1"])
        assert done.uploaded == 3
        pull_layout(Registry(reg.host, "app", insecure=True, credentials=creds), digest,
                    PLATFORM, tmp_path / "pulled")
        assert _blob_names(tmp_path / "pulled") == _blob_names(path)


# ------------------------------------------------------------------- a misbehaving registry

class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers every request as ``server.answer`` says: (status, headers, body) or "slow"."""

    def log_message(self, *args):  # quiet
        pass

    def _answer(self):
        answer = self.server.answer(self)  # type: ignore[attr-defined]
        if answer == "slow":
            time.sleep(3)
            return
        status, headers, body = answer
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _answer


@pytest.fixture
def fake():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _v2_then(answer):
    def route(handler):
        if handler.path == "/v2/":
            return 200, {}, b"{}"
        return answer(handler)
    return route


PINNED = "sha256:" + hashlib.sha256(b"manifest").hexdigest()


@pytest.mark.parametrize("case, expect", [
    ("401", "HTTP 401 (unauthorized: set OCCLUM_RULES_REGISTRY_USER"),
    ("404", "get manifest " + PINNED + ": HTTP 404 (not found): MANIFEST_UNKNOWN: no such"),
    ("500", "HTTP 500"),
    ("garbage", "the answer is not a JSON manifest or index"),
    ("wrong digest", "hash to sha256:"),
    ("slow", "no answer within 0.5 s (timed out)"),
])
def test_pull_errors_are_one_clear_line(fake, tmp_path, case, expect):
    garbage = b"<html>not a manifest</html>"
    answers = {
        "401": lambda h: (401, {"WWW-Authenticate": 'Basic realm="x"'}, b""),
        "404": lambda h: (404, {}, json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN",
                                                           "message": "no such"}]}).encode()),
        "500": lambda h: (500, {}, b"oops"),
        "garbage": lambda h: (200, {}, garbage),
        "wrong digest": lambda h: (200, {}, b'{"schemaVersion": 2}'),
        "slow": lambda h: "slow",
    }
    pinned = "sha256:" + hashlib.sha256(garbage).hexdigest() if case == "garbage" else PINNED
    expect = expect.replace(PINNED, pinned)
    fake.answer = answers[case] if case == "401" else _v2_then(answers[case])
    host = f"127.0.0.1:{fake.server_address[1]}"
    reg = Registry(host, "team/app", insecure=True, read_timeout=0.5,
                   credentials=credentials_from_env({"OCCLUM_RULES_REGISTRY_TOKEN": "tok-XYZ"},
                                                    REGISTRY_ENV) if case == "500" else None)
    with pytest.raises(UserError) as exc:
        pull_layout(reg, pinned, PLATFORM, tmp_path / "out")
    message = str(exc.value)
    assert message.startswith(f"registry {host}, repository team/app: ")
    assert expect in message and "\n" not in message and "tok-XYZ" not in message
    assert not list((tmp_path / "out").rglob("*.tmp*"))


def test_a_refused_connection_names_the_registry(tmp_path, layout):
    port = free_port()  # nothing listens there
    with pytest.raises(UserError) as exc:
        push(Registry(f"127.0.0.1:{port}", "app", insecure=True), read_layout(layout[0]), [])
    assert f"registry 127.0.0.1:{port}, repository app: ping /v2/: connection refused" \
        in str(exc.value)


def test_https_is_the_default(fake, layout):
    fake.answer = lambda h: (200, {}, b"{}")
    host = f"127.0.0.1:{fake.server_address[1]}"
    with pytest.raises(UserError) as exc:
        push(Registry(host, "app", connect_timeout=2, read_timeout=2), read_layout(layout[0]),
             [])
    assert "TLS failed" in str(exc.value) and "--insecure" in str(exc.value)


def test_a_manifest_rewritten_by_the_registry_is_an_error(fake, layout):
    def route(h):
        if h.command == "HEAD":
            return 200, {}, b""
        if h.command == "PUT":
            return 201, {"Docker-Content-Digest": "sha256:" + "0" * 64}, b""
        return 200, {}, b"{}"
    fake.answer = route
    host = f"127.0.0.1:{fake.server_address[1]}"
    with pytest.raises(UserError) as exc:
        push(Registry(host, "app", insecure=True), read_layout(layout[0]), ["v1"])
    assert "stored it as sha256:000" in str(exc.value)


@pytest.mark.parametrize("text, expect", [
    ("127.0.0.1:5000/team/app:v1", ("127.0.0.1:5000", "team/app", "v1")),
    ("registry.example.com/app", ("registry.example.com", "app", None)),
    ("app:v1", "is not REGISTRY/REPOSITORY"),
    ("r.io/App", "not a valid repository"),
    ("r.io/app@sha256:" + "0" * 64, "give a tag, not a digest"),
])
def test_references(text, expect):
    if isinstance(expect, tuple):
        ref = parse_reference(text)
        assert (ref.registry, ref.repository, ref.tag) == expect
    else:
        with pytest.raises(UserError, match=expect.replace("(", r"\(")):
            parse_reference(text)



def test_bearer_token_dance_with_basic_credentials(fake, layout, tmp_path):
    """The registry asks for a Bearer token; the client gets one from the realm with the
    env's basic credentials and the repository scope, then uses it (and only it)."""
    path, digest = layout
    host = f"127.0.0.1:{fake.server_address[1]}"
    asked = []

    def route(h):
        if h.path.startswith("/token?"):
            asked.append((h.path, h.headers.get("Authorization")))
            return 200, {}, json.dumps({"token": "tok-123"}).encode()
        if h.headers.get("Authorization") != "Bearer tok-123":
            challenge = (f'Bearer realm="http://{host}/token",service="fake",'
                         'scope="repository:team/app:pull"')
            return 401, {"WWW-Authenticate": challenge}, b""
        if h.path == "/v2/":
            return 200, {}, b"{}"
        hexpart = h.path.rsplit("sha256:", 1)[-1]
        blob = path / "blobs/sha256" / hexpart
        return (200, {}, blob.read_bytes()) if blob.is_file() else (404, {}, b"")

    fake.answer = route
    creds = credentials_from_env({"OCCLUM_RULES_REGISTRY_USER": "ci",
                                  "OCCLUM_RULES_REGISTRY_PASSWORD": "pw"}, REGISTRY_ENV)
    pull_layout(Registry(host, "team/app", insecure=True, credentials=creds), digest, PLATFORM,
                tmp_path / "pulled")
    assert _blob_names(tmp_path / "pulled") == _blob_names(path)
    assert asked == [("/token?service=fake&scope=repository%3Ateam%2Fapp%3Apull",
                      "Basic " + base64.b64encode(b"ci:pw").decode())]


@needs_registry
def test_pull_resolves_an_image_index_to_the_platform(registry, layout, tmp_path):
    path, digest = layout
    reg = Registry(registry.host, "team/multi", insecure=True)
    push(reg, read_layout(path), ["v1"])
    size = len((path / "blobs/sha256" / digest[7:]).read_bytes())
    index = json.dumps({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": [
        {"mediaType": media.OCI_MANIFEST, "digest": digest, "size": size,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    index_digest = media.sha256_digest(index)
    reg.login("pull,push")
    resp = reg.request("PUT", reg.path("manifests", index_digest), "put index", body=index,
                       headers={"Content-Type": media.OCI_INDEX})
    reg.check(resp, "put index", (201,))
    pull_layout(Registry(registry.host, "team/multi", insecure=True), index_digest, PLATFORM,
                tmp_path / "pulled")
    names = _blob_names(tmp_path / "pulled")
    assert index_digest[7:] in names and set(_blob_names(path)) <= set(names)
    with pytest.raises(UserError, match="the image index has no linux/arm64 manifest"):
        pull_layout(Registry(registry.host, "team/multi", insecure=True), index_digest,
                    "linux/arm64", tmp_path / "arm")


class _DroppingHandler(_Handler):
    """HTTP/1.1 without ``Connection: close``, yet it hangs up after every answer: what a
    registry (or its proxy) does to an idle keep-alive connection."""

    protocol_version = "HTTP/1.1"

    def _answer(self):
        super()._answer()
        self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _answer


def test_a_keep_alive_connection_closed_by_the_registry_is_reopened(layout, tmp_path):
    path, digest = layout
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DroppingHandler)
    server.daemon_threads = True

    def route(h):
        if h.path == "/v2/":
            return 200, {}, b"{}"
        blob = path / "blobs/sha256" / h.path.rsplit("sha256:", 1)[-1]
        return (200, {}, blob.read_bytes()) if blob.is_file() else (404, {}, b"")

    server.answer = route  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pull_layout(Registry(f"127.0.0.1:{server.server_address[1]}", "app", insecure=True),
                    digest, PLATFORM, tmp_path / "pulled")
    finally:
        server.shutdown()
        server.server_close()
    assert _blob_names(tmp_path / "pulled") == _blob_names(path)


def test_the_timeout_comes_from_the_environment(fake, layout, tmp_path):
    path, digest = layout
    (tmp_path / "image.digest").write_text(digest + "\n")
    fake.answer = lambda h: "slow"   # accepts the connection, never answers in time
    host = f"127.0.0.1:{fake.server_address[1]}"
    started = time.monotonic()
    with pytest.raises(UserError) as exc:
        push_built_image(path, tmp_path / "image.digest", f"{host}/app:v1", [], insecure=True,
                         environ={"OCCLUM_RULES_REGISTRY_TIMEOUT": "0.4"})
    assert time.monotonic() - started < 2.5
    assert str(exc.value) == (f"registry {host}, repository app: ping /v2/: no answer within "
                              "0.4 s (timed out)")
    assert not (tmp_path / "image.pushed").exists()
    assert timeouts_from_env({}) == (DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT)
    for bad in ("soon", "0", "-3"):
        with pytest.raises(UserError, match="OCCLUM_RULES_REGISTRY_TIMEOUT"):
            timeouts_from_env({"OCCLUM_RULES_REGISTRY_TIMEOUT": bad})


def test_an_expired_bearer_token_is_renewed_once(fake, layout, tmp_path):
    """Registries hand out tokens for minutes; a long push outlives one. The server here
    lets each token serve three requests, then answers 401 until a new one is fetched."""
    path, digest = layout
    host = f"127.0.0.1:{fake.server_address[1]}"
    state = {"issued": 0, "uses": 0}

    def route(h):
        if h.path.startswith("/token?"):
            state["issued"] += 1
            state["uses"] = 0
            return 200, {}, json.dumps({"token": f"tok-{state['issued']}"}).encode()
        valid = h.headers.get("Authorization") == f"Bearer tok-{state['issued']}" \
            and state["uses"] < 3
        if not valid:
            challenge = f'Bearer realm="http://{host}/token",service="fake"'
            return 401, {"WWW-Authenticate": challenge}, b""
        state["uses"] += 1
        if h.path == "/v2/":
            return 200, {}, b"{}"
        blob = path / "blobs/sha256" / h.path.rsplit("sha256:", 1)[-1]
        return (200, {}, blob.read_bytes()) if blob.is_file() else (404, {}, b"")

    fake.answer = route
    pull_layout(Registry(host, "team/app", insecure=True), digest, PLATFORM, tmp_path / "pulled")
    assert _blob_names(tmp_path / "pulled") == _blob_names(path)
    assert state["issued"] == 2   # manifest + config + 2 layers: four requests, two tokens
