"""occlum_oci_image end to end, read back by real OCI tools: skopeo inspects the layout and
the docker-archive, umoci unpacks the image and the instance inside it is the built one byte
for byte; two checkouts (another path, umask 077) give the same image digest; one changed
image file re-compresses only the layers that hold it; the runtime check and bad bases fail
the build with one error."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from occlum_rules.stages.package import select_members
from tests.rules.test_cargo_debian import needs_debian
from tests.rules.test_package import age_sources, doit_with_umask
from tests.support.occlum_install import make_occlum_install
from tests.support.oci_layout import layer_tar, make_layout
from tests.support.pal import build_pal, build_urts
from tests.support.workspace import copy_examples, make_workspace, outcomes, run_doit

SKOPEO, UMOCI = shutil.which("skopeo"), shutil.which("umoci")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed "
                                  "(apt-get install skopeo; debian-packages.txt lists it)")
needs_umoci = pytest.mark.skipif(UMOCI is None, reason="umoci is not installed "
                                 "(apt-get install umoci; debian-packages.txt lists it)")
SEED = "out/bin/examples/seed_service"
IMAGE = f"{SEED}/image_oci"
INSTANCE = f"{SEED}/instance"
TARGET = "//examples/seed_service:image_oci"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def seed_images(tmp_path_factory):
    """The seed image built in two checkouts: a (umask 022, old sources) and b (another
    path, umask 077, newer sources), each with its own cache so every action really runs."""
    base = tmp_path_factory.mktemp("oci")
    a = copy_examples(base / "a", ["seed_service"])
    b = copy_examples(base / "another" / "checkout" / "b", ["seed_service"])
    age_sources(a, 1_000_000_000)
    age_sources(b, 1_700_000_000)
    for root, umask in ((a, "022"), (b, "077")):
        built = doit_with_umask(root, base / f"cache-{root.name}", umask, TARGET)
        assert built.returncode == 0, built.stdout + built.stderr
    return a, b


@needs_debian
def test_two_checkouts_give_the_same_image(seed_images):
    a, b = seed_images
    assert outcomes(b)[f"{TARGET}:image"] == "run" and outcomes(b)[f"{TARGET}:layer-image"] == "run"
    digest = (a / IMAGE / "image.digest").read_text().strip()
    assert digest.startswith("sha256:") and digest == (b / IMAGE / "image.digest").read_text().strip()
    for rel in ("image.tar", "image.oci/index.json", "image.json"):
        assert _sha(a / IMAGE / rel) == _sha(b / IMAGE / rel), rel
    index = json.loads((a / IMAGE / "image.oci/index.json").read_text())
    manifest = a / IMAGE / "image.oci/blobs/sha256" / index["manifests"][0]["digest"][7:]
    assert "sha256:" + _sha(manifest) == digest  # the digest is the manifest's, as written
    assert str(a) not in (a / IMAGE / "image.json").read_text()


@needs_debian
@needs_skopeo
def test_skopeo_reads_the_layout_and_the_docker_archive(seed_images):
    a, _ = seed_images
    digest = (a / IMAGE / "image.digest").read_text().strip()
    layout = json.loads(subprocess.run([SKOPEO, "inspect", f"oci:{a / IMAGE / 'image.oci'}:latest"],
                                       check=True, capture_output=True, text=True).stdout)
    assert layout["Digest"] == digest and layout["Created"] == "2024-01-01T00:00:00Z"
    assert layout["Architecture"] == "amd64" and len(layout["Layers"]) == 4
    assert "OCCLUM_INSTANCE_DIR=/opt/occlum_instance" in layout["Env"]
    config = json.loads(subprocess.run(
        [SKOPEO, "inspect", "--config", f"docker-archive:{a / IMAGE / 'image.tar'}"],
        check=True, capture_output=True, text=True).stdout)
    assert config["config"]["Entrypoint"] == ["/opt/occlum_instance/build/bin/occlum-run"]
    assert config["config"]["Cmd"] == ["/bin/seed_app"]  # the first program of /bin
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert {h["created"] for h in config["history"]} == {"2024-01-01T00:00:00Z"}
    summary = json.loads((a / IMAGE / "image.json").read_text())
    assert config["rootfs"]["diff_ids"] == [x["diff_id"] for x in summary["layers"]]


@needs_debian
@needs_umoci
def test_umoci_unpacks_the_instance_byte_for_byte(seed_images, tmp_path):
    a, _ = seed_images
    bundle = tmp_path / "bundle"
    subprocess.run([UMOCI, "unpack", "--rootless", "--image", f"{a / IMAGE / 'image.oci'}:latest",
                    str(bundle)], check=True, capture_output=True)
    inside = bundle / "rootfs/opt/occlum_instance"
    built = a / INSTANCE
    members = select_members(built, (built / ".sgx_mode").read_text().strip())
    expected = {m.name for m in members} | {"build", "build/lib"}
    found = {str(p.relative_to(inside)) for p in inside.rglob("*")}
    assert found == expected
    for m in members:
        path = inside / m.name
        if m.kind == "file":
            assert path.read_bytes() == Path(m.content_path).read_bytes(), m.name
            assert path.stat().st_mode & 0o777 == m.mode, m.name
        elif m.kind == "symlink":
            assert os.readlink(path) == m.target, m.name
        else:
            assert path.is_dir() and not path.is_symlink(), m.name
    assert (bundle / "rootfs/lib/x86_64-linux-gnu/libc.so.6").read_bytes() == \
        Path("/lib/x86_64-linux-gnu/libc.so.6").read_bytes()
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["args"] == ["/opt/occlum_instance/build/bin/occlum-run", "/bin/seed_app"]
    assert process["cwd"] == "/opt/occlum_instance"


# ----------------------------------------------------------------------------- incremental

HELLO_BUILD = """
occlum_cc_binary(name = "hello", srcs = ["hello.c"])
occlum_bom(name = "image", src = "hello.yaml",
           deps = {"/bin": [":hello"], "/data": ["data.txt"]})
