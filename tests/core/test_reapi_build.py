"""The REAPI (gRPC) cache in real builds, against a real BuildGrid on loopback."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time

import grpc

from occlum_rules.core import action_result as ar
from occlum_rules.core.reapi_stubs import load_stubs
from tests.core.test_remote_build import EXAMPLES, files_of
from tests.support.buildgrid import BuildGrid, buildgrid_fixture  # noqa: F401 - the fixture
from tests.support.workspace import copy_examples, report, run_doit

TOKEN = "tok-build-" + os.urandom(8).hex()


def grpc_env(server: BuildGrid, upload: bool = False) -> dict[str, str]:
    env = {"OCCLUM_RULES_REMOTE_CACHE": server.url,
           "OCCLUM_RULES_REMOTE_INSTANCE": server.instance}
    if upload:
        env["OCCLUM_RULES_REMOTE_UPLOAD"] = "1"
    return env


def test_warm_buildgrid_gives_zero_actions_and_identical_outputs(buildgrid: BuildGrid,
                                                                 tmp_path) -> None:
    first = copy_examples(tmp_path / "ci-main", EXAMPLES)
    result = run_doit(first, "build", cache=tmp_path / "store-main",
                      env=grpc_env(buildgrid, upload=True))
    assert result.returncode == 0, result.output
    assert report(first)["actions_run"] > 0
    assert "remote cache" not in result.output, result.output  # no warning at all

    fresh = copy_examples(tmp_path / "ci-pr" / "checkout", EXAMPLES)
    result = run_doit(fresh, "build", cache=tmp_path / "store-pr", env=grpc_env(buildgrid))
    assert result.returncode == 0, result.output
    rep = report(fresh)
    assert rep["actions_run"] == 0, [a for a in rep["actions"] if a["outcome"] == "run"]
    assert rep["cache_hits_remote"] == len(rep["actions"])
    assert files_of(fresh) == files_of(first)
    # every output, modes included, is what the first build made
    for path in sorted((first / "out" / "bin").rglob("*")):
        twin = fresh / path.relative_to(first)
        assert os.path.islink(twin) == os.path.islink(path), path
        if not path.is_symlink():
            assert twin.stat().st_mode == path.stat().st_mode, path

    shutil.rmtree(fresh / "out")  # the remote hits went to the local store too
    result = run_doit(fresh, "build", cache=tmp_path / "store-pr", env=grpc_env(buildgrid))
    assert report(fresh)["cache_hits_local"] == len(report(fresh)["actions"])


def test_stored_entries_are_action_results(buildgrid: BuildGrid, tmp_path) -> None:
    """The build's results, read back with the REAPI stubs by the action keys it used."""
    pb = load_stubs()
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    result = run_doit(ws, "build", cache=tmp_path / "store", env=grpc_env(buildgrid, upload=True))
    assert result.returncode == 0, result.output
    keys = [a["action_key"] for a in report(ws)["actions"] if a.get("action_key")]
    assert keys
    found = 0
    with grpc.insecure_channel(f"127.0.0.1:{buildgrid.port}") as channel:
        stub = pb.re_grpc.ActionCacheStub(channel)
        for key in keys:
            action, _ = ar.action_messages(pb, key)
            try:
                answer = stub.GetActionResult(pb.re.GetActionResultRequest(
                    instance_name=buildgrid.instance, action_digest=ar.blob_digest(pb, action)))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND  # not cacheable: never stored
                continue
            found += 1
            assert isinstance(answer, pb.re.ActionResult) and answer.exit_code == 0
            for out in answer.output_files:
                local = ws / out.path
                assert hashlib.sha256(local.read_bytes()).hexdigest() == out.digest.hash
                assert out.is_executable == bool(local.stat().st_mode & 0o111)
    assert found > 0


def test_corrupted_blob_on_buildgrid_is_not_used(buildgrid: BuildGrid, tmp_path) -> None:
    first = copy_examples(tmp_path / "a", ["hello_c"])
    assert run_doit(first, "build", cache=tmp_path / "s1",
                    env=grpc_env(buildgrid, upload=True)).returncode == 0
    binary = first / "out/bin/examples/hello_c/hello/hello"
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    stored = buildgrid.blob_path(digest)
    good = stored.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size, on the server's disk
    os.chmod(stored, 0o644)
    stored.write_bytes(bytes(data))

    fresh = copy_examples(tmp_path / "b", ["hello_c"])
    try:
        result = run_doit(fresh, "build", cache=tmp_path / "s2", env=grpc_env(buildgrid))
    finally:
        stored.write_bytes(good)  # the server is shared by this module's tests
    assert result.returncode == 0, result.output
    outcome = {a["id"]: a["outcome"] for a in report(fresh)["actions"]}
    assert outcome["//examples/hello_c:hello:link"] == "run"
    rebuilt = fresh / "out/bin/examples/hello_c/hello/hello"
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == digest
    assert result.output.count(digest) == 1, result.output  # one warning names the blob


def test_buildgrid_down_builds_locally_with_one_warning(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    ws = copy_examples(tmp_path / "ws", EXAMPLES)
    started = time.monotonic()
    result = run_doit(ws, "build", cache=tmp_path / "store",
                      env={"OCCLUM_RULES_REMOTE_CACHE": f"grpc://127.0.0.1:{port}",
                           "OCCLUM_RULES_REMOTE_UPLOAD": "1"})
    with_remote = time.monotonic() - started
    assert result.returncode == 0, result.output
    assert result.output.count("switched off") == 1, result.output
    shutil.rmtree(ws / "out")
    started = time.monotonic()
    assert run_doit(ws, "build", cache=tmp_path / "store2").returncode == 0
    without = time.monotonic() - started
    assert with_remote - without < 8, (with_remote, without)


def test_token_never_reaches_logs_or_disk(buildgrid: BuildGrid, tmp_path) -> None:
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    env = {**grpc_env(buildgrid, upload=True), "OCCLUM_RULES_REMOTE_TOKEN": TOKEN}
    result = run_doit(ws, "build", cache=tmp_path / "store", env=env)
    assert result.returncode == 0, result.output
    assert TOKEN not in result.output
    for path in list((ws / "out").rglob("*")) + list((tmp_path / "store").rglob("*")) + \
            buildgrid.blob_paths():
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_bad_instance_name_is_one_error_line(tmp_path) -> None:
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    result = run_doit(ws, "build", cache=tmp_path / "store",
                      env={"OCCLUM_RULES_REMOTE_CACHE": "grpc://127.0.0.1:1",
                           "OCCLUM_RULES_REMOTE_INSTANCE": "main/blobs"})
    assert result.returncode == 1, result.output
    assert "OCCLUM_RULES_REMOTE_INSTANCE: instance name 'main/blobs' uses the reserved word" \
        in result.output
    assert "Traceback" not in result.output


def test_parallel_build_processes_share_buildgrid(buildgrid: BuildGrid, tmp_path) -> None:
    """``doit -n 2`` forks workers: each opens its own gRPC channel."""
    first = copy_examples(tmp_path / "a", EXAMPLES)
    result = run_doit(first, "-n", "2", "-P", "process", "build", cache=tmp_path / "s1",
                      env=grpc_env(buildgrid, upload=True))
    assert result.returncode == 0, result.output
    fresh = copy_examples(tmp_path / "b", EXAMPLES)
    result = run_doit(fresh, "-n", "2", "-P", "process", "build", cache=tmp_path / "s2",
                      env=grpc_env(buildgrid))
    assert result.returncode == 0, result.output
    assert report(fresh)["actions_run"] == 0 and files_of(fresh) == files_of(first)
    assert "remote cache" not in result.output, result.output
