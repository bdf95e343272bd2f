"""BOM parsing/validation and copy_bom's environment-variable expansion."""

from __future__ import annotations

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.bom.envexpand import expand
from occlum_rules.stages.bom.schema import parse_bom_text

ENV = {"A": "alpha", "EMPTY": "", "ROOTED": "/abs"}


@pytest.mark.parametrize("text,result,unset", [
    ("plain", "plain", None),
    ("$A/x", "alpha/x", None),
    ("${A}x", "alphax", None),
    ("pre${EMPTY}post", "prepost", None),  # empty value expands to nothing
    ("${EMPTY:-dflt}", "", None),  # set-but-empty does NOT take the default
    ("${NOPE:-dflt}/y", "dflt/y", None),
    ("$$A", "$A", None),  # $$ escapes
    ("a$", "a$", None),
    ("a$-b", "a$-b", None),
    ("${unbalanced", "${unbalanced", None),
    ("$A/$NOPE", "$A/$NOPE", "NOPE"),  # one unset variable keeps the whole string
    ("${NOPE}", "${NOPE}", "NOPE"),
])
def test_expand(text: str, result: str, unset: str | None) -> None:
    assert expand(text, ENV) == (result, unset)


def test_full_schema_parses_with_lines() -> None:
    bom = parse_bom_text(
        "includes: [base.yaml]\n"
        "excludes: ['*.log']\n"
        "targets:\n"
        "  - target: /bin\n"
        "    mkdirs: [a]\n"
        "    createlinks:\n"
        "      - src: ../x\n"
        "        linkname: y\n"
        "    copy:\n"
        "      - from: /usr\n"
        "        dirs: [share/doc]\n"
        "        files:\n"
        "          - bin/ls\n"
        "          - name: bin/cat\n"
        "            hash: ABC\n"
        "            autodep: false\n"
        "            rename: kitty\n", "b.yaml")
    t = bom.targets[0]
    assert bom.includes == ("base.yaml",) and bom.excludes == ("*.log",)
    assert t.target == "/bin" and t.mkdirs == ("a",)
    assert t.createlinks[0].src == "../x" and t.createlinks[0].line == 7
    files = t.copy[0].files
    assert files[0].name == "bin/ls" and files[0].autodep is True
    assert (files[1].name, files[1].hash, files[1].autodep, files[1].rename) == ("bin/cat", "ABC", False, "kitty")
    assert files[1].hash.line == 15
    assert bom.warnings == ()


@pytest.mark.parametrize("text,line,needle", [
    ("targets:\n  - target: /\n    copy: [ {from: x\n", None, "invalid YAML"),
    ("", None, "empty BOM"),
    ("targets:\n  - mkdirs: [a]\n", 2, "needs 'target'"),
    ("targets:\n  - target: [a, b]\n", 2, "must be a string"),
    ("targets:\n  - target: /\n    copy:\n      - files:\n          - name: x\n            autodep: no\n", 6, "true or false"),
    ("targets:\n  - target: /\n    copy:\n      - files:\n          - rename: x\n", 5, "needs 'name'"),
    ("targets:\n  - target: /\n    copy:\n      - {}\n", 4, "field 'from' cannot be empty"),
    ("targets: 3\n", 1, "must be a list"),
    ("targets:\n  - target: /\n    mkdirs: a\n", 3, "list of strings"),
    ("targets:\n  - target: /\n  - target: /x\n    target: /y\n", 4, "duplicate key"),
    ("- a\n- b\n", 1, "must be a mapping"),
])
def test_invalid_boms_name_file_and_line(text: str, line: int | None, needle: str) -> None:
    with pytest.raises(UserError) as err:
        parse_bom_text(text, "bad.yaml")
    assert needle in err.value.message
    assert err.value.exit_code == 253
    assert err.value.where == ("bad.yaml" if line is None else f"bad.yaml:{line}") or (
        line is None and err.value.where.startswith("bad.yaml"))


def test_unknown_keys_warn_with_line_and_suggestion() -> None:
    bom = parse_bom_text("exclude: ['*']\ntargets:\n  - target: /\n    mkdir: [x]\n"
                         "    copy:\n      - files:\n          - name: a\n            renam: b\n", "t.yaml")
    assert len(bom.warnings) == 3
    assert bom.warnings[0].startswith("t.yaml:1: unknown key 'exclude'") and "'excludes'" in bom.warnings[0]
    assert bom.warnings[1].startswith("t.yaml:4: unknown key 'mkdir'") and "'mkdirs'" in bom.warnings[1]
    assert bom.warnings[2].startswith("t.yaml:8: unknown key 'renam'") and "'rename'" in bom.warnings[2]
    assert bom.targets[0].mkdirs == ()  # ignored, like copy_bom


def test_yaml12_scalars() -> None:
    bom = parse_bom_text("targets:\n  - target: 1.0\n    copy:\n      - files:\n"
                         "          - name: x\n            autodep: FALSE\n", "s.yaml")
    assert bom.targets[0].target == "1.0"
    assert bom.targets[0].copy[0].files[0].autodep is False