occlum_instance(name = "instance", bom = ":image", entry_points = ["/bin"],
                resource_limits = {"user_space_size": "256MB"})
occlum_bom(name = "runtime_files", src = "runtime.yaml", occlum_init = False)
oci_layer(name = "runtime", bom = ":runtime_files")
occlum_oci_image(name = "oci", instance = ":instance", layers = [":runtime"])
"""
RUNTIME_YAML = (Path(__file__).resolve().parents[2] / "examples/seed_service/runtime.yaml")


def _hello_workspace(root: Path, extra_build: str = "", files: dict | None = None) -> Path:
    return make_workspace(root, {
        "app/BUILD.py": HELLO_BUILD + extra_build,
        "app/hello.c": '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n',
        "app/hello.yaml": "targets:\n  - target: /\n    mkdirs: [bin, data]\n",
        "app/data.txt": "one\n",
        "app/runtime.yaml": RUNTIME_YAML.read_text(),
        **(files or {})})


def test_one_changed_image_file_recompresses_only_its_layers(tmp_path):
    ws = _hello_workspace(tmp_path / "ws")
    first = run_doit(ws, "build", cache=tmp_path / "cache")
    assert first.returncode == 0, first.output
    blob = ws / "out/bin/app/oci/layers/runtime.tar.gz"
    before = {p: (blob.parent / p).stat().st_ino for p in ("runtime.tar.gz", "image.tar.gz")}
    digest_before = (ws / "out/bin/app/oci/image.digest").read_text()
    (ws / "app/data.txt").write_text("two\n")
    second = run_doit(ws, "build", cache=tmp_path / "cache")
    assert second.returncode == 0, second.output
    ran = outcomes(ws)
    assert ran["//app:oci:layer-image"] == "run"      # the image SEFS holds data.txt
    assert ran["//app:oci:layer-enclave"] == "run"    # the signed LibOS carries the MACs
    assert ran["//app:oci:layer-runtime"] == "up_to_date"  # PAL, initfs: not re-compressed
    assert ran["//app:runtime:layer"] == "up_to_date"
    assert ran["//app:oci:image"] == "run"
    assert (blob.parent / "runtime.tar.gz").stat().st_ino == before["runtime.tar.gz"]
    assert (blob.parent / "image.tar.gz").stat().st_ino != before["image.tar.gz"]
    assert (ws / "out/bin/app/oci/image.digest").read_text() != digest_before
    third = run_doit(ws, "build", cache=tmp_path / "cache")
    assert third.returncode == 0 and "0 actions run" in third.output, third.output


# ----------------------------------------------------------------------------- runtime check

def _sim_install_with_urts_pal(tmp_path: Path):
    """A stand-in install whose SIM PAL really links libsgx_urts_sim.so (built here)."""
    install = make_occlum_install(tmp_path / "opt" / "occlum", modes=("HW", "SIM"))
    urts = build_urts(tmp_path / "sdk")
    build_pal(install.lib("libocclum-pal", "SIM"), urts)
    return install, urts


def test_runtime_check_needs_the_sim_urts_library(tmp_path):
    install, urts = _sim_install_with_urts_pal(tmp_path)
    image = """
