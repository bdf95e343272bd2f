"""Rust and Go rules end to end, through `doit build` on copies of the examples.

Cargo and go builds are slow, so one module-scoped build of the examples (in two checkout
paths) feeds every assertion that only reads it; the tests that change things work on
their own small workspaces or on the second checkout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from occlum_rules.stages.elfcheck import pie_kind
from tests.support.workspace import REPO, copy_examples, make_workspace, outcomes, report, run_doit

EXAMPLES = ["hello_rust", "hello_go", "enclave_lib"]
RUST_BIN = "out/bin/examples/hello_rust/hello_rust/hello_rust"
GO_BIN = "out/bin/examples/hello_go/hello_go/hello_go"
CDYLIB = "out/bin/examples/enclave_lib/enclave_lib/libenclave_lib.so"
LOADER = "out/bin/examples/enclave_lib/loader/loader"
CARGO_ACTIONS = ["//examples/enclave_lib:enclave_lib:cargo-build",
                 "//examples/hello_rust:hello_rust:cargo-build"]
GO_ACTIONS = ["//examples/hello_go:hello_go:go-build"]


def _which(name: str, *extra: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in extra:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


CARGO = _which("cargo", os.path.expanduser("~/.cargo/bin/cargo"))
GO = _which("go", "/usr/local/go/bin/go", "/usr/lib/go/bin/go")
needs_tools = pytest.mark.skipif(
    CARGO is None or GO is None,
    reason=f"needs cargo and go on this machine (cargo: {CARGO or 'not found'}, "
           f"go: {GO or 'not found'}); CI installs golang-go, Rust comes from rustup")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(root: Path, cache: Path, *options: str):
    result = run_doit(root, *options, "build", cache=cache)
    assert result.returncode == 0, result.output
    return result


def ran(root: Path) -> list[str]:
    return sorted(k for k, v in outcomes(root).items() if v == "run")


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory):
    """The examples built from two checkout paths, each with its own action cache (so both
    really compile). The second reuses the first's go build cache only to save time: that
    cache is content-addressed and path-independent, as CI's restored caches are."""
    if CARGO is None or GO is None:
        pytest.skip(f"needs cargo and go (cargo: {CARGO}, go: {GO})")
    base = tmp_path_factory.mktemp("rules")
    a = copy_examples(base / "a" / "checkout", EXAMPLES)
    b = copy_examples(base / "somewhere" / "else" / "checkout", EXAMPLES)
    first = build(a, base / "cache-a")
    first_report = report(a)
    # the go build cache: one per go toolchain, shared by the go actions (same name in b)
    shared = a / "out/.occlum-rules/state/shared"
    assert [d.name.startswith("go.build-") for d in shared.iterdir()] == [True]
    shutil.copytree(shared, b / "out/.occlum-rules/state/shared")
    build(b, base / "cache-b")
    second_report = report(b)
    files = [RUST_BIN, GO_BIN, CDYLIB, LOADER]
    return {"a": a, "b": b, "base": base, "first": first, "first_report": first_report,
            "second_report": second_report,
            "digests": {n: (digest(a / f), digest(b / f)) for n, f in zip("rgcl", files)}}


@needs_tools
def test_examples_build_and_every_binary_is_pie(checkouts):
    a = checkouts["a"]
    rep = checkouts["first_report"]
    assert rep["actions_run"] == 5 and not rep["failed"], rep
    assert pie_kind(a / RUST_BIN) == "pie"
    assert pie_kind(a / GO_BIN) == "pie"
    assert pie_kind(a / LOADER) == "pie"
    assert pie_kind(a / CDYLIB) == "shared"
    assert subprocess.run([a / RUST_BIN, "tests"], capture_output=True, text=True,
                          check=True).stdout == "Hello, tests, from Rust!\n"
    go_out = subprocess.run([a / GO_BIN], capture_output=True, text=True, check=True).stdout
    assert go_out.startswith("Hello, Occlum, from Go go1.")
    # the C program really loads the Rust library and calls into it
    out = subprocess.run([a / LOADER, a / CDYLIB], capture_output=True, text=True, check=True)
    assert out.stdout == "enclave_lib 0.1.0: 2 + 40 = 42\n"
    # the sources were left alone: no target/ or Cargo.lock written into the checkout
    assert not (a / "examples/hello_rust/target").exists()
    assert not (a / "examples/enclave_lib/rust/target").exists()


