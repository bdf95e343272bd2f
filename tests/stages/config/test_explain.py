"""``config explain`` and ``config check`` on the example seed service.

The explanation must show exactly the numbers that land in Enclave.xml and
.Occlum_sys.json; the test generates both files and compares, instead of hard-coding.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from occlum_rules.cli import main as cli_main
from occlum_rules.stages.config import generate, render_occlum_json

REPO = Path(__file__).resolve().parents[3]
SEED = REPO / "examples" / "seed_service" / "Occlum.json"
LINE = re.compile(r"^  (\w+)\s+(\d+|true|false|-)\s")


def _explained(capsys, *args: str) -> dict[str, str]:
    code = cli_main(["config", "explain", *args])
    assert code == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        match = LINE.match(line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _xml_elements(enclave_xml: bytes) -> dict[str, str]:
    return dict(re.findall(r"<(\w+)>([^<]*)</\1>", enclave_xml.decode()))


@pytest.mark.parametrize("edmm", [False, True], ids=["non-edmm", "edmm"])
@pytest.mark.parametrize("sgx_mode", ["HW", "HYPER"])
def test_explain_prints_the_numbers_in_enclave_xml(edmm, sgx_mode, capsys):
    args = [str(SEED), "--sgx-mode", sgx_mode] + (["--edmm"] if edmm else [])
    rows = _explained(capsys, *args)
    enclave_xml, sys_json = generate(SEED.read_bytes(), "u", "i", edmm=edmm, sgx_mode=sgx_mode)
    elements = _xml_elements(enclave_xml)

    resource_names = [
        "StackMaxSize", "StackMinSize", "HeapInitSize", "HeapMaxSize", "HeapMinSize",
        "TCSNum", "TCSMaxNum", "TCSMinPool", "ReservedMemMaxSize", "ReservedMemMinSize",
        "ReservedMemInitSize", "UserRegionSize", "MarshalBufferSize", "DisableDebug",
    ]  # fmt: skip
    for name in resource_names:
        if name in elements:
            assert rows.get(name) == elements[name], name
        else:
            assert rows.get(name) in (None, "-"), name
    assert ("UserRegionSize" in elements) == edmm
    assert ("MarshalBufferSize" in elements) == (sgx_mode == "HYPER")

    sys_conf = json.loads(sys_json)
    assert rows["user_space_init_size"] + "B" == sys_conf["resource_limits"]["user_space_init_size"]
    assert rows["user_space_max_size"] + "B" == sys_conf["resource_limits"]["user_space_max_size"]
    assert rows["disable_log"] == json.dumps(sys_conf["disable_log"])


def test_explain_says_where_numbers_come_from(capsys):
    assert cli_main(["config", "explain", str(SEED)]) == 0
    text = capsys.readouterr().out
    heap_line = next(line for line in text.splitlines() if line.lstrip().startswith("HeapInitSize"))
    # Non-EDMM with a heap max: the max replaces the init size; the line must say so.
    assert "kernel_space_heap_max_size" in heap_line and "replaces" in heap_line
    assert "non-EDMM layout" in text.splitlines()[0]


def test_seed_example_matches_its_description():
    config = json.loads(SEED.read_text())
    limits = config["resource_limits"]
    assert (limits["user_space_size"], limits["user_space_max_size"]) == ("1GB", "4GB")
    assert (limits["kernel_space_heap_size"], limits["kernel_space_heap_max_size"]) == (
        "64MB",
        "256MB",
    )
    assert (limits["kernel_space_stack_size"], limits["max_num_of_threads"]) == ("8MB", 64)
    mounts = {m["target"]: m["type"] for m in config["mount"]}
    assert mounts["/host"] == "hostfs" and mounts["/tmp"] == "ramfs" and mounts["/"] == "unionfs"
    assert config["entry_points"] == ["/bin"]


def test_seed_example_is_what_the_attributes_render_to():
    # The example is the canonical rendering of these attributes over Occlum's template.
    attrs = {
        "resource_limits": {
            "user_space_size": 1 << 30, "user_space_max_size": "4GB",
            "kernel_space_heap_size": "64MB", "kernel_space_heap_max_size": 256 << 20,
            "kernel_space_stack_size": "8MB", "max_num_of_threads": 64,
        },
        "entry_points": ["/bin"],
        "metadata": {"debuggable": False},
        "mount": [{"target": "/tmp", "type": "ramfs"}],
    }  # fmt: skip
    assert render_occlum_json(None, {}, attrs) == SEED.read_bytes()


def test_config_check_ok_and_failure(tmp_path, capsys):
    assert cli_main(["config", "check", str(SEED)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = json.loads(SEED.read_text())
    bad["resource_limits"]["user_space_max_size"] = "512MB"  # below user_space_size
    path = tmp_path / "Occlum.json"
    path.write_text(json.dumps(bad))
    assert cli_main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "resource_limits.user_space_size" in err and '"512MB"' in err
    # The same file is fine with EDMM, where the max is raised to 16GB.
    assert cli_main(["config", "check", str(path), "--edmm"]) == 0


def test_config_check_warns_on_ignored_fields(tmp_path, capsys):
    conf = json.loads(SEED.read_text())
    conf["resource_limits"]["kernel_space_heap_sise"] = "1GB"  # typo: Occlum ignores it
    conf["process"]["default_mmap_size"] = "1GB"
    conf["mount"][1]["readonly"] = True
    path = tmp_path / "Occlum.json"
    path.write_text(json.dumps(conf))
    assert cli_main(["config", "check", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err
    assert "resource_limits.kernel_space_heap_sise: unknown key" in err
    assert "process.default_mmap_size" in err
    assert "mount[1].readonly: unknown key" in err


def test_config_check_root_mount_is_checked(tmp_path, capsys):
    conf = json.loads(SEED.read_text())
    del conf["mount"][0]["options"]["layers"][0]["options"]
    path = tmp_path / "Occlum.json"
    path.write_text(json.dumps(conf))
    assert cli_main(["config", "check", str(path)]) == 1
    assert "mount[0].options.layers" in capsys.readouterr().err


@pytest.mark.parametrize("version", ["0.29.6", "0.29.7", "0.30.0", "0.30.1", "0.31.0"])
@pytest.mark.parametrize("edmm", [False, True], ids=["non-edmm", "edmm"])
def test_explain_follows_the_occlum_version(version, edmm, capsys):
    from occlum_rules.stages.config.profiles import profile_for_version

    args = [str(SEED), "--occlum-version", version] + (["--edmm"] if edmm else [])
    rows = _explained(capsys, *args)
    profile = profile_for_version(version)
    enclave_xml, sys_json = generate(SEED.read_bytes(), "u", "i", edmm=edmm, profile=profile)
    elements = _xml_elements(enclave_xml)
    for name in ("HeapInitSize", "HeapMaxSize", "TCSNum", "TCSMaxNum", "ReservedMemMaxSize",
                 "TCSPolicy", "DisableDebug"):
        assert rows[name] == elements[name], (version, name)
    assert rows.get("UserRegionSize") == elements.get("UserRegionSize", "-")
    sys_conf = json.loads(sys_json)
    assert ("disable_log" in rows) == ("disable_log" in sys_conf)
    if "user_space_max_size" in sys_conf["resource_limits"]:
        assert rows["user_space_max_size"] + "B" == sys_conf["resource_limits"]["user_space_max_size"]
    else:  # 0.29.x copies the string; the row names it
        assert "user_space_init_size" not in rows
        cli_main(["config", "explain", *args])
        text = capsys.readouterr().out
        assert re.search(r"^  user_space_size\s+1GB\s", text, re.M)
    assert cli_main(["config", "explain", *args]) == 0
    assert f"format: Occlum {version}'s gen_internal_conf" in capsys.readouterr().out


def test_config_check_with_an_old_version_and_a_bad_one(tmp_path, capsys):
    conf = json.loads(SEED.read_text())
    conf["mount"] = [m for m in conf["mount"] if m["target"] != "/"]  # no root unionfs
    path = tmp_path / "Occlum.json"
    path.write_text(json.dumps(conf))
    assert cli_main(["config", "check", str(path)]) == 1
    assert "mount: has no root mount" in capsys.readouterr().err
    # 0.29.6 falls back to its built-in root and drops mounts other than the first hostfs
    assert cli_main(["config", "check", str(path), "--occlum-version", "0.29.6"]) == 0
    out = capsys.readouterr()
    assert "Occlum 0.29.6" in out.out and "dropped" in out.err
    assert cli_main(["config", "explain", str(path), "--occlum-version", "0.28.0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --occlum-version: Occlum '0.28.0' is not supported")
    assert len(err.strip().splitlines()) == 1
