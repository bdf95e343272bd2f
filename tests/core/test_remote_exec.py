"""Remote execution: configuration, and what a build does when the service is not there."""

from __future__ import annotations

import time

import pytest

from occlum_rules.core.remote_exec import ENV_INSTANCE, ENV_URL, executor_from_config
from occlum_rules.errors import UserError
from tests.core.test_remote_build import files_of
from tests.support.nginx import free_port
from tests.support.workspace import copy_examples, report, run_doit


def test_environment_wins_over_the_workspace() -> None:
    assert executor_from_config(None, None, environ={}) is None
    ex = executor_from_config("grpc://127.0.0.1:1", "a", environ={})
    assert ex is not None and ex.display_url == "grpc://127.0.0.1:1 (instance 'a')"
    ex = executor_from_config("grpc://127.0.0.1:1", "a",
                              environ={ENV_URL: "grpc://127.0.0.1:2", ENV_INSTANCE: "b"})
    assert ex is not None and ex.display_url == "grpc://127.0.0.1:2 (instance 'b')"
    assert executor_from_config("grpc://127.0.0.1:1", None, environ={ENV_URL: "off"}) is None


@pytest.mark.parametrize("url, where, message", [
    ("http://127.0.0.1:1", "WORKSPACE.yaml: execution.remote",
     "remote execution speaks REAPI over gRPC; expected grpc://host:port or grpcs://host[:port]"),
    ("grpc://127.0.0.1", "WORKSPACE.yaml: execution.remote",
     "the URL has no port; expected grpc://host:port"),
])
def test_bad_urls_are_one_clear_error(url: str, where: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        executor_from_config(url, None, environ={})
    assert str(err.value) == f"{where}: {message}"


def test_bad_workspace_section_fails_the_build_with_one_line(tmp_path) -> None:
    root = copy_examples(tmp_path / "ws", ["hello_c"])
    text = (root / "WORKSPACE.yaml").read_text()
    (root / "WORKSPACE.yaml").write_text(text + "execution:\n  remote: http://127.0.0.1:1\n")
    result = run_doit(root, "build", cache=tmp_path / "store")
    assert result.returncode != 0
    assert "Traceback" not in result.output
    assert "execution.remote: remote execution speaks REAPI over gRPC" in result.output


def test_unreachable_service_runs_everything_here_with_one_warning(tmp_path) -> None:
    local = copy_examples(tmp_path / "local", ["hello_c"])
    assert run_doit(local, "build", cache=tmp_path / "store-local").returncode == 0

    root = copy_examples(tmp_path / "remote", ["hello_c"])
    started = time.monotonic()
    result = run_doit(root, "build", cache=tmp_path / "store-remote",
                      env={ENV_URL: f"grpc://127.0.0.1:{free_port()}"})
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.output
    assert result.output.count("remote execution grpc://127.0.0.1:") == 1, result.output
    assert "switched off for the rest of this build" in result.output
    rep = report(root)
    assert rep["actions_run_remote"] == 0 and rep["actions_run"] == len(rep["actions"])
    assert files_of(root) == files_of(local)
    assert elapsed < 120, elapsed  # the failure budget bounds the delay
