"""The gen_internal_conf golden cases of older Occlum releases (0.29.6, 0.30.1).

Same inputs as the newest corpus, outputs of the real tool built from each tag. With
``--occlum-version`` (or ``profile=`` in the API) our generator must give those bytes; where
the real tool prints a validation message or panics, ours exits 1 naming the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from occlum_rules.cli import main as cli_main
from occlum_rules.errors import UserError
from occlum_rules.stages.config import generate
from occlum_rules.stages.config.profiles import profile_for_version
from tests.conftest import VECTORS, vectors_path

VERSIONS = ("0.29.6", "0.30.1")


def _index(version: str) -> list[dict]:
    path = VECTORS / f"config-v{version}" / "cases" / "index.json"
    cases = json.loads(path.read_text()) if path.exists() else []
    return [dict(c, version=version) for c in cases]


CASES = [c for v in VERSIONS for c in _index(v)]
OK = [c for c in CASES if c["outcome"] == "ok"]
FAILING = [c for c in CASES if c["outcome"] != "ok"]

# Where our one-line error must point, per failing case of each release.
_SHARED_WHERE = {
    "duplicate_keys": "Occlum.json: resource_limits.kernel_space_heap_size:",
    "invalid_json": "Occlum.json:8:13:",
    "missing_family_id": "Occlum.json: metadata.family_id:",
    "missing_max_threads": "Occlum.json: resource_limits.max_num_of_threads:",
    "size_bad_unit_XB": "Occlum.json: resource_limits.user_space_size:",
    "trailing_garbage": "Occlum.json:75:1:",
}
EXPECTED_WHERE = {
    "0.29.6": dict(_SHARED_WHERE),
    "0.30.1": {
        **_SHARED_WHERE,
        # 0.30.1's message says kernel_space_heap_max_size; the bad field is this one
        "demo_flink_unsubstituted": "Occlum.json: resource_limits.user_space_max_size:",
        "edmm_heap_init_gt_max": "Occlum.json: resource_limits.kernel_space_heap_size:",
        "edmm_init_threads_gt_4096_edmm": "Occlum.json: resource_limits.init_num_of_threads:",
        "mount_no_root_unionfs": "Occlum.json: mount:",
        "template_env_unset": "INSTANCE_IS_FOR_EDMM_PLATFORM:",
        "user_space_gt_max_nonedmm": "Occlum.json: resource_limits.user_space_size:",
    },
}


def _ids(case: dict) -> str:
    return f"{case['version']}-{case['name']}"


def _case_dir(case: dict) -> Path:
    return vectors_path(f"config-v{case['version']}", "cases", case["name"])


def _sgx_mode(case: dict) -> str:
    # The ms_buffer cases came from Occlum's HYPER-mode (ms_buffer) build of the tool.
    return "HYPER" if case["build_features"] == "ms_buffer" else "HW"


def _set_edmm_env(case: dict, monkeypatch) -> None:
    monkeypatch.delenv("SGX_MODE", raising=False)
    value = case["INSTANCE_IS_FOR_EDMM_PLATFORM"]
    if value is None:
        monkeypatch.delenv("INSTANCE_IS_FOR_EDMM_PLATFORM", raising=False)
    else:
        monkeypatch.setenv("INSTANCE_IS_FOR_EDMM_PLATFORM", value)


def _argv(case: dict, user_mac: str, init_mac: str) -> list[str]:
    return ["gen-conf", "--occlum-version", case["version"], "--sgx-mode", _sgx_mode(case),
            "--user_json", "Occlum.json", "gen_conf", "--user_fs_mac", user_mac,
            "--sdk_xml", "Enclave.xml", "--init_fs_mac", init_mac,
            "--output_json", ".Occlum_sys.json"]  # fmt: skip


def test_corpora_are_present_and_complete():
    for version in VERSIONS:
        vectors_path(f"config-v{version}", "cases", "index.json")
        cases = [c for c in CASES if c["version"] == version]
        assert len(cases) >= 50
        failing = {c["name"] for c in cases if c["outcome"] != "ok"}
        assert failing == set(EXPECTED_WHERE[version]), f"{version}: a failing case has no expectation"
        # No case here needs the release build's overflow behaviour (see test_vectors.py).
        assert not any(c["has_release_build_variant"] for c in cases)


@pytest.mark.parametrize("case", OK, ids=_ids)
def test_api_reproduces_case(case):
    src = _case_dir(case)
    enclave_xml, sys_json = generate(
        (src / "Occlum.json").read_bytes(),
        (src / "user_fs_mac").read_text(),
        (src / "init_fs_mac").read_text(),
        edmm=case["INSTANCE_IS_FOR_EDMM_PLATFORM"] == "YES",
        sgx_mode=_sgx_mode(case),
        profile=profile_for_version(case["version"]),
    )
    assert enclave_xml == (src / "Enclave.xml").read_bytes()
    assert sys_json == (src / ".Occlum_sys.json").read_bytes()


@pytest.mark.parametrize("case", OK, ids=_ids)
def test_cli_reproduces_case(case, tmp_path, monkeypatch, capsys):
    src = _case_dir(case)
    work = tmp_path / "inst"
    work.mkdir()
    (work / "Occlum.json").write_bytes((src / "Occlum.json").read_bytes())
    monkeypatch.chdir(work)
    _set_edmm_env(case, monkeypatch)
    code = cli_main(_argv(case, (src / "user_fs_mac").read_text(), (src / "init_fs_mac").read_text()))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out == (src / "stdout").read_text()  # 0.29 prints nothing, 0.30 the EDMM line
    assert (work / "Enclave.xml").read_bytes() == (src / "Enclave.xml").read_bytes()
    assert (work / ".Occlum_sys.json").read_bytes() == (src / ".Occlum_sys.json").read_bytes()


@pytest.mark.parametrize("case", FAILING, ids=_ids)
def test_failing_case_exits_nonzero_naming_field(case, tmp_path, monkeypatch, capsys):
    src = _case_dir(case)
    work = tmp_path / "inst"
    work.mkdir()
    (work / "Enclave.xml").write_bytes(b"old xml")
    (work / ".Occlum_sys.json").write_bytes(b"old json")
    (work / "Occlum.json").write_bytes((src / "Occlum.json").read_bytes())
    monkeypatch.chdir(work)
    _set_edmm_env(case, monkeypatch)
    code = cli_main(_argv(case, "u", "i"))
    out = capsys.readouterr()
    assert code == 1
    assert out.out == ""
    errors = [line for line in out.err.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.err
    assert errors[0].startswith("error: " + EXPECTED_WHERE[case["version"]][case["name"]]), errors[0]
    assert (work / "Enclave.xml").read_bytes() == b"old xml"
    assert (work / ".Occlum_sys.json").read_bytes() == b"old json"
    real = case["message"] or ""
    if case["name"] != "mount_no_root_unionfs":
        for token in re.findall(r'"([^"]*)"', real):
            assert token in errors[0], (token, errors[0])
    for token in re.findall(r"`([^`]*)`", (src / "stderr").read_text()):
        if "RUST_BACKTRACE" not in token:
            assert token in errors[0], (token, errors[0])


@pytest.mark.parametrize(
    "case", [c for c in FAILING if c["name"] != "template_env_unset"], ids=_ids
)
def test_failing_case_api_raises_user_error(case):
    src = _case_dir(case)
    with pytest.raises(UserError) as info:
        generate(
            (src / "Occlum.json").read_bytes(), "u", "i",
            edmm=case["INSTANCE_IS_FOR_EDMM_PLATFORM"] == "YES", sgx_mode=_sgx_mode(case),
            profile=profile_for_version(case["version"]),
        )  # fmt: skip
    assert f"error: {info.value}".startswith("error: " + EXPECTED_WHERE[case["version"]][case["name"]])


def test_0_29_needs_no_edmm_variable_and_prints_nothing(tmp_path, monkeypatch, capsys):
    # Occlum 0.29 has no EDMM: the variable is never read (0.30 and later stop without it).
    src = vectors_path("config-v0.29.6", "cases", "template_env_unset")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Occlum.json").write_bytes((src / "Occlum.json").read_bytes())
    monkeypatch.delenv("INSTANCE_IS_FOR_EDMM_PLATFORM", raising=False)
    case = {"version": "0.29.6", "build_features": None}
    assert cli_main(_argv(case, "u", "i")) == 0
    assert capsys.readouterr().out == ""
    case["version"] = "0.30.1"
    assert cli_main(_argv(case, "u", "i")) == 1
    assert "INSTANCE_IS_FOR_EDMM_PLATFORM" in capsys.readouterr().err
