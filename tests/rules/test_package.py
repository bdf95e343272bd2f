"""occlum_package end to end: reproducible across checkouts, times and umasks; verify; refusals."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from occlum_rules.stages.package import first_difference, select_members
from occlum_rules.stages.package_stream import write_package
from tests.support.tar import extract_all
from tests.support.workspace import copy_examples, outcomes, run_cli, run_doit

PKG_DIR = "out/bin/examples/hello_c/package"
PACKAGE = f"{PKG_DIR}/hello_c.tar.gz"
MANIFEST = f"{PKG_DIR}/hello_c.manifest.json"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def doit_with_umask(root: Path, cache: Path, umask: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OCCLUM_RULES_CACHE=str(cache))
    env.pop("OCCLUM_RULES_RUN_ID", None)
    env.pop("OCCLUM_RULES_REMOTE_CACHE", None)
    script = f"umask {umask} && exec \"$0\" -m doit \"$@\""
    return subprocess.run(["sh", "-c", script, sys.executable, *(args or ("build",))], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)


def age_sources(root: Path, when: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, (when, when), follow_symlinks=False)


@pytest.fixture(scope="module")
def two_checkouts(tmp_path_factory):
    """Checkout a: umask 022, old sources. b: another path, newer sources. c: b's path
    shape again with umask 077. Each with its own cache, so every action really runs."""
    base = tmp_path_factory.mktemp("package")
    a = copy_examples(base / "a", ["hello_c"])
    b = copy_examples(base / "another" / "checkout" / "path" / "b", ["hello_c"])
    c = copy_examples(base / "third" / "c", ["hello_c"])
    age_sources(a, 1_000_000_000)
    age_sources(b, 1_700_000_000)
    age_sources(c, 1_300_000_000)
    for root, umask in ((a, "022"), (b, "022"), (c, "077")):
        built = doit_with_umask(root, base / f"cache-{root.name}", umask)
        assert built.returncode == 0, built.stdout + built.stderr
    return a, b, base, c


def test_two_checkouts_at_different_times_give_identical_packages(two_checkouts):
    a, b, _, _ = two_checkouts
    assert outcomes(b)["//examples/hello_c:package:package"] == "run"  # really built twice
    for rel in (PACKAGE, MANIFEST, f"{PKG_DIR}/SHA256SUMS"):
        assert sha(a / rel) == sha(b / rel), rel
    assert str(a) not in (a / MANIFEST).read_text()
    subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=a / PKG_DIR, check=True,
                   capture_output=True)


def test_umask_077_gives_identical_packages(two_checkouts):
    a, _, _, c = two_checkouts
    assert outcomes(c)["//examples/hello_c:package:package"] == "run"
    assert first_difference(a / PACKAGE, c / PACKAGE) is None
    for rel in (PACKAGE, MANIFEST, f"{PKG_DIR}/SHA256SUMS"):
        assert sha(a / rel) == sha(c / rel), rel


def test_listings_show_fixed_metadata_and_the_occlum_layout(two_checkouts):
    a, _, _, _ = two_checkouts
    pkg = a / PACKAGE
    env = dict(os.environ, TZ="UTC")
    gz = subprocess.run(["gzip", "-lv", str(pkg)], capture_output=True, text=True, check=True,
                        env=env).stdout
    assert "hello_c.tar" in gz
    # gzip mtime 0 ("no time stored": gzip -lv then shows the file's own mtime) and no FNAME
    assert pkg.read_bytes()[3:8] == b"\0\0\0\0\0"
    tv = subprocess.run(["tar", "-tvzf", str(pkg)], capture_output=True, text=True, check=True,
                        env=env).stdout.splitlines()
    assert tv and all(" 0/0 " in line and " 2024-01-01 00:00 " in line for line in tv)
    listed = subprocess.run([sys.executable, "-m", "tarfile", "-l", str(pkg)], capture_output=True,
                            text=True, check=True).stdout.split()
    for must in ["hello_c/Occlum.json", "hello_c/build/bin/", "hello_c/build/bin/occlum-run",
                 "hello_c/build/lib/libocclum-libos.signed.so", "hello_c/build/lib/libocclum-pal.so",
                 "hello_c/build/lib/libocclum-pal.so.0", "hello_c/build/lib/libocclum-pal.so.0.31.0",
                 "hello_c/build/initfs/__ROOT/metadata", "hello_c/build/mount/.ROOT_MAC",
                 "hello_c/build/.Occlum_sys.json.protected", "hello_c/initfs/bin/init",
                 "hello_c/run/mount/__ROOT/", "hello_c/run/initfs/__ROOT/",
                 "hello_c/.__occlum_status", "hello_c/.sgx_mode"]:
        assert must in listed, must
    assert not any("Enclave.xml" in n or n.startswith("hello_c/image") for n in listed)


def test_manifest_carries_identity_and_bom(two_checkouts):
    import json

    a, _, _, _ = two_checkouts
    manifest = json.loads((a / MANIFEST).read_text())
    measurements = json.loads((a / "out/bin/examples/hello_c/instance/build/measurements.json")
                              .read_text())
    enclave = manifest["enclave"]
    for key in ("mrenclave", "mrsigner", "isv_prod_id", "isv_svn", "debuggable", "sgx_mode",
                "root_fs_mac", "init_fs_mac", "config_mac"):
        assert enclave[key] == measurements[key], key
    assert enclave["occlum_version"] == "stand-in LibOS"
    assert manifest["package"]["sha256"] == sha(a / PACKAGE)
    assert manifest["package"]["size"] == (a / PACKAGE).stat().st_size
    hello = next(e for e in manifest["image_bom"] if e["path"] == "/bin/hello")
    assert hello["needed"] and hello["sha256"] == sha(
        a / "out/bin/examples/hello_c/image/image/bin/hello")


def test_run_data_is_never_packaged(two_checkouts, tmp_path):
    a, _, base, _ = two_checkouts
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    assert run_doit(ws, "build", cache=base / "cache-a").returncode == 0
    data = ws / "out/bin/examples/hello_c/instance/run/mount/__ROOT"
    data.mkdir(parents=True, exist_ok=True)  # the layout action makes it when it runs
    (data / "app-data").write_text("secret")
    result = run_doit(ws, "forget", "//examples/hello_c:package", cache=base / "cache-a")
    assert result.returncode == 0, result.output
    result = run_cli("verify", str(ws / PACKAGE))
    assert result.returncode == 0, result.output
    with tarfile.open(ws / PACKAGE) as tar:
        assert not any("app-data" in n for n in tar.getnames())
    assert sha(ws / PACKAGE) == sha(a / PACKAGE)


def test_verify_passes_then_names_the_changed_file(two_checkouts, tmp_path):
    a, _, _, _ = two_checkouts
    ok = run_cli("verify", str(a / PACKAGE))
    assert ok.returncode == 0, ok.output
    info = __import__("json").loads((a / MANIFEST).read_text())["enclave"]
    assert f"MRENCLAVE: {info['mrenclave']}" in ok.stdout
    assert f"MRSIGNER:  {info['mrsigner']}" in ok.stdout

    # change one byte inside one file of the package, repack it the same way
    unpacked = tmp_path / "x"
    extract_all(a / PACKAGE, unpacked)
    hosts = unpacked / "hello_c/initfs/etc/hosts"
    data = bytearray(hosts.read_bytes())
    data[0] ^= 1
    hosts.write_bytes(bytes(data))
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    shutil.copy(a / MANIFEST, bad_dir)
    write_package(select_members(unpacked / "hello_c", "HW"), "hello_c",
                  bad_dir / "hello_c.tar.gz", mtime=1704067200)
    bad = run_cli("verify", str(bad_dir / "hello_c.tar.gz"))
    assert bad.returncode == 1, bad.output
    assert "hello_c/initfs/etc/hosts: content differs" in bad.stderr
    assert "Traceback" not in bad.output

    # a flipped byte of the compressed file fails too
    raw = bytearray((a / PACKAGE).read_bytes())
    raw[len(raw) // 3] ^= 0x40
    (bad_dir / "hello_c.tar.gz").write_bytes(bytes(raw))
    flipped = run_cli("verify", str(bad_dir / "hello_c.tar.gz"), "--manifest",
                      str(a / MANIFEST))
    assert flipped.returncode == 1 and "FAILED" in flipped.stderr, flipped.output


def test_verify_rebuild_and_instance(two_checkouts):
    a, _, _, _ = two_checkouts
    rebuilt = run_cli("verify", "--rebuild", str(a / PACKAGE), "--workspace", str(a))
    assert rebuilt.returncode == 0, rebuilt.output
    assert "byte-identical" in rebuilt.stdout
    inst = run_cli("verify", str(a / "out/bin/examples/hello_c/instance"))
    assert inst.returncode == 0, inst.output
    assert ".builtin_config holds the protected config's MAC" in inst.stdout


def _set_build(root: Path, package_args: str, instance_args: str = "") -> None:
    build = root / "examples/hello_c/BUILD.py"
    original = root / "examples/hello_c/BUILD.py.orig"
    if not original.exists():
        shutil.copy(build, original)
    text = original.read_text()
    head = text.split("occlum_package(")[0]
    head = head.replace('resource_limits = {"user_space_size": "256MB"},',
                        f'resource_limits = {{"user_space_size": "256MB"}},{instance_args}')
    build.write_text(head + "occlum_package(\n    name = \"package\",\n    instance = \":instance\","
                     f"\n    package_name = \"hello_c\",{package_args}\n)\n")


def test_debuggable_and_sim_instances_are_refused(tmp_path, two_checkouts):
    _, _, base, _ = two_checkouts
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    _set_build(ws, "")
    refused = run_doit(ws, "build", cache=base / "cache-a")
    assert refused.returncode != 0
    assert "refusing to package a debuggable enclave" in refused.output
    assert "debug = True" in refused.output
    assert not (ws / PACKAGE).exists()

    _set_build(ws, "", '\n    metadata = {"debuggable": False},')
    release = run_doit(ws, "build", cache=base / "cache-a")
    assert release.returncode == 0, release.output
    assert '"debuggable": false' in (ws / MANIFEST).read_text()
    assert run_cli("verify", str(ws / PACKAGE)).returncode == 0

    _set_build(ws, "", '\n    metadata = {"debuggable": False},\n    sgx_mode = "SIM",')
    sim = run_doit(ws, "build", cache=base / "cache-a")
    assert sim.returncode != 0
    assert "simulation-mode (SIM)" in sim.output

    _set_build(ws, "\n    debug = True,", '\n    sgx_mode = "SIM",')
    allowed = run_doit(ws, "build", cache=base / "cache-a")
    assert allowed.returncode == 0, allowed.output
    with tarfile.open(ws / PACKAGE) as tar:
        names = tar.getnames()
    assert "hello_c/build/lib/libocclum-pal_sim.so.0.31.0" in names
    assert "hello_c/build/lib/libocclum-pal.so.0" in names


def test_instance_must_be_an_occlum_instance(tmp_path):
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    with open(ws / "examples/hello_c/BUILD.py", "a") as f:
        f.write('\nocclum_package(name = "wrong", instance = ":image")\n')
    result = run_doit(ws, "list", cache=tmp_path / "cache")
    assert result.returncode != 0
    assert "is not an occlum_instance target" in result.output
    assert "BUILD.py:" in result.output and "Traceback" not in result.output


def test_verify_rebuild_names_the_first_differing_file(two_checkouts, tmp_path):
    _, _, base, _ = two_checkouts
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    assert run_doit(ws, "build", cache=base / "cache-a").returncode == 0
    hello = ws / "examples/hello_c/hello.c"
    hello.write_text(hello.read_text().replace("Hello", "Goodbye"))  # sources moved on
    result = run_cli("verify", "--rebuild", "//examples/hello_c:package", "--workspace", str(ws))
    assert result.returncode == 1, result.output
    assert "DIFFERENT" in result.stderr
    assert "first differing file: hello_c/build/.Occlum_sys.json.protected" in result.stderr


def test_incremental_package_reuses_segments_and_equals_a_clean_build(tmp_path):
    """Change the app: the package stage copies the unchanged deflate segments from the
    previous package, and the result is the bytes a clean checkout builds."""
    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    cache = tmp_path / "cache"
    assert run_doit(ws, cache=cache).returncode == 0
    src = ws / "examples" / "hello_c" / "hello.c"
    src.write_text(src.read_text().replace("Hello", "Hullo"))
    again = run_doit(ws, cache=cache)
    assert again.returncode == 0 and outcomes(ws)["//examples/hello_c:package:package"] == "run"
    assert " reused)" in again.stderr and ", 0 reused)" not in again.stderr, again.stderr
    clean = copy_examples(tmp_path / "clean", ["hello_c"])
    (clean / "examples" / "hello_c" / "hello.c").write_text(src.read_text())
    assert run_doit(clean, cache=tmp_path / "cache2").returncode == 0
    assert sha(ws / PACKAGE) == sha(clean / PACKAGE)
