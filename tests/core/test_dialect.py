"""BUILD dialect: each forbidden construct and each resolution error has one exact message."""

from pathlib import Path

import pytest

from occlum_rules.core.analysis import Graph
from occlum_rules.core.workspace import load_workspace
from occlum_rules.errors import UserError
from occlum_rules.rules import all_rules
from occlum_rules.toolchains import Toolchains
from tests.support.workspace import make_workspace, run_doit

HELLO = "int main(void) { return 0; }\n"


def analyze(root: Path) -> Graph:
    ws = load_workspace(root)
    graph = Graph(ws, all_rules(), Toolchains(ws))
    graph.load_all()
    graph.analyze()
    return graph


def error_of(tmp_path: Path, build: str, extra: dict | None = None) -> str:
    files = {"app/BUILD.py": build, "app/main.c": HELLO, **(extra or {})}
    root = make_workspace(tmp_path / "ws", files)
    with pytest.raises(UserError) as exc:
        analyze(root)
    return str(exc.value)


@pytest.mark.parametrize("code, message", [
    ("import os\n", "app/BUILD.py:1: import statements are not allowed; use load()"),
    ("x = 1\nfrom os import path\n", "app/BUILD.py:2: import statements are not allowed; use load()"),
    ("class A:\n    pass\n", "app/BUILD.py:1: class definitions are not allowed"),
    ("while True:\n    pass\n", "app/BUILD.py:1: while loops are not allowed; use a for loop over a list"),
    ("try:\n    x = 1\nexcept Exception:\n    pass\n", "app/BUILD.py:1: try statements are not allowed"),
    ("def f():\n    global x\n", "app/BUILD.py:2: global statements are not allowed"),
    ("x = (1).__class__\n", "app/BUILD.py:1: names starting with '_' are not allowed: '__class__'"),
    ("_private = 1\n", "app/BUILD.py:1: names starting with '_' are not allowed: '_private'"),
    ("data = open('x').read()\n", "app/BUILD.py:1: open() is not available in BUILD files"),
    ("exec('1')\n", "app/BUILD.py:1: exec() is not available in BUILD files"),
    ("eval('1')\n", "app/BUILD.py:1: eval() is not available in BUILD files"),
    ("__import__('os')\n", "app/BUILD.py:1: __import__() is not available in BUILD files"),
    ("x = = 1\n", "app/BUILD.py:1: syntax error: invalid syntax"),
    ("x = 1\ny = '\0'\n", "app/BUILD.py:2: a NUL byte in the source (BUILD files are text)"),
])
def test_forbidden_constructs(tmp_path, code, message):
    assert error_of(tmp_path, code) == message


def test_unknown_rule_is_a_name_error_with_line(tmp_path):
    msg = error_of(tmp_path, "\noccum_cc_binary(name = 'a', srcs = ['main.c'])\n")
    assert msg.startswith("app/BUILD.py:2: name 'occum_cc_binary' is not defined")


def test_unknown_attribute_suggests(tmp_path):
    msg = error_of(tmp_path, "occlum_cc_binary(name = 'a', srcz = ['main.c'])\n")
    assert msg == "app/BUILD.py:1: occlum_cc_binary() got an unknown attribute 'srcz' (did you mean 'srcs'?)"


def test_wrong_attribute_type(tmp_path):
    msg = error_of(tmp_path, "occlum_cc_binary(name = 'a', srcs = 'main.c')\n")
    assert msg == ("app/BUILD.py:1: occlum_cc_binary(): attribute 'srcs' must be a list of file "
                   "names or labels, got str 'main.c'")


def test_duplicate_names(tmp_path):
    msg = error_of(tmp_path, "occlum_cc_binary(name = 'a', srcs = ['main.c'])\n"
                             "occlum_cc_binary(name = 'a', srcs = ['main.c'])\n")
    assert msg == "app/BUILD.py:2: duplicate target name 'a' (first defined at app/BUILD.py:1)"


