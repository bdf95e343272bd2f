"""The one tool environment and the one tool runner."""

from __future__ import annotations

import os
import sys

import pytest

from occlum_rules.errors import UserError
from occlum_rules.process import deterministic_env, run_tool, trim_output

PY = sys.executable


def test_deterministic_env_fixes_locale_zone_and_epoch(monkeypatch):
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    monkeypatch.setenv("SOMETHING_PRIVATE", "x")
    monkeypatch.setenv("HOME", "/home/someone")
    env = deterministic_env(1704067200, prepend_path=["/opt/tool/bin"], extra={"A": "1"})
    assert env["LC_ALL"] == "C" and env["TZ"] == "UTC"
    assert env["SOURCE_DATE_EPOCH"] == "1704067200"
    assert env["PATH"] == os.pathsep.join(["/opt/tool/bin", os.environ["PATH"]])
    assert env["HOME"] == "/home/someone" and env["A"] == "1"
    assert "SOMETHING_PRIVATE" not in env
    inherited = deterministic_env(None, inherit=True, home=False)
    assert inherited["SOMETHING_PRIVATE"] == "x" and inherited["LC_ALL"] == "C"
    assert "SOURCE_DATE_EPOCH" not in deterministic_env(None)
    monkeypatch.delenv("HOME")
    assert deterministic_env(0)["HOME"] == "/tmp"
    assert "HOME" not in deterministic_env(0, home=False)
    assert deterministic_env(0, passthrough=["SOMETHING_PRIVATE"])["SOMETHING_PRIVATE"] == "x"


def test_the_tool_sees_that_environment(tmp_path):
    proc = run_tool([PY, "-c", "import os, time; print(os.environ['TZ'], time.strftime('%Z'))"],
                    "probe", env=deterministic_env(0))
    assert proc.stdout.split()[0] == "UTC"


def test_a_failure_is_one_user_error_with_the_tools_output():
    script = "import sys; [print(f'line {i}', file=sys.stderr) for i in range(40)]; sys.exit(3)"
    with pytest.raises(UserError) as info:
        run_tool([PY, "-c", script], "//app:x: link")
    message = info.value.message
    assert message.startswith("//app:x: link failed (exit 3):\nline 0\n")
    assert "line 24" in message and "line 25" not in message
    assert message.endswith("... (15 more lines)")
    with pytest.raises(UserError) as info:
        run_tool([PY, "-c", script], "cc", tail=True, lines=3, one_line=True)
    assert info.value.message == "cc failed (exit 3): ... (37 more lines) | line 37 | line 38 | line 39"


def test_stdout_is_quoted_when_stderr_is_empty_and_paths_can_be_hidden(tmp_path):
    script = f"print('{tmp_path}/a.c:1: error: nope'); raise SystemExit(1)"
    with pytest.raises(UserError) as info:
        run_tool([PY, "-c", script], "cc", hide=f"{tmp_path}/")
    assert info.value.message == "cc failed (exit 1):\na.c:1: error: nope"


def test_tool_not_found_timeout_and_unchecked(tmp_path):
    with pytest.raises(UserError, match=r"^build: tool not found: /no/such/tool$"):
        run_tool(["/no/such/tool"], "build")
    with pytest.raises(UserError, match="did not finish within 0.5 s"):
        run_tool([PY, "-c", "import time; time.sleep(10)"], "slow", timeout=0.5)
    not_exec = tmp_path / "script"
    not_exec.write_text("#!/bin/sh\n")
    with pytest.raises(UserError, match="cannot run .*script: Permission denied"):
        run_tool([not_exec], "x")
    proc = run_tool([PY, "-c", "raise SystemExit(2)"], "x", check=False)
    assert proc.returncode == 2


def test_trim_output_keeps_a_short_text_whole():
    assert trim_output("  a\n\n  b  \n") == "  a\n  b"
    assert trim_output("") == "(no output)"
    assert trim_output("x" * 50, max_chars=10) == "..." + "x" * 10


def test_not_found_message_replaces_the_default():
    with pytest.raises(UserError, match=r"^pack: install Occlum$"):
        run_tool(["/no/such/tool"], "pack", not_found="pack: install Occlum")


def test_a_missing_external_signer_is_a_user_error_not_a_traceback(tmp_path):
    # actions/instance.py catsig ran the signer with a bare subprocess.run: a command that
    # does not exist raised FileNotFoundError (a traceback) instead of one clear error
    from occlum_rules.actions.instance import catsig
    from occlum_rules.core.action import StageContext

    ins = [tmp_path / n for n in ("libos.so", "Enclave.xml", "material.bin", "key.pub")]
    ctx = StageContext(root=tmp_path, label="//app:signed", inputs=ins,
                       outputs=[tmp_path / "signed.so", tmp_path / "m.json"],
                       params={"signature": "sig.bin",
                               "command": ["/no/such/signer", "{material}", "{signature}"]},
                       secrets={}, source_date_epoch=0, digests=None,  # type: ignore[arg-type]
                       state_dir=tmp_path / "s", shared_state_dir=tmp_path / "t")
    with pytest.raises(UserError, match=r"^//app:signed: the external signer: tool not found: "
                                        r"/no/such/signer$"):
        catsig(ctx)
    fail = [PY, "-c", "import sys; sys.exit('no key')"]
    ctx.params["command"] = fail
    with pytest.raises(UserError, match=r"the external signer failed \(exit 1\): no key$"):
        catsig(ctx)


def test_occlum_tool_env_inherits_and_is_deterministic(monkeypatch, tmp_path):
    from occlum_rules.actions.occlum_tools import tool_env

    monkeypatch.setenv("SOME_SDK_VAR", "kept")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setenv("SGX_SDK", str(tmp_path))
    env = tool_env("/opt/occlum", {"X": "1"})
    assert env["SOME_SDK_VAR"] == "kept"
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path}/sdk_libs"
    assert (env["SOURCE_DATE_EPOCH"], env["LC_ALL"], env["TZ"], env["X"]) == ("0", "C", "UTC", "1")
