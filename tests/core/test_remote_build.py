"""The remote cache in real builds, against a real nginx (WebDAV) on loopback."""

from __future__ import annotations

import hashlib
import shutil
import socket
import time

from tests.support.nginx import (  # noqa: F401 - the fixture
    NGINX_TEST_PASSWORD,
    NGINX_TEST_USER,
    nginx_cache_fixture,
)
from tests.support.workspace import copy_examples, report, run_doit

EXAMPLES = ["hello_c", "multi_c"]


def files_of(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "out" / "bin").rglob("*")) if p.is_file() and not p.is_symlink()}


def test_warm_remote_gives_zero_actions_and_identical_outputs(nginx_cache, tmp_path):
    url = nginx_cache.url("cache")
    first = copy_examples(tmp_path / "ci-main", EXAMPLES)
    env = {"OCCLUM_RULES_REMOTE_CACHE": url, "OCCLUM_RULES_REMOTE_UPLOAD": "1"}
    result = run_doit(first, "build", cache=tmp_path / "store-main", env=env)
    assert result.returncode == 0, result.output
    assert report(first)["actions_run"] > 0
    assert nginx_cache.stored_files(), "nothing was uploaded"

    # a fresh clone elsewhere, empty local store, read-only remote
    fresh = copy_examples(tmp_path / "ci-pr" / "checkout", EXAMPLES)
    result = run_doit(fresh, "build", cache=tmp_path / "store-pr",
                      env={"OCCLUM_RULES_REMOTE_CACHE": url})
    assert result.returncode == 0, result.output
    rep = report(fresh)
    assert rep["actions_run"] == 0, [a for a in rep["actions"] if a["outcome"] == "run"]
    assert rep["cache_hits_remote"] == len(rep["actions"])
    assert "0 actions run" in result.stdout and "cache hits (remote)" in result.stdout
    assert files_of(fresh) == files_of(first)

    # the remote hits were written to the local store: next time they are local hits
    shutil.rmtree(fresh / "out")
    result = run_doit(fresh, "build", cache=tmp_path / "store-pr",
                      env={"OCCLUM_RULES_REMOTE_CACHE": url})
    assert report(fresh)["cache_hits_local"] == len(report(fresh)["actions"])


def test_wrong_blob_on_the_remote_is_not_used(nginx_cache, tmp_path):
    url = nginx_cache.url("cache")
    first = copy_examples(tmp_path / "a", ["hello_c"])
    env = {"OCCLUM_RULES_REMOTE_CACHE": url, "OCCLUM_RULES_REMOTE_UPLOAD": "1"}
    assert run_doit(first, "build", cache=tmp_path / "s1", env=env).returncode == 0
    binary = first / "out/bin/examples/hello_c/hello/hello"
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    stored = nginx_cache.stored_path("cas", digest)
    stored.write_bytes(b"not the binary")
    fresh = copy_examples(tmp_path / "b", ["hello_c"])
    result = run_doit(fresh, "build", cache=tmp_path / "s2", env={"OCCLUM_RULES_REMOTE_CACHE": url})
    assert result.returncode == 0, result.output
    outcome = {a["id"]: a["outcome"] for a in report(fresh)["actions"]}
    assert outcome["//examples/hello_c:hello:link"] == "run"
    assert hashlib.sha256((fresh / "out/bin/examples/hello_c/hello/hello").read_bytes()).hexdigest() == digest


