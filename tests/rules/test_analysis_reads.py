"""What analysis reads for a rule is recorded, and a change to it is noticed.

Rules ask ``ctx.fs`` about the file system (core/fileview.py); each answer is a ``Read`` of
the target. These tests check the record names what the rules used (a crate's files and
Cargo.toml, a Go module's go.mod and vendor/, a signing key) and that changing any of them
shows as a stale answer and makes the next ``doit build`` re-run the action that depends
on it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from occlum_rules.core.analysis import Graph
from occlum_rules.core.doit_bridge import load_graph
from occlum_rules.errors import UserError
from tests.rules.test_cargo_go import CARGO, GO
from tests.support.keys import write_signing_key
from tests.support.workspace import REPO, make_workspace, outcomes, run_doit

CRATE_TOML = '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2018"\n'
FILES = {
    "crate/BUILD.py": 'cargo_binary(name = "app")\n',
    "crate/Cargo.toml": CRATE_TOML,
    "crate/src/main.rs": 'fn main() { println!("hi"); }\n',
    "gomod/go.mod": "module example.com/app\n\ngo 1.19\n",
    "gomod/cmd/BUILD.py": 'go_binary(name = "app", pkg = ".")\n',
    "gomod/cmd/main.go": 'package main\n\nfunc main() { println("hi") }\n',
}
CARGO_ACTION = "//crate:app:cargo-build"
GO_ACTION = "//gomod/cmd:app:go-build"


def stale(root: Path, graph: Graph) -> list[tuple[str, str, str]]:
    return sorted((owner, r.kind, r.path) for owner, r in graph.stale_inputs())


def test_the_record_names_what_the_rules_read(tmp_path):
    root = make_workspace(tmp_path / "ws", FILES)
    _, graph = load_graph(root)
    inputs = graph.analysis_inputs()
    crate = {(r.kind, r.path) for r in inputs["//crate:app"]}
    assert ("file", "crate/Cargo.toml") in crate     # parsed for the binary's name
    assert ("tree:target", "crate") in crate         # every file of the crate
    go = {(r.kind, r.path) for r in inputs["//gomod/cmd:app"]}
    # the nearest go.mod, looked for from the package upwards, and the vendor check
    assert {("probe", "gomod/cmd/go.mod"), ("probe", "gomod/go.mod"), ("tree:", "gomod"),
            ("probe", "gomod/vendor/modules.txt")} <= go
    workspace = {(r.kind, r.path) for r in inputs["//"]}
    assert {("file", "WORKSPACE.yaml"), ("file", "crate/BUILD.py"),
            ("file", "gomod/cmd/BUILD.py")} <= workspace
    assert graph.stale_inputs() == []


def test_each_change_makes_exactly_its_answer_stale(tmp_path):
    root = make_workspace(tmp_path / "ws", FILES)
    _, graph = load_graph(root)
    (root / "crate/Cargo.toml").write_text(CRATE_TOML + '\n[profile.release]\npanic = "abort"\n')
    assert stale(root, graph) == [("//crate:app", "file", "crate/Cargo.toml")]

    _, graph = load_graph(root)
    (root / "crate/src/extra.rs").write_text("pub fn f() {}\n")
    assert stale(root, graph) == [("//crate:app", "tree:target", "crate")]

    _, graph = load_graph(root)   # cargo's own output directory is not read
    (root / "crate/target").mkdir()
    (root / "crate/target/ignored").write_text("built by cargo\n")
    assert stale(root, graph) == []

    _, graph = load_graph(root)
    (root / "gomod/vendor").mkdir()
    (root / "gomod/vendor/modules.txt").write_text("")
    assert stale(root, graph) == [("//gomod/cmd:app", "probe", "gomod/vendor/modules.txt"),
                                  ("//gomod/cmd:app", "tree:", "gomod")]

    _, graph = load_graph(root)   # a go.mod nearer the package moves the module root
    (root / "gomod/cmd/go.mod").write_text("module example.com/cmd\n\ngo 1.19\n")
    assert stale(root, graph) == [("//gomod/cmd:app", "probe", "gomod/cmd/go.mod"),
                                  ("//gomod/cmd:app", "tree:", "gomod")]


def test_workspace_reads_globs_and_the_package_set(tmp_path):
    root = make_workspace(tmp_path / "ws", {
        "c/BUILD.py": 'occlum_cc_binary(name = "app", srcs = glob(["*.c"]))\n',
        "c/main.c": "int main(void) { return 0; }\n"})
    _, graph = load_graph(root)
    workspace = {(r.kind, r.path) for r in graph.analysis_inputs()["//"]}
    assert {("glob", "c"), ("packages", ""), ("file", "c/BUILD.py")} <= workspace

    (root / "c/more.c").write_text("int more(void) { return 1; }\n")
    assert stale(root, graph) == [("//", "glob", "c")]
    _, graph = load_graph(root)
    (root / "lib").mkdir()
    (root / "lib/BUILD.py").write_text("")
    assert stale(root, graph) == [("//", "packages", "")]
    _, graph = load_graph(root)
    (root / "WORKSPACE.yaml").write_text("source_date_epoch: 1\n")
    assert stale(root, graph) == [("//", "file", "WORKSPACE.yaml")]


def test_a_signing_key_is_read_for_its_fingerprint_and_recorded(tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(REPO / "examples/hello_c", root / "examples/hello_c",
                    ignore=shutil.ignore_patterns("__pycache__"))
    make_workspace(root, {})
    build_file = root / "examples/hello_c/BUILD.py"
    build_file.write_text(build_file.read_text().replace(
        'bom = ":image",', 'bom = ":image",\n    sign_key = "key.pem",'))
    write_signing_key(root / "examples/hello_c/key.pem")
    _, graph = load_graph(root)
    reads = graph.analysis_inputs()["//examples/hello_c:instance"]
    assert ("file", "examples/hello_c/key.pem") in {(r.kind, r.path) for r in reads}
    sign = next(a for a in graph.actions if a.id == "//examples/hello_c:instance:sign")
    before = sign.params["mrsigner"]

    write_signing_key(root / "examples/hello_c/key.pem")
    assert stale(root, graph) == [("//examples/hello_c:instance", "file",
                                   "examples/hello_c/key.pem")]
    _, graph = load_graph(root)
    sign = next(a for a in graph.actions if a.id == "//examples/hello_c:instance:sign")
    assert sign.params["mrsigner"] != before

    (root / "examples/hello_c/key.pem").write_text("not a key\n")
    with pytest.raises(UserError, match=r"signing key 'examples/hello_c/key.pem': "):
        load_graph(root)


def test_bad_cargo_toml_is_one_error_naming_the_file(tmp_path):
    root = make_workspace(tmp_path / "ws", {**FILES, "crate/Cargo.toml": "[package\nname = 1\n"})
    with pytest.raises(UserError) as info:
        load_graph(root)
    assert info.value.where == "crate/Cargo.toml"
    assert info.value.message.startswith("not valid TOML: ")


def ran(root: Path) -> list[str]:
    return sorted(k for k, v in outcomes(root).items() if v == "run")


@pytest.mark.skipif(CARGO is None or GO is None,
                    reason=f"needs cargo and go on this machine (cargo: {CARGO or 'not found'}, "
                           f"go: {GO or 'not found'})")
def test_the_next_doit_build_notices_each_change(tmp_path):
    root = make_workspace(tmp_path / "ws", FILES)
    cache = tmp_path / "cache"

    def build() -> list[str]:
        result = run_doit(root, "build", cache=cache)
        assert result.returncode == 0, result.output
        return ran(root)

    assert build() == [CARGO_ACTION, GO_ACTION]
    assert build() == []

    (root / "crate/Cargo.toml").write_text(CRATE_TOML + '\n[profile.release]\npanic = "abort"\n')
    assert build() == [CARGO_ACTION]
    (root / "crate/src/extra.rs").write_text("pub fn f() {}\n")
    assert build() == [CARGO_ACTION]
    (root / "gomod/go.mod").write_text("module example.com/app\n\ngo 1.19\n\n// a comment\n")
    assert build() == [GO_ACTION]
    assert build() == []
