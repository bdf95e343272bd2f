"""Glibc programs in a build without an Occlum install: the host's glibc stands in, named so.

copy_bom maps glibc programs onto Occlum's glibc (/opt/occlum/glibc/lib), which only an Occlum
install has. Without one the build takes the host's loader and libraries instead and puts them
where Occlum's would be in the image (copy-bom.md §9.3: the loader at the program's interpreter
path, libraries next to Occlum's loader, /opt/occlum/glibc/lib), says so once, and records it
in measurements.json and the release manifest. The result must not depend on a partial
/opt/occlum on the machine: the tests point the install discovery (WORKSPACE.yaml
``occlum.home`` / ``$OCCLUM_HOME``) at directories they make, never at the machine's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from occlum_rules.core.action_state import load_state_file, recorded_dynamic, state_path
from tests.rules.test_occlum_stages import fake_install
from tests.support.workspace import make_workspace, run_doit

HOST_LOADER = "/lib64/ld-linux-x86-64.so.2"
NOTE = "occlum-rules: glibc: host glibc as a stand-in for Occlum's glibc (no Occlum install)"
GLIBC_DIR = "opt/occlum/glibc/lib"

BUILD = """
occlum_cc_binary(name = "hello", srcs = ["hello.c"], toolchain = ["gcc"], linkopts = ["-lm"])

occlum_bom(name = "image", src = "image.yaml", deps = {"/bin": [":hello"]})

occlum_instance(
    name = "instance",
    bom = ":image",
    entry_points = ["/bin"],
    resource_limits = {"user_space_size": "256MB"},
)

occlum_package(name = "package", instance = ":instance", package_name = "app", debug = True)
"""

IMAGE_YAML = """
targets:
  - target: /usr/bin
    copy:
      - files: [/usr/bin/python3]