occlum_oci_image(name = "sim", instance = ":instance", layers = [":runtime"{more}],
                 entrypoint = ["/bin/sh"])
"""
    ws = _hello_workspace(tmp_path / "ws", image.format(more=""), {
        "app/libsgx_urts_sim.so": urts.read_bytes()})
    yaml = ws / "WORKSPACE.yaml"
    yaml.write_text(f"source_date_epoch: 1704067200\nsgx_mode: SIM\nocclum:\n  home: {install.home}\n")
    env = {"OCCLUM_HOME": ""}
    failed = run_doit(ws, "//app:sim", cache=tmp_path / "cache", env=env)
    assert failed.returncode == 1, failed.output
    assert "Traceback" not in failed.output
    errors = [line for line in failed.output.splitlines() if "runtime check failed" in line]
    assert len(errors) == 1, failed.output
    assert "libsgx_urts_sim.so" in errors[0] and "SIM-mode PAL" in errors[0]
    assert f"libocclum-pal_sim.so.{install.version}" in errors[0]
    assert not (ws / "out/bin/app/sim/image.oci").exists()
    build = ws / "app/BUILD.py"
    build.write_text(HELLO_BUILD + image.format(more=', ":urts"') + """
oci_layer(name = "urts", srcs = ["libsgx_urts_sim.so"], prefix = "/usr/lib/x86_64-linux-gnu")
""")
    passed = run_doit(ws, "//app:sim", cache=tmp_path / "cache", env=env)
    assert passed.returncode == 0, passed.output
    assert "libsgx_urts_sim.so -> /usr/lib/x86_64-linux-gnu/libsgx_urts_sim.so" in passed.output
    assert (ws / "out/bin/app/sim/image.digest").read_text().startswith("sha256:")


def test_the_stand_in_pal_is_checked_and_named(tmp_path):
    ws = _hello_workspace(tmp_path / "ws")
    (ws / "app/runtime.yaml").write_text(RUNTIME_YAML.read_text().replace(
        "          - name: /lib/x86_64-linux-gnu/libc.so.6\n", "          - name: /bin/true\n"))
    failed = run_doit(ws, "//app:oci", cache=tmp_path / "cache")
    assert failed.returncode == 1 and "Traceback" not in failed.output, failed.output
    assert "the image has no libc.so.6, which the HW-mode PAL" in failed.output
    assert "stand-in PAL (no Occlum install)" in failed.output


# ----------------------------------------------------------------------------- bad bases

BASE_BUILD = """
oci_base(name = "base", layout = "base", digest = "{digest}")
"""


@pytest.mark.parametrize("case", ["wrong digest", "corrupted blob", "dot-dot", "absolute"])
def test_bad_bases_fail_with_one_error(tmp_path, case):
    ws = make_workspace(tmp_path / "ws", {})
    names = {"dot-dot": "../etc/evil", "absolute": "/etc/evil"}
    digest = make_layout(ws / "app/base", [layer_tar({"bin/sh": b"sh", names.get(case, "ok"): b"x"})])
    if case == "wrong digest":
        digest = "sha256:" + "1" * 64
    if case == "corrupted blob":
        manifest = json.loads((ws / "app/base/blobs/sha256" / digest[7:]).read_text())
        layer = ws / "app/base/blobs/sha256" / manifest["layers"][0]["digest"][7:]
        layer.write_bytes(layer.read_bytes()[:-20] + bytes(20))
    (ws / "app/BUILD.py").write_text(BASE_BUILD.format(digest=digest))
    result = run_doit(ws, "build", cache=tmp_path / "cache")
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if "app/base" in line]
    assert errors, result.output
    expect = {"wrong digest": "index.json", "corrupted blob": "corrupted",
              "dot-dot": "'../etc/evil'", "absolute": "'/etc/evil'"}[case]
    assert expect in errors[0], result.output
    assert not any((ws / "out").rglob("base.json"))


def test_a_good_base_is_used_and_its_layers_kept(tmp_path):
    ws = _hello_workspace(tmp_path / "ws", """
