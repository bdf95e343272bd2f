from pathlib import Path

import pytest

from occlum_rules.core.workspace import find_root, load_workspace, schema_doc
from occlum_rules.errors import UserError


def _ws(tmp_path: Path, text: str) -> Path:
    (tmp_path / "WORKSPACE.yaml").write_text(text)
    return tmp_path


def test_defaults_and_values(tmp_path):
    ws = load_workspace(_ws(tmp_path, "sgx_mode: SIM\ncache:\n  dir: .cache\n"))
    assert ws.sgx_mode == "SIM"
    assert ws.build_file == "BUILD.py"
    assert ws.toolchains["cc"] == ["occlum-gcc", "musl-gcc", "gcc"]
    assert ws.cache_dir({}) == (tmp_path / ".cache").resolve()
    assert ws.cache_dir({"OCCLUM_RULES_CACHE": str(tmp_path / "x")}) == (tmp_path / "x").resolve()


def test_unknown_key_names_key_and_line_with_suggestion(tmp_path):
    root = _ws(tmp_path, "name: w\ncache:\n  remot: http://x\n")
    with pytest.raises(UserError) as exc:
        load_workspace(root)
    assert str(exc.value) == (
        f"{root / 'WORKSPACE.yaml'}:3: unknown key 'cache.remot' (did you mean 'remote'?); "
        "expected one of: dir, remote, instance_name, upload")


def test_wrong_type_names_key_and_line(tmp_path):
    root = _ws(tmp_path, "edmm: yes-please\n")
    with pytest.raises(UserError) as exc:
        load_workspace(root)
    assert str(exc.value) == (
        f"{root / 'WORKSPACE.yaml'}:1: key 'edmm': expected true or false, got 'yes-please'")


def test_bad_literal(tmp_path):
    root = _ws(tmp_path, "\nsgx_mode: sim\n")
    with pytest.raises(UserError, match=r":2: key 'sgx_mode': expected one of 'HW', 'SIM', 'HYPER'"):
        load_workspace(root)


def test_invalid_yaml_has_line(tmp_path):
    root = _ws(tmp_path, "name: [unclosed\nother: 1\n")
    with pytest.raises(UserError, match=r"WORKSPACE.yaml:\d+: invalid YAML"):
        load_workspace(root)


def test_output_dir_must_stay_inside(tmp_path):
    with pytest.raises(UserError, match="output_dir must be a directory inside the workspace"):
        load_workspace(_ws(tmp_path, "output_dir: ../elsewhere\n"))


def test_find_root_walks_up_and_fails_clearly(tmp_path):
    _ws(tmp_path, "")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert find_root(sub) == tmp_path.resolve()
    with pytest.raises(UserError, match="no WORKSPACE.yaml"):
        find_root(Path("/"))


def test_source_date_epoch_policies(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert load_workspace(_ws(tmp_path, "")).source_date_epoch() == 1234
    assert load_workspace(_ws(tmp_path, "source_date_epoch: 99\n")).source_date_epoch() == 99
    with pytest.raises(UserError, match="last commit time"):
        load_workspace(_ws(tmp_path, "source_date_epoch: git\n")).source_date_epoch()


def test_schema_doc_lists_every_key():
    doc = schema_doc()
    for key in ("build_file", "output_dir", "cache.dir", "cache.remote", "signing.key",
                "toolchains.cc", "occlum.home", "source_date_epoch", "sgx_mode",
                "provenance.signing_key"):
        assert f"`{key}`" in doc
