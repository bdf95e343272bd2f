"""The pure API's edges: templates shipped in the package, the JSON printer, bad inputs."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occlum_rules.errors import UserError
from occlum_rules.stages.config import default_occlum_json, generate, generate_config
from occlum_rules.stages.config.pipeline import sorted_value
from occlum_rules.stages.config.templating import environment

JSON_LEAVES = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
JSON_TREES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def test_templates_ship_in_the_package_and_are_readable():
    files = resources.files("occlum_rules.templates")
    for name in ("Enclave.xml.j2", "Occlum_sys.json.j2", "json_value.j2", "occlum_default.json"):
        assert files.joinpath(name).read_text().strip()


@settings(max_examples=150, deadline=None)
@given(JSON_TREES)
def test_value_macro_is_serde_json_pretty_printing(tree):
    # For floats-free trees serde's pretty printer and Python's json.dumps(indent=2)
    # agree; the macro must produce the same text with keys sorted.
    template = environment().from_string('{% from "json_value.j2" import value %}{{ value(v, "") }}')
    assert template.render(v=sorted_value(tree)) == json.dumps(
        sorted_value(tree), indent=2, ensure_ascii=False
    )


def test_generate_accepts_a_dict_and_reports_resolution():
    out = generate_config(default_occlum_json(), "u", "i", edmm=True)
    assert out.edmm and out.warnings == []
    assert out.resolution.resources.user_region is not None
    assert out.enclave_xml.startswith(b"<EnclaveConfiguration>") and not out.enclave_xml.endswith(b"\n")
    assert out.sys_json.endswith(b"}")


def test_dict_input_must_hold_json_values():
    conf = default_occlum_json()
    conf["env"]["default"].append(object())
    with pytest.raises(UserError) as info:
        generate(conf, "u", "i", edmm=False)
    assert info.value.where == "Occlum.json: env.default[1]"


def test_mac_must_be_utf8():
    with pytest.raises(UserError) as info:
        generate(default_occlum_json(), "\udcff", "i", edmm=False)
    assert info.value.where == "--user_fs_mac"


def test_unknown_sgx_mode_is_rejected():
    with pytest.raises(UserError, match="HYPER"):
        generate(default_occlum_json(), "u", "i", edmm=False, sgx_mode="hyper")


def test_feature_enable_edmm_forces_edmm_layout_but_is_echoed_as_written():
    conf = default_occlum_json()
    conf["feature"] = {"enable_edmm": True}
    out = generate_config(conf, "u", "i", edmm=False, sgx_mode="SIM")
    assert out.edmm
    assert json.loads(out.sys_json)["feature"]["enable_edmm"] is True
    conf["feature"] = {}
    assert json.loads(generate(conf, "u", "i", edmm=True)[1])["feature"]["enable_edmm"] is False


def test_cli_failed_write_leaves_old_outputs(tmp_path, monkeypatch, capsys):
    from occlum_rules.cli import main as cli_main
    from occlum_rules.stages.config import render_occlum_json

    (tmp_path / "Occlum.json").write_bytes(render_occlum_json(None))
    (tmp_path / "Enclave.xml").write_bytes(b"old")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INSTANCE_IS_FOR_EDMM_PLATFORM", "NO")
    code = cli_main(["gen-conf", "--user_json", "Occlum.json", "gen_conf", "--user_fs_mac", "u",
                     "--init_fs_mac", "i", "--sdk_xml", "Enclave.xml",
                     "--output_json", "missing/.Occlum_sys.json"])  # fmt: skip
    assert code == 1
    assert "missing/.Occlum_sys.json" in capsys.readouterr().err
    assert (tmp_path / "Enclave.xml").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Enclave.xml", "Occlum.json"]