@needs_tools
def test_two_checkout_paths_give_identical_rust_and_go_binaries(checkouts):
    assert checkouts["second_report"]["actions_run"] == 5  # built, not restored
    for name, (one, two) in checkouts["digests"].items():
        assert one == two, f"{name} differs between checkouts"
    a, b = checkouts["a"], checkouts["b"]
    for path in (RUST_BIN, GO_BIN, CDYLIB):
        data = (b / path).read_bytes()
        assert str(b).encode() not in data and str(a).encode() not in data
        assert os.path.expanduser("~/.cargo").encode() not in data


@needs_tools
def test_null_build_runs_nothing(checkouts):
    a = checkouts["a"]
    build(a, checkouts["base"] / "cache-a")
    rep = report(a)
    assert (rep["actions_run"], rep["up_to_date"]) == (0, 5), rep


@needs_tools
def test_toolchain_fingerprint_change_reruns_exactly_its_users(checkouts, tmp_path):
    """Point WORKSPACE.yaml at wrapper scripts elsewhere: a new fingerprint re-runs only the
    actions that use that tool (and the results stay byte-identical)."""
    b = checkouts["b"]
    cache = checkouts["base"] / "cache-b"
    wrappers = tmp_path / "other-toolchains"
    wrappers.mkdir()
    for name, real in (("go", GO), ("cargo", CARGO)):
        (wrappers / name).write_text(f'#!/bin/sh\nexec "{real}" "$@"\n')
        (wrappers / name).chmod(0o755)
    ws_yaml = (b / "WORKSPACE.yaml").read_text()
    (b / "WORKSPACE.yaml").write_text(ws_yaml + f"  go: [{wrappers / 'go'}]\n")
    build(b, cache)
    assert ran(b) == GO_ACTIONS
    assert digest(b / GO_BIN) == checkouts["digests"]["g"][0]

    (b / "WORKSPACE.yaml").write_text(
        ws_yaml + f"  go: [{wrappers / 'go'}]\n  cargo: [{wrappers / 'cargo'}]\n")
    build(b, cache)
    assert ran(b) == CARGO_ACTIONS
    assert digest(b / RUST_BIN) == checkouts["digests"]["r"][0]
    assert digest(b / CDYLIB) == checkouts["digests"]["c"][0]

    build(b, cache)
    assert ran(b) == []


@needs_tools
def test_editing_a_rust_source_rebuilds_only_that_crate(checkouts):
    b = checkouts["b"]
    main = b / "examples/hello_rust/src/main.rs"
    main.write_text(main.read_text().replace("Hello", "Howdy"))
    build(b, checkouts["base"] / "cache-b")
    assert ran(b) == ["//examples/hello_rust:hello_rust:cargo-build"]
    out = subprocess.run([b / RUST_BIN], capture_output=True, text=True, check=True).stdout
    assert out == "Howdy, Occlum, from Rust!\n"
    # a new file in the crate is an input without anyone listing it
    (b / "examples/hello_rust/src/extra.rs").write_text("// not used yet\n")
    build(b, checkouts["base"] / "cache-b")
    assert ran(b) == ["//examples/hello_rust:hello_rust:cargo-build"]


@needs_tools
def test_go_binary_from_listed_files_with_ldflags_and_tags(checkouts):
    """No go.mod: the listed files of one directory, with extra -ldflags and build tags."""
    b = checkouts["b"]
    (b / "gofiles").mkdir()
    (b / "gofiles/main.go").write_text(
        'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(greet()) }\n')
    (b / "gofiles/greet.go").write_text(
        '//go:build special\n\npackage main\n\nfunc greet() string { return "special" }\n')
    (b / "gofiles/BUILD.py").write_text(
        'go_binary(name = "files", srcs = ["main.go", "greet.go"], ldflags = ["-s", "-w"],\n'
        '          tags = ["special"])\n')
    build(b, checkouts["base"] / "cache-b")
    assert ran(b) == ["//gofiles:files:go-build"]
    binary = b / "out/bin/gofiles/files/files"
    assert pie_kind(binary) == "pie"
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "special\n"


# ---------------------------------------------------------------------------- bad input

CRATE = {
    "Cargo.toml": '[package]\nname = "demo"\nversion = "0.1.0"\nedition = "2021"\n',
    "src/main.rs": 'fn main() { println!("demo"); }\n',
}


def crate_ws(root: Path, build_py: str, files: dict[str, str] | None = None,
             yaml: str = "source_date_epoch: 0\n") -> Path:
    tree = {f"crate/{k}": v for k, v in {**CRATE, **(files or {})}.items()}
    tree["crate/BUILD.py"] = build_py
    return make_workspace(root, tree, yaml)


def failing(root: Path, tmp_path: Path, *args: str) -> str:
    result = run_doit(root, *(args or ("build",)), cache=tmp_path / "cache")
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output, result.output
    return result.output


