"""Static dependency discovery compared with what the real loaders print."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from occlum_rules.stages.bom.elf_deps import (
    DEFAULT_LOADER_CONFIG_TEXT,
    LoaderEmulator,
    find_dependencies,
    infer_default_loader,
    parse_loader_config,
    read_elf,
    read_ld_so_cache,
)

from .helpers import need_tool

HOST_LD = "/lib64/ld-linux-x86-64.so.2"
CONFIG = parse_loader_config(DEFAULT_LOADER_CONFIG_TEXT, None)
# Occlum's config with its loader replaced by the host's (no /opt/occlum needed)
HOST_CONFIG = parse_loader_config(
    f"{HOST_LD} /usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/lib64:/lib:/usr/local/lib\n", None)


def real_list(path: str, ld_library_path: str | None = None, loader: str = HOST_LD) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "")}
    if ld_library_path:
        env["LD_LIBRARY_PATH"] = ld_library_path
    out = subprocess.run([loader, "--list", path], capture_output=True, text=True, env=env)
    deps = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^\s*(\S+) => (\S+) ", line)
        if m and not m.group(1).startswith("/"):
            deps[m.group(1)] = m.group(2)
    return deps


def emulated(path: str, ld_library_path: str | None = None) -> dict[str, str]:
    info = read_elf(path)
    emu = LoaderEmulator("glibc", ld_library_path)
    found, missing = emu.list_deps(path, path, info, HOST_LD, info.interp)
    assert not missing
    return {r.name: r.path for r in found}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("gcc")
    d = tmp_path_factory.mktemp("elf")
    (d / "lib").mkdir()
    (d / "rp").mkdir()
    (d / "bin").mkdir()
    (d / "bar.c").write_text("int bar(void){return 2;}\n")
    (d / "foo.c").write_text("int bar(void); int foo(void){return bar()+1;}\n")
    (d / "app.c").write_text("int foo(void); int main(void){return foo()==3?0:1;}\n")
    cc = ["gcc", "-O0", "-fPIC"]

    def run(*args: str) -> None:
        subprocess.run([*args], check=True, cwd=d)

    (d / "lib2").mkdir()
    run(*cc, "-shared", "-o", "rp/libbar.so", "bar.c", "-Wl,-soname,libbar.so")
    run(*cc, "-shared", "-o", "lib/libfoo.so", "foo.c", "-Lrp", "-lbar", "-Wl,-soname,libfoo.so")
    run(*cc, "-shared", "-o", "lib2/libfoo.so", "foo.c", "-Lrp", "-lbar", "-Wl,-soname,libfoo.so",
        "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../rp")
    link = [*cc, "-Wl,--no-as-needed", "app.c"]
    # RUNPATH with $ORIGIN (new dtags); libfoo finds libbar through its own RUNPATH
    run(*link, "-o", "bin/app_runpath", "-Llib2", "-lfoo", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib2")
    # RUNPATH is not inherited: libfoo (no RUNPATH of its own) cannot find libbar
    run(*link, "-o", "bin/app_runpath_noinherit", "-Llib", "-lfoo", "-Lrp",
        "-Wl,--allow-shlib-undefined,--enable-new-dtags,-rpath,$ORIGIN/../lib")
    # RPATH (old dtags) IS inherited: libfoo finds libbar through the app's RPATH
    run(*link, "-o", "bin/app_rpath", "-Llib", "-lfoo", "-Wl,--allow-shlib-undefined",
        "-Wl,--disable-new-dtags,-rpath," + str(d / "lib") + ":" + str(d / "rp"))
    run(*link, "-o", "bin/app_missing", "-Llib", "-lfoo", "-Lrp", "-lbar")
    return d


def test_runpath_origin_matches_ld_so(built: Path) -> None:
    app = str(built / "bin" / "app_runpath")
    ours = emulated(app)
    assert ours == real_list(app)
    assert ours["libfoo.so"] == str(built / "bin") + "/../lib2/libfoo.so"
    assert ours["libbar.so"] == str(built / "bin") + "/../lib2/../rp/libbar.so"


def test_runpath_is_not_inherited(built: Path) -> None:
    app = str(built / "bin" / "app_runpath_noinherit")
    real = subprocess.run([HOST_LD, "--list", app], capture_output=True, text=True)
    assert real.returncode != 0 and "libbar.so" in real.stderr
    res = find_dependencies(app, HOST_CONFIG)
    assert [m.name for m in res.missing] == ["libbar.so"]


def test_rpath_is_inherited_like_ld_so(built: Path) -> None:
    app = str(built / "bin" / "app_rpath")
    ours = emulated(app)
    assert ours == real_list(app)
    assert ours["libbar.so"] == str(built / "rp" / "libbar.so")


def test_ld_library_path_order_matches_ld_so(built: Path) -> None:
    app = str(built / "bin" / "app_missing")
    lp = f"{built / 'lib'}:{built / 'rp'}:/usr/lib/x86_64-linux-gnu"
    assert emulated(app, lp) == real_list(app, lp)


def test_missing_library_is_reported_with_who_needs_it(built: Path) -> None:
    res = find_dependencies(str(built / "bin" / "app_missing"), HOST_CONFIG)
    assert [(m.name, m.needed_by) for m in res.missing] == [
        ("libfoo.so", str(built / "bin" / "app_missing")),
        ("libbar.so", str(built / "bin" / "app_missing"))]  # all of them, not just the first
    assert res.loader == (HOST_LD, HOST_LD)
    assert any(d.dest.endswith("/libc.so.6") for d in res.deps)  # the rest is still found


@pytest.mark.parametrize("binary", ["/usr/bin/ls", "/usr/bin/ssh", "/usr/bin/python3.11",
                                    "/usr/bin/redis-server", "/usr/bin/gcc"])
def test_host_binaries_match_ld_so(binary: str) -> None:
    if not os.path.exists(binary):
        pytest.skip(f"{binary} not installed")
    assert emulated(binary) == real_list(binary)
    lp = "/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/lib64:/lib"
    assert emulated(binary, lp) == real_list(binary, lp)


def test_glibc_libraries_redirect_next_to_occlum_loader() -> None:
    res = find_dependencies("/usr/bin/ls", CONFIG)
    assert res.loader == ("/opt/occlum/glibc/lib/ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2")
    dests = {d.dest: d.src for d in res.deps}
    assert dests["/opt/occlum/glibc/lib/libc.so.6"] == "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert "/opt/occlum/glibc/lib/libselinux.so.1" in dests


def test_library_outside_config_dirs_keeps_its_path(built: Path) -> None:
    res = find_dependencies(str(built / "bin" / "app_rpath"), CONFIG)
    dests = {d.dest for d in res.deps}
    assert str(built / "lib" / "libfoo.so") in dests  # not a configured lib dir: same path in image


def test_default_loader_inferred_for_libraries(built: Path) -> None:
    lib = str(built / "lib" / "libfoo.so")
    assert read_elf(lib).interp is None
    assert find_dependencies(lib, HOST_CONFIG).loader is None
    default = infer_default_loader([lib, "/usr/bin/ls"], HOST_CONFIG)
    assert default == (HOST_LD, HOST_LD)
    res = find_dependencies(lib, HOST_CONFIG, default)
    assert res.loader == default and res.missing[0].name == "libbar.so"
    assert infer_default_loader([lib], HOST_CONFIG) is None


def test_musl_binary_uses_musl_rules(tmp_path: Path) -> None:
    musl_gcc = need_tool("musl-gcc")
    (tmp_path / "h.c").write_text("int main(void){return 0;}\n")
    subprocess.run([musl_gcc, "-o", str(tmp_path / "h"), str(tmp_path / "h.c")], check=True)
    res = find_dependencies(str(tmp_path / "h"), CONFIG)
    assert res.loader == ("/lib/ld-musl-x86_64.so.1", "/lib/ld-musl-x86_64.so.1")
    assert res.deps == [] and res.missing == []


def test_ld_so_cache_is_read() -> None:
    if not os.path.exists("/etc/ld.so.cache"):
        pytest.skip("no ld.so.cache")
    cache = read_ld_so_cache()
    assert cache["libc.so.6"].endswith("/libc.so.6")


def test_non_elf_and_relocatable_files_have_no_deps(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("hello\n")
    assert find_dependencies(str(tmp_path / "t.txt"), CONFIG).loader is None
    need_tool("gcc")
    (tmp_path / "o.c").write_text("int x;\n")
    subprocess.run(["gcc", "-c", "-o", str(tmp_path / "o.o"), str(tmp_path / "o.c")], check=True)
    assert find_dependencies(str(tmp_path / "o.o"), CONFIG).loader is None


def test_elf_header_cache_survives_the_process_and_misses_on_change(tmp_path, monkeypatch):
    """What read_elf found is saved keyed by stat stamp; a new process reads it back instead
    of opening the file, and a rewritten file is parsed again."""
    import builtins

    from occlum_rules.stages.bom import elf_deps

    need_tool("cc")
    exe, text = tmp_path / "app", tmp_path / "notes.txt"
    subprocess.run(["cc", "-x", "c", "-", "-o", str(exe)], input="int main(void){return 0;}\n",
                   text=True, check=True)
    text.write_text("not an ELF\n")
    first = read_elf(str(exe))
    assert first is not None and read_elf(str(text)) is None
    cache = tmp_path / "elf.marshal"
    elf_deps.save_elf_cache(cache)
    monkeypatch.setattr(elf_deps, "_ELF_CACHE", {})  # a fresh process
    elf_deps.load_elf_cache(cache)
    opened: list[str] = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    assert read_elf(str(exe)) == first and read_elf(str(text)) is None
    assert opened == []
    exe.write_bytes(b"\x7fELF but truncated")
    assert read_elf(str(exe)) is None and opened == [str(exe)]
    (tmp_path / "garbage.marshal").write_bytes(b"\x00not marshal")
    elf_deps.load_elf_cache(tmp_path / "garbage.marshal")  # ignored, no error


def test_host_glibc_config_drops_occlum_dirs_and_keeps_the_image_dir() -> None:
    from occlum_rules.stages.bom.elf_deps import host_glibc_config

    cfg = host_glibc_config("/x/ld-linux-x86-64.so.2", base=CONFIG, occlum_prefix="/opt/occlum")
    glibc = cfg.by_name("/lib64/ld-linux-x86-64.so.2")
    assert glibc is not None and glibc.loader == "/x/ld-linux-x86-64.so.2"
    # Occlum's glibc line minus everything under /opt/occlum (copy-bom.md §9.1)
    assert glibc.lib_dirs == ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/lib64",
                              "/lib", "/usr/local/lib")
    assert glibc.image_lib_dir == "/opt/occlum/glibc/lib"
    musl = cfg.by_name("/lib/ld-musl-x86_64.so.1")
    assert musl is not None and musl.lib_dirs == () and musl.image_lib_dir is None
    assert cfg.path is None


def test_host_glibc_stands_in_at_occlums_image_paths(tmp_path: Path) -> None:
    """The injected host loader is copied to the interpreter path; libraries the host's own
    loader lists go to /opt/occlum/glibc/lib with the host's path as their source."""
    from occlum_rules.stages.bom.elf_deps import host_glibc_config

    if not os.path.exists(HOST_LD):
        pytest.skip(f"no glibc loader at {HOST_LD}")
    loader = tmp_path / "host-root/ld-linux-x86-64.so.2"
    loader.parent.mkdir()
    loader.write_bytes(Path(HOST_LD).read_bytes())
    res = find_dependencies("/usr/bin/python3", host_glibc_config(str(loader)))
    assert res.loader == (str(loader), "/lib64/ld-linux-x86-64.so.2")
    listed = real_list("/usr/bin/python3")
    assert listed and {d.dest for d in res.deps} == {f"/opt/occlum/glibc/lib/{n}" for n in listed}
    for d in res.deps:
        assert os.path.samefile(d.src, listed[d.dest.rsplit("/", 1)[1]])
