"""Occlum.json with comments (as Occlum's docs show it): one error naming the comment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from occlum_rules.cli import main as cli_main
from occlum_rules.errors import UserError
from occlum_rules.stages.config import default_occlum_json, load_user_json
from occlum_rules.stages.config.json_source import find_comment, parse_json_text
from tests.support.workspace import make_workspace, run_doit

COMMENT_ERROR = "invalid JSON: comments are not allowed in Occlum.json (JSON has no comments); remove them"


def _with_comment(comment: str) -> str:
    """The default Occlum.json with ``comment`` inserted as line 3 (indented 4 spaces)."""
    lines = json.dumps(default_occlum_json(), indent=4).splitlines()
    return "\n".join([*lines[:2], f"    {comment}", *lines[2:]]) + "\n"


@pytest.mark.parametrize("comment", ["// the thread limit", "/* the thread limit */"])
def test_comment_is_reported_at_its_line_and_column(comment):
    with pytest.raises(UserError) as info:
        parse_json_text(_with_comment(comment), "inst/Occlum.json")
    assert str(info.value) == f"inst/Occlum.json:3:5: {COMMENT_ERROR}"


def test_comment_after_the_value_and_slashes_in_strings():
    text = '{"env": {"default": ["URL=http://x/*y*/"]}} // done\n'
    assert find_comment(text) == text.index("// done")
    assert find_comment('{"a": "//", "b": "\\"/*"}') is None
    with pytest.raises(UserError, match=r"x.json:1:45: invalid JSON: comments are not allowed"):
        parse_json_text(text, "x.json")


def test_other_errors_before_a_comment_keep_their_message():
    # The first problem wins: a missing comma on line 1, a comment only later.
    with pytest.raises(UserError) as info:
        parse_json_text('{"a": 1 "b": 2,\n // later\n}', "x.json")
    assert "comments" not in str(info.value) and str(info.value).startswith("x.json:1:")


def test_load_user_json_reports_the_comment(tmp_path):
    path = tmp_path / "Occlum.json"
    path.write_text(_with_comment("// note"))
    with pytest.raises(UserError, match=rf"^{path}:3:5: invalid JSON: comments are not allowed"):
        load_user_json(path)


def test_gen_conf_cli_exit_1_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INSTANCE_IS_FOR_EDMM_PLATFORM", "NO")
    (tmp_path / "Occlum.json").write_text(_with_comment("/* docs-style\n comment */"))
    code = cli_main(["gen-conf", "--user_json", "Occlum.json", "gen_conf", "--user_fs_mac", "u",
                     "--init_fs_mac", "i", "--sdk_xml", "E.xml", "--output_json", "s.json"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"error: Occlum.json:3:5: {COMMENT_ERROR}"
    assert not (tmp_path / "E.xml").exists()


HELLO_C = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'
BOM = "targets:\n  - target: /\n    mkdirs: [bin, lib, root, host, tmp, dev, proc, etc]\n"


def test_build_reports_the_comment_in_the_instances_occlum_json(tmp_path: Path):
    root = make_workspace(tmp_path / "ws", {
        "app/hello.c": HELLO_C,
        "app/image.yaml": BOM,
        "app/Occlum.json": _with_comment("// copied from the Occlum docs"),
        "app/BUILD.py": (
            'occlum_cc_binary(name = "hello", srcs = ["hello.c"])\n'
            'occlum_bom(name = "image", src = "image.yaml", deps = {"/bin": [":hello"]})\n'
            'occlum_instance(name = "instance", bom = ":image", occlum_json = "Occlum.json")\n'),
    }, "source_date_epoch: 0\nocclum:\n  home: /nonexistent\n")
    result = run_doit(root, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 1, result.output
    assert f"app/Occlum.json (rendered):3:5: {COMMENT_ERROR}" in result.output
    assert "Traceback" not in result.output
