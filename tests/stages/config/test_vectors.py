"""Every gen_internal_conf golden case, through the API and through the drop-in CLI.

Success cases must match the real tool's Enclave.xml, .Occlum_sys.json and stdout byte
for byte. Cases where the real tool fails (a message with exit 0 and empty files, or a
panic) must exit non-zero here, leave the output files alone, and name the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from occlum_rules.cli import main as cli_main
from occlum_rules.errors import UserError
from occlum_rules.stages.config import generate
from tests.conftest import VECTORS, vectors_path


def _index() -> list[dict]:
    path = VECTORS / "config" / "cases" / "index.json"
    return json.loads(path.read_text()) if path.exists() else []


CASES = _index()
OK = [c for c in CASES if c["outcome"] == "ok"]
FAILING = [c for c in CASES if c["outcome"] != "ok"]

# Where our one-line error must point, per failing case (our own messages' JSON paths).
EXPECTED_WHERE = {
    "demo_flink_unsubstituted": "Occlum.json: resource_limits.user_space_max_size:",
    "duplicate_keys": "Occlum.json: resource_limits.kernel_space_heap_size:",
    "edmm_heap_init_gt_max": "Occlum.json: resource_limits.kernel_space_heap_size:",
    "edmm_init_threads_gt_4096_edmm": "Occlum.json: resource_limits.init_num_of_threads:",
    "invalid_json": "Occlum.json:8:13:",
    "missing_family_id": "Occlum.json: metadata.family_id:",
    "missing_feature": "Occlum.json: feature:",
    "missing_max_threads": "Occlum.json: resource_limits.max_num_of_threads:",
    "mount_cache_size_gt_heap": "Occlum.json: mount[2].options.cache_size:",
    "mount_cache_size_unaligned": "Occlum.json: mount[2].options.cache_size:",
    "mount_disk_size_on_hostfs": "Occlum.json: mount[1].options.disk_size:",
    "mount_ext2_disk_bad": "Occlum.json: mount[2].options.disk_size:",
    "mount_ext2_disk_too_small": "Occlum.json: mount[2].options.disk_size:",
    "mount_no_root_unionfs": "Occlum.json: mount:",
    "msbuf_bad_size": "Occlum.json: resource_limits.marshal_buffer_size:",
    "overflow_size": "Occlum.json: resource_limits.user_space_size:",
    "size_bad_heap_max": "Occlum.json: resource_limits.kernel_space_heap_max_size:",
    "size_bad_unit_XB": "Occlum.json: resource_limits.user_space_size:",
    "size_empty": "Occlum.json: resource_limits.kernel_space_stack_size:",
    "size_multiple_errors_order": "Occlum.json: resource_limits.kernel_space_stack_size:",
    "size_no_unit": "Occlum.json: resource_limits.user_space_size:",
    "template_env_unset": "INSTANCE_IS_FOR_EDMM_PLATFORM:",
    "threads_negative": "Occlum.json: resource_limits.max_num_of_threads:",
    "trailing_garbage": "Occlum.json:75:1:",
    "user_space_gt_max_nonedmm": "Occlum.json: resource_limits.user_space_size:",
}


def _case_dir(case: dict) -> Path:
    return vectors_path("config", "cases", case["name"])


def _sgx_mode(case: dict) -> str:
    # The ms_buffer cases came from Occlum's HYPER-mode build of the tool.
    return "HYPER" if case["build_features"] == "ms_buffer" else "HW"


def _run_cli(case: dict, tmp_path: Path, monkeypatch, capsys, *, via_env_sgx_mode: bool = False):
    src = _case_dir(case)
    work = tmp_path / "inst"
    work.mkdir()
    (work / "Occlum.json").write_bytes((src / "Occlum.json").read_bytes())
    monkeypatch.chdir(work)
    monkeypatch.delenv("SGX_MODE", raising=False)
    env_value = case["INSTANCE_IS_FOR_EDMM_PLATFORM"]
    if env_value is None:
        monkeypatch.delenv("INSTANCE_IS_FOR_EDMM_PLATFORM", raising=False)
    else:
        monkeypatch.setenv("INSTANCE_IS_FOR_EDMM_PLATFORM", env_value)
    argv = ["gen-conf"]
    if _sgx_mode(case) == "HYPER":
        if via_env_sgx_mode:
            monkeypatch.setenv("SGX_MODE", "HYPER")
        else:
            argv += ["--sgx-mode", "HYPER"]
    argv += [
        "--user_json", "Occlum.json", "gen_conf",
        "--user_fs_mac", (src / "user_fs_mac").read_text(),
        "--sdk_xml", "Enclave.xml",
        "--init_fs_mac", (src / "init_fs_mac").read_text(),
        "--output_json", ".Occlum_sys.json",
    ]  # fmt: skip
    code = cli_main(argv)
    out = capsys.readouterr()
    return code, out, work


def test_corpus_is_present_and_complete():
    vectors_path("config", "cases", "index.json")
    assert len(OK) >= 50 and len(FAILING) >= 25
    assert {c["name"] for c in FAILING} == set(EXPECTED_WHERE), "a failing case has no expectation"


@pytest.mark.parametrize("case", OK, ids=lambda c: c["name"])
def test_api_reproduces_case(case):
    src = _case_dir(case)
    enclave_xml, sys_json = generate(
        (src / "Occlum.json").read_bytes(),
        (src / "user_fs_mac").read_text(),
        (src / "init_fs_mac").read_text(),
        edmm=case["INSTANCE_IS_FOR_EDMM_PLATFORM"] == "YES",
        sgx_mode=_sgx_mode(case),
    )
    assert enclave_xml == (src / "Enclave.xml").read_bytes()
    assert sys_json == (src / ".Occlum_sys.json").read_bytes()


@pytest.mark.parametrize("case", OK, ids=lambda c: c["name"])
def test_cli_reproduces_case(case, tmp_path, monkeypatch, capsys):
    src = _case_dir(case)
    code, out, work = _run_cli(case, tmp_path, monkeypatch, capsys)
    assert code == 0, out.err
    assert out.out == (src / "stdout").read_text()
    assert (work / "Enclave.xml").read_bytes() == (src / "Enclave.xml").read_bytes()
    assert (work / ".Occlum_sys.json").read_bytes() == (src / ".Occlum_sys.json").read_bytes()
    assert sorted(p.name for p in work.iterdir()) == [
        ".Occlum_sys.json",
        "Enclave.xml",
        "Occlum.json",
    ]


@pytest.mark.parametrize("case", [c for c in CASES if c["build_features"]], ids=lambda c: c["name"])
def test_ms_buffer_cases_via_sgx_mode_env(case, tmp_path, monkeypatch, capsys):
    src = _case_dir(case)
    code, out, work = _run_cli(case, tmp_path, monkeypatch, capsys, via_env_sgx_mode=True)
    if case["outcome"] == "ok":
        assert code == 0, out.err
        assert (work / "Enclave.xml").read_bytes() == (src / "Enclave.xml").read_bytes()
        assert b"<MarshalBufferSize>" in (work / "Enclave.xml").read_bytes()
    else:
        assert code == 1 and "marshal_buffer_size" in out.err


def test_default_build_has_no_marshal_buffer(tmp_path):
    src = vectors_path("config", "cases", "msbuf_edmm_2MB")
    enclave_xml, _ = generate((src / "Occlum.json").read_bytes(), "u", "i", edmm=True)
    assert b"MarshalBufferSize" not in enclave_xml


@pytest.mark.parametrize("case", FAILING, ids=lambda c: c["name"])
def test_failing_case_exits_nonzero_naming_field(case, tmp_path, monkeypatch, capsys):
    src = _case_dir(case)
    # Stale outputs from an earlier build must survive a failed run untouched.
    work = tmp_path / "inst"
    work.mkdir()
    (work / "Enclave.xml").write_bytes(b"old xml")
    (work / ".Occlum_sys.json").write_bytes(b"old json")
    (work / "Occlum.json").write_bytes((src / "Occlum.json").read_bytes())
    monkeypatch.chdir(work)
    monkeypatch.delenv("SGX_MODE", raising=False)
    if case["INSTANCE_IS_FOR_EDMM_PLATFORM"] is None:
        monkeypatch.delenv("INSTANCE_IS_FOR_EDMM_PLATFORM", raising=False)
    else:
        monkeypatch.setenv("INSTANCE_IS_FOR_EDMM_PLATFORM", case["INSTANCE_IS_FOR_EDMM_PLATFORM"])
    argv = ["gen-conf", "--sgx-mode", _sgx_mode(case), "--user_json", "Occlum.json", "gen_conf",
            "--user_fs_mac", "u", "--init_fs_mac", "i",
            "--sdk_xml", "Enclave.xml", "--output_json", ".Occlum_sys.json"]  # fmt: skip
    code = cli_main(argv)
    out = capsys.readouterr()
    assert code == 1
    assert out.out == ""
    lines = out.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, out.err
    assert errors[0].startswith("error: " + EXPECTED_WHERE[case["name"]]), errors[0]
    assert (work / "Enclave.xml").read_bytes() == b"old xml"
    assert (work / ".Occlum_sys.json").read_bytes() == b"old json"

    # Whatever the real tool quoted (the bad value, the limits) we quote too.
    real = case["message"] or ""
    if case["name"] != "mount_no_root_unionfs":
        for token in re.findall(r'"([^"]*)"', real):
            assert token in errors[0], (token, errors[0])
    stderr = (src / "stderr").read_text()
    for token in re.findall(r"`([^`]*)`", stderr):
        if "RUST_BACKTRACE" not in token:
            assert token in errors[0], (token, errors[0])


@pytest.mark.parametrize(
    "case",
    [c for c in FAILING if c["INSTANCE_IS_FOR_EDMM_PLATFORM"] is not None],
    ids=lambda c: c["name"],
)
def test_failing_case_api_raises_user_error(case):
    src = _case_dir(case)
    with pytest.raises(UserError) as info:
        generate(
            (src / "Occlum.json").read_bytes(), "u", "i",
            edmm=case["INSTANCE_IS_FOR_EDMM_PLATFORM"] == "YES", sgx_mode=_sgx_mode(case),
        )  # fmt: skip
    assert f"error: {info.value}".startswith("error: " + EXPECTED_WHERE[case["name"]])


def test_release_build_overflow_variant_is_an_error_here():
    # Occlum's release build wraps 2^64 to 0 and writes a broken enclave; we refuse.
    src = vectors_path("config", "cases", "overflow_size")
    assert (src / "release_build" / "exit_code").read_text().strip() == "0"
    with pytest.raises(UserError, match="2\\^64"):
        generate((src / "Occlum.json").read_bytes(), "u", "i", edmm=False)


def test_missing_user_json_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INSTANCE_IS_FOR_EDMM_PLATFORM", "NO")
    code = cli_main(["gen-conf", "--user_json", "nope.json", "gen_conf", "--user_fs_mac", "u",
                     "--init_fs_mac", "i", "--sdk_xml", "E.xml", "--output_json", "s.json"])  # fmt: skip
    assert code == 1
    assert "nope.json" in capsys.readouterr().err
    assert not (tmp_path / "E.xml").exists()


def test_gen_conf_help_lists_tool_flags(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["gen-conf", "gen_conf", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--user_fs_mac", "--init_fs_mac", "--sdk_xml", "--output_json"):
        assert flag in help_text
