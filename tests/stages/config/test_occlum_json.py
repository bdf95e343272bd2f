"""Producing Occlum.json: user file, jinja2 template, structured attributes; action inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.config import (
    default_occlum_json,
    generate,
    load_user_json,
    merge_attrs,
    render_occlum_json,
    split_action_inputs,
)
from tests.conftest import vectors_path

TEMPLATE = """{
    "resource_limits": {
        "kernel_space_heap_size": "{{ heap }}",
        "kernel_space_stack_size": "1MB",
        "user_space_size": "{{ user_space }}",
        "max_num_of_threads": {{ threads }}
    },
    "process": {"default_stack_size": "4MB", "default_heap_size": "32MB", "default_mmap_size": "100MB"},
    "entry_points": {{ entry_points | tojson }},
    "env": {"default": ["OCCLUM=yes"], "untrusted": []},
    "metadata": {"product_id": 0, "version_number": 0, "debuggable": false, "enable_kss": false,
                 "family_id": {"high": "0x0", "low": "0x0"}, "ext_prod_id": {"high": "0x0", "low": "0x0"}},
    "feature": {},
    "mount": [
        {"target": "/", "type": "unionfs", "options": {"layers": [
            {"target": "/", "type": "sefs", "source": "./build/mount/__ROOT", "options": {"MAC": ""}},
            {"target": "/", "type": "sefs", "source": "./run/mount/__ROOT"}]}}
    ]
}
"""
VARS = {"heap": "64MB", "user_space": "1GB", "threads": 8, "entry_points": ["/bin/app"]}


def _template(tmp_path: Path, text: str = TEMPLATE) -> Path:
    path = tmp_path / "Occlum.json.j2"
    path.write_text(text)
    return path


def test_default_template_is_occlums_and_generates_like_template_vector():
    src = vectors_path("config", "cases", "template_nonedmm")
    assert default_occlum_json() == json.loads((src / "Occlum.json").read_text())
    xml, sys_json = generate(
        render_occlum_json(None),
        (src / "user_fs_mac").read_text(),
        (src / "init_fs_mac").read_text(),
        edmm=False,
    )
    assert xml == (src / "Enclave.xml").read_bytes()
    assert sys_json == (src / ".Occlum_sys.json").read_bytes()


def test_template_rendered_with_variables(tmp_path):
    data = render_occlum_json(_template(tmp_path), VARS, None)
    assert data.endswith(b"}\n") and not data.endswith(b"\n\n")
    conf = json.loads(data)
    assert conf["resource_limits"]["kernel_space_heap_size"] == "64MB"
    assert conf["entry_points"] == ["/bin/app"]
    assert list(conf) == [
        "resource_limits",
        "process",
        "entry_points",
        "env",
        "metadata",
        "feature",
        "mount",
    ]
    xml, _ = generate(data, "u", "i", edmm=False)
    assert b"<TCSNum>8</TCSNum>" in xml and b"<DisableDebug>1</DisableDebug>" in xml


def test_undefined_variable_names_template_and_line(tmp_path):
    path = _template(tmp_path)
    with pytest.raises(UserError) as info:
        render_occlum_json(path, {k: v for k, v in VARS.items() if k != "user_space"}, None)
    assert info.value.where == f"{path}:5"
    assert "user_space" in info.value.message


def test_template_syntax_error_names_line(tmp_path):
    path = _template(tmp_path, '{\n  "a": {{ oops }\n}')
    with pytest.raises(UserError) as info:
        render_occlum_json(path, {"oops": 1}, None)
    assert info.value.where == f"{path}:2"


def test_template_rendering_bad_json_names_rendered_line(tmp_path):
    path = _template(tmp_path, '{\n  "a": {{ value }}\n}')
    with pytest.raises(UserError) as info:
        render_occlum_json(path, {"value": "not json"}, None)
    assert info.value.where.startswith(f"{path} (rendered):2:")


def test_template_with_repeated_struct_key_is_rejected(tmp_path):
    text = TEMPLATE.replace(
        '"kernel_space_stack_size": "1MB",',
        '"kernel_space_stack_size": "1MB", "kernel_space_stack_size": "2MB",',
    )
    with pytest.raises(UserError, match="appears twice") as info:
        render_occlum_json(_template(tmp_path, text), VARS, None)
    assert info.value.where.endswith("resource_limits.kernel_space_stack_size")


def test_structured_attrs_merge_over_defaults():
    data = render_occlum_json(
        None,
        None,
        {
            "resource_limits": {"user_space_size": 2 << 30, "kernel_space_heap_max_size": "128MB"},
            "env": {"default": ["OCCLUM=yes", "A=1"]},
            "metadata": {"debuggable": False, "family_id": {"low": "0x5"}},
            "feature": {"enable_edmm": True},
        },
    )
    conf = json.loads(data)
    limits = conf["resource_limits"]
    assert limits["user_space_size"] == "2GB"  # int bytes -> Occlum size string
    assert limits["kernel_space_stack_size"] == "1MB"  # untouched default kept
    assert list(limits)[-1] == "kernel_space_heap_max_size"  # new keys go after the base's
    assert conf["env"] == {
        "default": ["OCCLUM=yes", "A=1"],
        "untrusted": ["EXAMPLE"],
    }  # arrays replace
    assert conf["metadata"]["family_id"] == {"high": "0x0", "low": "0x5"}  # objects merge deeply
    assert conf["feature"]["enable_edmm"] is True


def test_none_deletes_a_key_and_a_mount():
    base = default_occlum_json()
    merged = merge_attrs(
        base,
        {
            "resource_limits": {"kernel_space_heap_max_size": None, "user_space_max_size": "1GB"},
            "mount": [{"target": "/host", "type": None}],
        },
    )
    merged = merge_attrs(merged, {"resource_limits": {"user_space_max_size": None}})
    assert "user_space_max_size" not in merged["resource_limits"]
    assert [m["target"] for m in merged["mount"]] == ["/"]
    assert base == default_occlum_json()  # the base is not modified


def test_mounts_merge_by_target():
    merged = merge_attrs(
        default_occlum_json(),
        {
            "mount": [
                {"target": "/tmp", "type": "ramfs"},
                {"target": "/host", "type": "hostfs", "source": "/data"},
                {
                    "target": "/sfs",
                    "type": "sefs",
                    "source": "./s",
                    "options": {"cache_size": 1 << 20},
                },
            ]
        },
    )
    assert [(m["target"], m.get("source")) for m in merged["mount"]] == [
        ("/", None), ("/host", "/data"), ("/tmp", None), ("/sfs", "./s"),
    ]  # fmt: skip
    assert merged["mount"][3]["options"]["cache_size"] == "1MB"


def test_rendering_is_independent_of_attribute_order():
    a = {"resource_limits": {"user_space_max_size": "4GB", "kernel_space_heap_max_size": "64MB"},
         "feature": {"pkru": 1}}  # fmt: skip
    b = {"feature": {"pkru": 1},
         "resource_limits": {"kernel_space_heap_max_size": "64MB", "user_space_max_size": "4GB"}}  # fmt: skip
    assert render_occlum_json(None, None, a) == render_occlum_json(None, None, b)


@pytest.mark.parametrize(
    ("attrs", "where"),
    [
        ({"resource_limit": {}}, "attributes: resource_limit"),
        ({"resource_limits": {"user_space_size": "1GiB"}}, "attributes: resource_limits.user_space_size"),
        ({"resource_limits": {"user_space_size": True}}, "attributes: resource_limits.user_space_size"),
        ({"mount": [{"target": "/x", "type": "sefs", "options": {"disk_size": "5G"}}]},
         "attributes: mount[0].options.disk_size"),
        ({"mount": [{"type": "ramfs"}]}, "attributes: mount[0]"),
    ],
)  # fmt: skip
def test_bad_attributes_name_the_attribute(attrs, where):
    with pytest.raises(UserError) as info:
        render_occlum_json(None, None, attrs)
    assert info.value.where == where


def test_rendered_config_is_schema_checked():
    with pytest.raises(UserError) as info:
        render_occlum_json(None, None, {"resource_limits": {"max_num_of_threads": -1}})
    assert info.value.where.endswith("resource_limits.max_num_of_threads")


def test_load_user_json_errors_carry_line_and_column(tmp_path):
    path = tmp_path / "Occlum.json"
    path.write_text('{\n  "resource_limits": {\n    "max_num_of_threads": 32,\n  }\n}\n')
    with pytest.raises(UserError) as info:
        load_user_json(path)
    assert info.value.where == f"{path}:4:3"
    with pytest.raises(UserError, match="not found"):
        load_user_json(tmp_path / "missing.json")


def test_load_user_json_returns_plain_dict():
    src = vectors_path("config", "cases", "duplicate_keys_in_env")
    conf = load_user_json(src / "Occlum.json")
    assert isinstance(conf, dict) and isinstance(conf["env"], dict)
    # A dict round-trip generates the same bytes as the file (last duplicate wins).
    assert generate(conf, "u", "i", edmm=False) == generate(
        (src / "Occlum.json").read_bytes(), "u", "i", edmm=False
    )


def test_action_inputs_ignore_what_gen_conf_ignores():
    base = default_occlum_json()
    reformatted = json.dumps(base, separators=(",", ":")).encode()
    noisy = json.loads(reformatted)
    noisy["comment"] = "ignored by Occlum"
    noisy["mount"][1]["readonly"] = True
    noisy["mount"][1]["options"] = {"temporary": False}
    first = split_action_inputs(json.dumps(base, indent=2).encode())
    assert first.sefs == {}  # SEFS packing never reads Occlum.json
    assert first.config_key_bytes() == split_action_inputs(reformatted).config_key_bytes()
    second = split_action_inputs(noisy)
    assert second.config_key_bytes() == first.config_key_bytes()
    assert any("comment" in w for w in second.ignored)
    changed = merge_attrs(base, {"resource_limits": {"user_space_size": "1GB"}})
    assert split_action_inputs(changed).config_key_bytes() != first.config_key_bytes()


def test_marshal_buffer_size_only_counts_in_hyper_mode():
    conf = merge_attrs(default_occlum_json(), {"resource_limits": {"marshal_buffer_size": "2MB"}})
    plain = default_occlum_json()
    assert split_action_inputs(conf).config == split_action_inputs(plain).config
    assert (
        split_action_inputs(conf, sgx_mode="HYPER").config
        != split_action_inputs(plain, sgx_mode="HYPER").config
    )
