"""A musl program beside a glibc library in one occlum_bom: the error names the targets,
their toolchains and C libraries, and has no made-up BOM location."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from occlum_rules.stages.bom.elf_deps import read_elf
from occlum_rules.stages.bom.libc_mix import libc_of
from tests.support.workspace import REPO, make_workspace, run_doit

HELPER_C = "__thread int counter;\nint helper(void) { return ++counter; }\n"
BOM = "targets:\n  - target: /\n    mkdirs:\n      - bin\n      - lib\n"


def _need(tool: str) -> str:
    found = shutil.which(tool)
    assert found, f"{tool} is part of this project's test environment"
    return found


def test_libc_of_real_elves(tmp_path):
    _need("musl-gcc")
    src = tmp_path / "m.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["musl-gcc", "-o", str(tmp_path / "musl_app"), str(src)], check=True)
    (tmp_path / "h.c").write_text(HELPER_C)
    subprocess.run(["gcc", "-fPIC", "-shared", "-o", str(tmp_path / "libh.so"), str(tmp_path / "h.c")],
                   check=True)
    subprocess.run(["gcc", "-o", str(tmp_path / "glibc_app"), str(src)], check=True)
    assert libc_of(read_elf(str(tmp_path / "musl_app"))) == "musl"
    assert libc_of(read_elf(str(tmp_path / "libh.so"))) == "glibc"
    assert libc_of(read_elf(str(tmp_path / "glibc_app"))) == "glibc"


def _mixed_workspace(root: Path, with_cargo: bool) -> Path:
    """A musl program (musl-gcc) and glibc libraries: a gcc-built .so checked in as a file
    and, when cargo is here, a cdylib from host cargo (the case users hit)."""
    files = {
        "mix/app.c": (REPO / "examples/hello_c/hello.c").read_text(),
        "mix/image.yaml": BOM,
    }
    build = 'occlum_cc_binary(name = "app", srcs = ["app.c"], toolchain = ["musl-gcc"])\n'
    libs = '"libhelper.so"'
    if with_cargo:
        for rel in ("Cargo.toml", "Cargo.lock", "src/lib.rs"):
            files[f"mix/rust/{rel}"] = (REPO / "examples/enclave_lib/rust" / rel).read_text()
        build += 'cargo_cdylib(name = "enclave_lib", manifest = "rust/Cargo.toml")\n'
        libs += ', ":enclave_lib"'
    build += f'occlum_bom(name = "image", src = "image.yaml",\n' \
             f'           deps = {{"/bin": [":app"], "/lib": [{libs}]}})\n'
    files["mix/BUILD.py"] = build
    ws = make_workspace(root, files, "source_date_epoch: 0\nocclum:\n  home: /nonexistent\n")
    (ws / "mix/helper.c").write_text(HELPER_C)
    subprocess.run(["gcc", "-fPIC", "-shared", "-o", str(ws / "mix/libhelper.so"),
                    str(ws / "mix/helper.c")], check=True)
    return ws


def _has_cargo() -> bool:
    return shutil.which("cargo") is not None or Path("~/.cargo/bin/cargo").expanduser().exists()


def test_musl_app_beside_glibc_library_names_targets_and_toolchains(tmp_path):
    _need("musl-gcc")
    with_cargo = _has_cargo()
    ws = _mixed_workspace(tmp_path / "ws", with_cargo)
    result = run_doit(ws, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 1, result.output
    out = result.output
    assert "Traceback" not in out
    assert "<extra files>" not in out and ":0:" not in out
    line = next(ln for ln in out.splitlines() if "missing libraries" in ln)
    assert line.startswith("error: //mix:image: missing libraries: ")
    assert ("mix/libhelper.so (source file, glibc) is linked against glibc "
            "(libhelper.so needs ld-linux-x86-64.so.2) but the image's loader is musl") in line
    assert "the interpreter of //mix:app (musl-gcc, musl)" in line
    if with_cargo:
        assert "//mix:enclave_lib (cargo, host toolchain, glibc) is linked against glibc" in line


def test_one_libc_builds(tmp_path):
    """The same image with the program built for glibc too has nothing missing."""
    ws = _mixed_workspace(tmp_path / "ws", with_cargo=_has_cargo())
    build = ws / "mix/BUILD.py"
    build.write_text(build.read_text().replace('toolchain = ["musl-gcc"]', 'toolchain = ["gcc"]'))
    result = run_doit(ws, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