@pytest.mark.skipif(CARGO is None, reason="cargo is not installed on this machine")
def test_cargo_toml_without_the_named_bin(tmp_path):
    root = crate_ws(tmp_path / "ws", 'cargo_binary(name = "app", bin = "nope")\n')
    out = failing(root, tmp_path)
    assert "error: //crate:app: crate/Cargo.toml has no bin named 'nope' (its bins: demo)" in out


@pytest.mark.skipif(CARGO is None, reason="cargo is not installed on this machine")
def test_cargo_compile_error_shows_rustcs_message(tmp_path):
    root = crate_ws(tmp_path / "ws", 'cargo_binary(name = "demo")\n',
                    {"src/main.rs": 'fn main() { let x: u32 = "text"; }\n'})
    out = failing(root, tmp_path)
    assert "//crate:demo: cargo build failed" in out
    assert "mismatched types" in out and "src/main.rs" in out
    assert "Compiling demo" not in out  # progress noise trimmed
    assert not (root / "crate/Cargo.lock").exists()  # cargo never writes into the sources
    assert not (root / "crate/target").exists()


@pytest.mark.skipif(CARGO is None, reason="cargo is not installed on this machine")
def test_non_pie_rust_binary_is_refused(tmp_path):
    config = '[build]\nrustflags = ["-C", "relocation-model=static"]\n'
    root = crate_ws(tmp_path / "ws", 'cargo_binary(name = "demo")\n',
                    {".cargo/config.toml": config})
    out = failing(root, tmp_path)
    assert "//crate:demo: cargo built a not-pie executable, but Occlum runs only " \
           "position-independent executables" in out


@pytest.mark.skipif(CARGO is None, reason="cargo is not installed on this machine")
def test_cdylib_rule_on_a_crate_without_a_cdylib(tmp_path):
    root = crate_ws(tmp_path / "ws", 'cargo_cdylib(name = "lib")\n',
                    {"src/lib.rs": "pub fn f() {}\n"})
    out = failing(root, tmp_path)
    assert "crate/Cargo.toml builds no cdylib" in out


def test_missing_compiler_names_the_chain(tmp_path):
    yaml = ("source_date_epoch: 0\ntoolchains:\n  go: [no-such-go-1, no-such-go-2]\n"
            "  cargo: [no-such-cargo]\n")
    root = crate_ws(tmp_path / "ws", 'cargo_binary(name = "demo")\n', yaml=yaml)
    (root / "gocmd").mkdir()
    (root / "gocmd/BUILD.py").write_text('go_binary(name = "g", srcs = ["main.go"])\n')
    (root / "gocmd/main.go").write_text("package main\n\nfunc main() {}\n")
    out = failing(root, tmp_path, "//crate:demo")
    assert "error: //crate:demo: no cargo toolchain found: tried no-such-cargo" in out
    out = failing(root, tmp_path, "//gocmd:g")
    assert "error: //gocmd:g: no go toolchain found: tried no-such-go-1, no-such-go-2" in out


@pytest.mark.skipif(GO is None, reason="go is not installed on this machine")
def test_go_compile_error_shows_gos_message(tmp_path):
    root = make_workspace(tmp_path / "ws", {
        "g/BUILD.py": 'go_binary(name = "g")\n',
        "g/go.mod": "module example.com/g\n\ngo 1.19\n",
        "g/main.go": "package main\n\nfunc main() { nope() }\n",
    })
    out = failing(root, tmp_path)
    assert "//g:g: go build failed" in out and "undefined: nope" in out


def test_go_rule_attribute_errors(tmp_path):
    root = make_workspace(tmp_path / "ws", {
        "g/BUILD.py": 'go_binary(name = "g", pkg = "cmd")\n',
        "g/cmd/main.go": "package main\n\nfunc main() {}\n",
    })
    out = failing(root, tmp_path)
    assert "g/BUILD.py:1: pkg: no go.mod in g/cmd or above it" in out
    (root / "g/BUILD.py").write_text('go_binary(name = "g", srcs = ["x.go"], pkg = ".")\n')
    (root / "g/x.go").write_text("package main\n")
    assert "go_binary takes srcs or pkg, not both" in failing(root, tmp_path)


def test_examples_declare_the_rules(tmp_path):
    """The examples' BUILD files use the new rules (guards against an example going stale)."""
    assert "cargo_binary(" in (REPO / "examples/hello_rust/BUILD.py").read_text()
    assert "go_binary(" in (REPO / "examples/hello_go/BUILD.py").read_text()
    text = (REPO / "examples/enclave_lib/BUILD.py").read_text()
    assert "cargo_cdylib(" in text and "occlum_cc_binary(" in text