def test_remote_down_builds_locally_with_one_warning(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    ws = copy_examples(tmp_path / "ws", EXAMPLES)
    started = time.monotonic()
    result = run_doit(ws, "build", cache=tmp_path / "store",
                      env={"OCCLUM_RULES_REMOTE_CACHE": f"http://127.0.0.1:{port}/cache",
                           "OCCLUM_RULES_REMOTE_UPLOAD": "1"})
    with_remote = time.monotonic() - started
    assert result.returncode == 0, result.output
    assert result.output.count("switched off") == 1, result.output
    shutil.rmtree(ws / "out")
    started = time.monotonic()
    assert run_doit(ws, "build", cache=tmp_path / "store2").returncode == 0
    without = time.monotonic() - started
    # bounded: the failure budget is a few seconds, not a timeout per action
    assert with_remote - without < 8, (with_remote, without)


def test_credentials_never_reach_logs_or_disk(nginx_cache, tmp_path):
    user, password = NGINX_TEST_USER, NGINX_TEST_PASSWORD
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    env = {"OCCLUM_RULES_REMOTE_CACHE": nginx_cache.url("private"), "OCCLUM_RULES_REMOTE_UPLOAD": "1",
           "OCCLUM_RULES_REMOTE_USER": user, "OCCLUM_RULES_REMOTE_PASSWORD": password}
    result = run_doit(ws, "build", cache=tmp_path / "store", env=env)
    assert result.returncode == 0, result.output
    assert password not in result.output
    for path in list((ws / "out").rglob("*")) + list((tmp_path / "store").rglob("*")):
        if path.is_file() and not path.is_symlink():
            assert password.encode() not in path.read_bytes(), path


def test_http_entries_are_action_results(nginx_cache, tmp_path):
    """With the `remote` extra, /ac/<Action digest> holds a REAPI ActionResult."""
    from occlum_rules.core import action_result as ar
    from occlum_rules.core.reapi_stubs import load_messages

    pb = load_messages()
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    env = {"OCCLUM_RULES_REMOTE_CACHE": nginx_cache.url("cache"), "OCCLUM_RULES_REMOTE_UPLOAD": "1"}
    assert run_doit(ws, "build", cache=tmp_path / "store", env=env).returncode == 0
    keys = [a["action_key"] for a in report(ws)["actions"] if a.get("action_key")]
    stored = {p.name: p for p in nginx_cache.stored_files() if p.parent.name == "ac"}
    parsed = 0
    for key in keys:
        path = stored.get(ar.action_digest_hash(pb, key))
        if path is None:
            continue  # not cacheable
        result = pb.re.ActionResult.FromString(path.read_bytes())
        for out in result.output_files:
            local = ws / out.path
            assert hashlib.sha256(local.read_bytes()).hexdigest() == out.digest.hash
            assert out.digest.size_bytes == local.stat().st_size
            assert out.node_properties.unix_mode.value == local.stat().st_mode & 0o7777
        for out in result.output_directories:  # its Tree is a blob in /cas/ too
            tree = nginx_cache.stored_path("cas", out.tree_digest.hash).read_bytes()
            assert pb.re.Tree.FromString(tree).root is not None
        parsed += 1
    assert parsed > 0 and parsed == len(stored)


def test_without_the_extra_http_keeps_json_entries_which_the_extra_does_not_read(
        nginx_cache, tmp_path):
    """No grpcio/protobuf/buildgrid-common: the HTTP cache still works, with the JSON entries
    of earlier versions under /ac/<action key>. A client with the extra reads only
    ActionResults, so those entries are misses for it."""
    blocker = tmp_path / "no-extra" / "buildgrid"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError('the remote extra is not installed here', name='buildgrid')\n")
    no_extra = {"PYTHONPATH": str(tmp_path / "no-extra")}
    url = nginx_cache.url("cache")
    first = copy_examples(tmp_path / "a", ["hello_c"])
    result = run_doit(first, "build", cache=tmp_path / "s1",
                      env={**no_extra, "OCCLUM_RULES_REMOTE_CACHE": url,
                           "OCCLUM_RULES_REMOTE_UPLOAD": "1"})
    assert result.returncode == 0, result.output
    entries = [p for p in nginx_cache.stored_files() if p.parent.name == "ac"]
    assert entries and all(p.read_bytes().startswith(b"{") for p in entries)

    plain = copy_examples(tmp_path / "b", ["hello_c"])
    result = run_doit(plain, "build", cache=tmp_path / "s2",
                      env={**no_extra, "OCCLUM_RULES_REMOTE_CACHE": url})
    assert result.returncode == 0, result.output
    assert report(plain)["actions_run"] == 0 and files_of(plain) == files_of(first)

    with_extra = copy_examples(tmp_path / "c", ["hello_c"])
    result = run_doit(with_extra, "build", cache=tmp_path / "s3",
                      env={"OCCLUM_RULES_REMOTE_CACHE": url})
    assert result.returncode == 0, result.output
    assert report(with_extra)["cache_hits_remote"] == 0
    assert files_of(with_extra) == files_of(first)