def test_missing_source(tmp_path):
    msg = error_of(tmp_path, "occlum_cc_binary(name = 'a', srcs = ['nope.c'])\n")
    assert msg == "app/BUILD.py:1: missing source file 'app/nope.c'"


def test_source_escaping_package(tmp_path):
    msg = error_of(tmp_path, "occlum_cc_binary(name = 'a', srcs = ['../x.c'])\n")
    assert msg == ("app/BUILD.py:1: source '../x.c' must be a path inside the package "
                   "(no '..' and not absolute)")


def test_bad_label_and_unknown_target(tmp_path):
    msg = error_of(tmp_path, "occlum_cc_binary(name = 'a', srcs = ['main.c'], deps = ['//app:lbi'])\n"
                             "occlum_cc_library(name = 'lib', srcs = ['main.c'])\n")
    assert msg == "app/BUILD.py:1: no target named 'lbi' in //app (did you mean 'lib'?)"
    msg = error_of(tmp_path, "occlum_cc_binary(name = 'a', srcs = ['main.c'], deps = ['//a/../b:c'])\n")
    assert msg.startswith("app/BUILD.py:1: bad label '//a/../b:c'")


def test_dependency_cycle(tmp_path):
    msg = error_of(tmp_path, "occlum_cc_library(name = 'x', srcs = ['main.c'], deps = [':y'])\n"
                             "occlum_cc_library(name = 'y', srcs = ['main.c'], deps = [':x'])\n")
    assert msg == "app/BUILD.py:1: dependency cycle: //app:x -> //app:y -> //app:x"


def test_runtime_error_points_at_line(tmp_path):
    msg = error_of(tmp_path, "names = ['a']\n\nx = names[3]\n")
    assert msg == "app/BUILD.py:3: IndexError: list index out of range"


def test_fail_builtin(tmp_path):
    assert error_of(tmp_path, "fail('nope')\n") == "app/BUILD.py:1: fail: nope"


def test_glob_load_and_macros(tmp_path):
    files = {
        "app/BUILD.py": (
            'load("//macros:defs.py", "many_binaries", lib_name = "LIB")\n'
            'occlum_cc_library(name = lib_name, srcs = glob(["lib/**/*.c"], exclude = ["lib/skip.c"]))\n'
            'many_binaries(glob(["bin_*.c"]))\n'),
        "app/bin_one.c": HELLO, "app/bin_two.c": HELLO,
        "app/lib/a.c": "int a(void){return 1;}\n", "app/lib/deep/b.c": "int b(void){return 2;}\n",
        "app/lib/skip.c": "#error skipped\n",
        "macros/BUILD.py": "",
        "macros/defs.py": (
            'LIB = "util"\n'
            'def many_binaries(srcs):\n'
            '    for src in srcs:\n'
            '        occlum_cc_binary(name = src[:-2], srcs = [src], deps = [":" + LIB])\n'),
    }
    graph = analyze(make_workspace(tmp_path / "ws", files))
    names = sorted(str(label) for label in graph.targets)
    assert names == ["//app:bin_one", "//app:bin_two", "//app:util"]
    lib = [t for t in graph.targets.values() if t.label.name == "util"][0]
    assert lib.attrs["srcs"] == ["lib/a.c", "lib/deep/b.c"]


def test_load_unknown_symbol(tmp_path):
    msg = error_of(tmp_path, 'load("//macros:defs.py", "mising")\n',
                   {"macros/BUILD.py": "", "macros/defs.py": "missing = 1\n"})
    assert msg == "app/BUILD.py:1: load(): 'mising' is not defined in //macros:defs.py (did you mean 'missing'?)"


def test_errors_reach_the_user_as_one_line_exit_1(tmp_path):
    root = make_workspace(tmp_path / "ws", {"app/BUILD.py": "import os\n", "app/main.c": HELLO})
    result = run_doit(root, "build", cache=tmp_path / "cache")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: app/BUILD.py:1: import statements are not allowed; use load()"
    assert "Traceback" not in result.output