"""

HELLO = '#include <stdio.h>\n#include <math.h>\nint main(int c, char **v) { printf("%f\\n", cos(c)); return 0; }\n'


def _need_glibc_host() -> None:
    if not os.path.exists(HOST_LOADER) or shutil.which("gcc") is None or not os.path.exists("/usr/bin/python3"):
        pytest.skip(f"needs a glibc host with {HOST_LOADER}, gcc and /usr/bin/python3")


def _workspace(root: Path, occlum_home: Path | None, occlum_init: bool = True) -> Path:
    yaml = "source_date_epoch: 1704067200\n"
    if occlum_home is not None:
        yaml += f"occlum:\n  home: {occlum_home}\n"
    build = BUILD if occlum_init else BUILD.replace(
        'src = "image.yaml",', 'src = "image.yaml", occlum_init = False,')
    return make_workspace(root, {"BUILD.py": build, "image.yaml": IMAGE_YAML,
                                 "hello.c": HELLO}, yaml)


def _build(ws: Path, cache: Path, env: dict[str, str] | None = None):
    result = run_doit(ws, "build", cache=cache, env={"OCCLUM_HOME": "", **(env or {})})
    assert result.returncode == 0, result.output
    return result


def _host_deps(elf: Path) -> dict[str, str]:
    """NAME -> host path of each library, as the host's own loader lists them (the oracle)."""
    out = subprocess.run([HOST_LOADER, "--list", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    deps = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            deps[parts[0]] = parts[2]
    return deps


def _tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = ("-> " + os.readlink(p)) if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
    return out


def _dynamic_inputs(ws: Path) -> list[str]:
    env = SimpleNamespace(state_dir=str(ws / "out/.occlum-rules"))
    state = load_state_file(state_path(env, "//:image:image"))
    assert state is not None
    return [path for path, _digest in recorded_dynamic(state)]


def _manifest(ws: Path) -> dict:
    return json.loads((ws / "out/bin/package/app.manifest.json").read_text())


def _marked_copy(src: str, dst: Path) -> Path:
    """A copy of a host ELF with bytes appended: still a valid ELF, but different bytes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(Path(src).read_bytes() + b"\0not the host's copy\0")
    dst.chmod(0o755)
    return dst


@pytest.fixture(scope="module")
def no_install(tmp_path_factory):
    _need_glibc_host()
    base = tmp_path_factory.mktemp("glibc-standin")
    ws = _workspace(base / "ws", base / "no-occlum-here")
    result = _build(ws, base / "cache")
    return ws, result, base


def test_host_glibc_lands_where_occlums_would(no_install):
    ws, _result, _ = no_install
    image = ws / "out/bin/image/image"
    hello = ws / "out/bin/hello/hello"
    assert (image / "bin/hello").read_bytes() == hello.read_bytes()
    # the loader at the programs' interpreter path, as `occlum init` and copy_bom place it
    loader = image / "lib64/ld-linux-x86-64.so.2"
    assert loader.is_file() and not loader.is_symlink()
    assert loader.read_bytes() == Path(HOST_LOADER).read_bytes()
    # every library the host's loader lists, with the host's bytes, in Occlum's glibc dir
    expected = {**_host_deps(hello), **_host_deps(Path("/usr/bin/python3"))}
    assert "libc.so.6" in expected and "libm.so.6" in expected
    for name, host_path in expected.items():
        placed = image / GLIBC_DIR / name
        assert placed.is_file(), f"{name} ({host_path}) not at /{GLIBC_DIR}"
        assert placed.read_bytes() == Path(host_path).read_bytes(), name
    assert sorted(p.name for p in (image / GLIBC_DIR).iterdir()) == sorted(expected)


def test_the_stand_in_is_said_once_and_recorded(no_install):
    ws, result, _ = no_install
    assert result.output.count(NOTE) == 1, result.output
    measurements = json.loads((ws / "out/bin/instance/build/measurements.json").read_text())
    assert "stand-in" in measurements["glibc"] and "host" in measurements["glibc"]
    manifest = _manifest(ws)
    assert manifest["enclave"]["glibc"] == measurements["glibc"]
    assert manifest["enclave"]["occlum_version"] == "stand-in LibOS"


def test_host_glibc_files_are_inputs_by_content(no_install):
    ws, _, _ = no_install
    dynamic = _dynamic_inputs(ws)
    hello = ws / "out/bin/hello/hello"
    assert HOST_LOADER in dynamic
    absolute = [p for p in dynamic if p.startswith("/")]
    for host_path in _host_deps(hello).values():  # the same file, maybe by another name (merged /usr)
        assert any(os.path.samefile(host_path, p) for p in absolute), (host_path, dynamic)
    assert not [p for p in dynamic if p.startswith("/opt/occlum")], dynamic


def test_a_partial_occlum_dir_changes_nothing(no_install):
    """A directory with Occlum's loader config and a glibc/lib of its own but no install (like
    the copy_bom vectors' host setup) must give the very same image as no directory at all."""
    ws, _, base = no_install
    partial = base / "partial-occlum"
    _marked_copy(HOST_LOADER, partial / "glibc/lib/ld-linux-x86-64.so.2")
    libc = _host_deps(ws / "out/bin/hello/hello")["libc.so.6"]
    _marked_copy(libc, partial / "glibc/lib/libc.so.6")
    (partial / "etc/template").mkdir(parents=True)
    (partial / "etc/template/occlum_elf_loader.config").write_text(
        f"{partial}/glibc/lib/ld-linux-x86-64.so.2 {partial}/glibc/lib:/usr/lib/x86_64-linux-gnu:"
        "/lib/x86_64-linux-gnu:/lib64:/lib\n")
    other = _workspace(base / "ws-partial", None)
    result = _build(other, base / "cache-partial", env={"OCCLUM_HOME": str(partial)})
    assert result.output.count(NOTE) == 1
    assert _tree(other / "out/bin/image/image") == _tree(ws / "out/bin/image/image")
    assert not [p for p in _dynamic_inputs(other) if p.startswith(str(partial))]


def test_with_an_install_occlums_glibc_is_used(tmp_path):
    _need_glibc_host()
    home = fake_install(tmp_path / "occlum")
    glibc = home / "glibc/lib"
    loader = _marked_copy(HOST_LOADER, glibc / "ld-linux-x86-64.so.2")
    probe = tmp_path / "probe"
    subprocess.run(["gcc", "-o", str(probe), "-x", "c", "-", "-lm"], input=HELLO, text=True, check=True)
    libc = _marked_copy(_host_deps(probe)["libc.so.6"], glibc / "libc.so.6")
    (home / "etc/template").mkdir(parents=True)
    (home / "etc/template/occlum_elf_loader.config").write_text(
        f"{loader} {glibc}:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/lib64:/lib\n")
    # the BOM's own mapping only: this install's glibc/lib is partial (no libpthread, libm),
    # which `occlum init` would refuse, and occlum init would put it at /opt/occlum/glibc/lib
    refused = run_doit(_workspace(tmp_path / "ws-init", home), "build", cache=tmp_path / "cache",
                       env={"OCCLUM_HOME": ""})
    assert refused.returncode == 1 and "Traceback" not in refused.output
    assert "glibc/lib/libpthread.so.0" in refused.output and "occlum_init = False" in refused.output
    ws = _workspace(tmp_path / "ws", home, occlum_init=False)
    result = _build(ws, tmp_path / "cache")
    assert NOTE not in result.output
    image = ws / "out/bin/image/image"
    assert (image / "lib64/ld-linux-x86-64.so.2").read_bytes() == loader.read_bytes()
    # libraries go next to the install's loader (copy-bom.md §9.3); a real install sits at
    # /opt/occlum, this one at a temporary path
    assert (image / str(glibc).lstrip("/") / "libc.so.6").read_bytes() == libc.read_bytes()
    assert not (image / GLIBC_DIR / "libc.so.6").exists()
    measurements = json.loads((ws / "out/bin/instance/build/measurements.json").read_text())
    assert "stand-in" not in measurements["glibc"] and "Occlum 0.31.0" in measurements["glibc"]
    assert _manifest(ws)["enclave"]["glibc"] == measurements["glibc"]