oci_base(name = "base", layout = "base", digest = "{digest}")
occlum_oci_image(name = "on_base", instance = ":instance", base = ":base", layers = [":runtime"],
                 env = {{"MODE": "test"}})
""".format(digest=make_layout(tmp_path / "staging", [layer_tar({"etc/base-release": b"1\n"})],
                              env=["PATH=/usr/bin:/bin", "MODE=base"])))
    shutil.copytree(tmp_path / "staging", ws / "app/base")
    result = run_doit(ws, "//app:on_base", cache=tmp_path / "cache")
    assert result.returncode == 0, result.output
    summary = json.loads((ws / "out/bin/app/on_base/image.json").read_text())
    base_manifest = json.loads(next(
        p for p in (ws / "app/base/blobs/sha256").iterdir()
        if b'"layers"' in p.read_bytes()).read_text())
    assert summary["layers"][0]["digest"] == base_manifest["layers"][0]["digest"]  # not re-made
    config = json.loads((ws / "out/bin/app/on_base/image.oci/blobs/sha256" /
                         summary["config"][7:]).read_text())
    assert "MODE=test" in config["config"]["Env"] and "MODE=base" not in config["config"]["Env"]
    assert config["history"][0]["created_by"] == "layer 0"


def test_a_built_in_image_key_is_refused_unless_allowed(tmp_path):
    key = "-".join(f"{b:02x}" for b in range(16))
    ws = _hello_workspace(tmp_path / "ws", files={"app/image_key": key + "\n"})
    build = ws / "app/BUILD.py"
    build.write_text(build.read_text().replace(
        'entry_points = ["/bin"],',
        'entry_points = ["/bin"], image_key = "image_key", buildin_image_key = True,'))
    result = run_doit(ws, "//app:oci", cache=tmp_path / "cache")
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    assert "buildin_image_key = True" in result.output and "allow_image_key" in result.output
    assert not (ws / "out/bin/app/oci").exists()
    build.write_text(build.read_text().replace(
        'layers = [":runtime"])', 'layers = [":runtime"], allow_image_key = True)'))
    allowed = run_doit(ws, "//app:oci", cache=tmp_path / "cache")
    assert allowed.returncode == 0, allowed.output
    with tarfile.open(ws / "out/bin/app/oci/layers/runtime.tar.gz") as tar:
        secret = tar.getmember("opt/occlum_instance/initfs/etc/image_key")
    assert secret.mode == 0o600  # owner-only, as in the package
    assert outcomes(ws)["//app:oci:layer-runtime"] == "run"


@pytest.mark.parametrize("extra, expect", [
    ('oci_layer(name = "both", bom = ":runtime_files", srcs = ["data.txt"])',
     "exactly one of bom"),
    ('occlum_oci_image(name = "rel", instance = ":instance", instance_dir = "opt/x")',
     "instance_dir: 'opt/x' must be an absolute path"),
    ('occlum_oci_image(name = "notbase", instance = ":instance", base = ":runtime")',
     "base: //app:runtime is not an oci_base target"),
    ('oci_base(name = "short", layout = "base", digest = "sha256:abc")',
     "digest: 'sha256:abc' is not a pinned digest"),
    ('occlum_oci_image(name = "tagged", instance = ":instance", tag = "a b")',
     "tag: 'a b' is not a valid image tag"),
])
def test_rule_attributes_are_checked_at_analysis(tmp_path, extra, expect):
    ws = _hello_workspace(tmp_path / "ws", "\n" + extra + "\n")
    result = run_doit(ws, "build", cache=tmp_path / "cache")
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    assert "app/BUILD.py:" in result.output and expect in result.output, result.output
