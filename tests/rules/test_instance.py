"""occlum_instance end to end with the stand-in LibOS: layout, identity, per-stage caching."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from occlum_rules.stages.securefs import mac_text, read_protected_mac, verify_image
from occlum_rules.stages.sign import read_signed_info
from tests.support.keys import write_signing_key
from tests.support.workspace import copy_examples, outcomes, run_cli, run_doit

INSTANCE = "out/bin/examples/hello_c/instance"
IMAGE = "out/bin/examples/hello_c/image/image"
PREFIX = "//examples/hello_c:instance:"


def build(root: Path, cache: Path, env: dict | None = None) -> dict[str, str]:
    result = run_doit(root, "build", cache=cache, env=env)
    assert result.returncode == 0, result.output
    return outcomes(root)


def ran(outs: dict[str, str]) -> list[str]:
    return sorted(k[len(PREFIX):] for k, v in outs.items() if v == "run" and k.startswith(PREFIX))


def tree_bytes(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("instance")
    ws = copy_examples(base / "one", ["hello_c"])
    cache = base / "cache"
    first = build(ws, cache)
    return ws, cache, first, base


def test_layout_is_an_occlum_instance(built):
    ws, _, first, _ = built
    inst = ws / INSTANCE
    for rel in ["Occlum.json", "initfs/bin/init", "initfs/etc/hosts", "build/Enclave.xml",
                "build/.Occlum_sys.json", "build/.Occlum_sys.json.protected",
                "build/image_config.json", "build/mount/__ROOT", "build/mount/.ROOT_MAC",
                "build/initfs/__ROOT", "build/initfs/.ROOT_MAC",
                "build/lib/libocclum-libos.signed.so", "build/lib/libocclum-libos.so.0.31.0",
                "build/lib/libocclum-pal.so.0.31.0", "build/bin/occlum-run",
                "run/mount/__ROOT", "run/initfs/__ROOT"]:
        assert (inst / rel).exists(), rel
    assert os.readlink(inst / "build/lib/libocclum-libos.so.0") == "libocclum-libos.so.0.31.0"
    assert os.readlink(inst / "build/lib/libocclum-libos.so") == "libocclum-libos.so.0"
    assert os.readlink(inst / "build/lib/libocclum-pal.so.0") == "libocclum-pal.so.0.31.0"
    assert (inst / ".__occlum_status").read_text() == "built\n"
    assert (inst / ".sgx_mode").read_text() == "HW\n"
    assert (inst / "initfs/etc/hosts").read_bytes() == b"127.0.0.1   localhost\n"
    assert json.loads((inst / "build/image_config.json").read_text()) == {"image_type": "integrity-only"}
    assert (inst / "image").resolve() == (ws / IMAGE).resolve()
    assert all(v == "run" for k, v in first.items() if k.startswith(PREFIX))


def test_sefs_protected_config_and_signature_are_consistent(built):
    ws, _, _, _ = built
    inst = ws / INSTANCE
    # the image SEFS verifies and holds exactly the image tree
    mac = (inst / "build/mount/.ROOT_MAC").read_text().strip()
    entries = verify_image(inst / "build/mount/__ROOT", expected_mac=mac)
    packed = sorted(e.path for e in entries)
    image = ws / IMAGE
    walked = sorted(str(p.relative_to(image)) for p in image.rglob("*"))
    assert packed == walked
    # the config MAC in .builtin_config is the protected file's MAC
    config_mac = mac_text(read_protected_mac(inst / "build/.Occlum_sys.json.protected"))
    patched = (inst / "build/lib/libocclum-libos.so.0.31.0").read_bytes()
    assert (config_mac + "\n").encode() in patched
    # MRENCLAVE recorded == an independent dump of the signed LibOS
    measurements = json.loads((inst / "build/measurements.json").read_text())
    signed = inst / "build/lib/libocclum-libos.signed.so"
    assert read_signed_info(signed)["mrenclave"] == measurements["mrenclave"]
    dump = run_cli("sgx-sign", "dump", "-enclave", str(signed), "-dumpfile",
                   str(ws / "dump.txt"), "-cssfile", str(ws / "css.bin"))
    assert dump.returncode == 0, dump.output
    hash_bytes = bytes.fromhex(measurements["mrenclave"])
    css = (ws / "css.bin").read_bytes()
    assert hash_bytes in css
    measured = run_cli("measure", "//examples/hello_c:instance", cwd=ws,
                       env={"OCCLUM_RULES_CACHE": str(built[1])})
    assert f"MRENCLAVE: {measurements['mrenclave']}" in measured.stdout
    assert "LibOS: stand-in LibOS" in measured.stdout


def test_second_clone_gives_identical_bytes(built):
    ws, _, _, base = built
    other = copy_examples(base / "two" / "elsewhere", ["hello_c"])
    build(other, base / "cache-two")
    a, b = tree_bytes(ws / INSTANCE), tree_bytes(other / INSTANCE)
    a.pop("image"), b.pop("image")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key


def test_per_stage_incremental_behaviour(built, tmp_path):
    base_ws, cache, _, _ = built
    ws = tmp_path / "ws"
    shutil.copytree(base_ws, ws, symlinks=True)
    build(ws, cache)
    inst = ws / INSTANCE
    (inst / "run/mount/__ROOT/app-data").write_text("persisted by the app")
    build_file = ws / "examples/hello_c/BUILD.py"
    text = build_file.read_text()

    # signing key: only sign re-runs
    write_signing_key(ws / "key.pem")
    build_file.write_text(text.replace('bom = ":image",', 'bom = ":image",\n    sign_key = "//:key.pem",'))
    (ws / "BUILD.py").write_text("")
    assert ran(build(ws, cache)) == ["sign"]

    # env in Occlum.json: config → protect → patch → sign, no pack
    build_file.write_text(build_file.read_text().replace(
        'entry_points = ["/bin"],', 'entry_points = ["/bin"],\n    env = {"default": ["OCCLUM=yes", "X=1"]},'))
    assert ran(build(ws, cache)) == ["config", "occlum-json", "patch", "protect", "sign"]

    # image key: switching from integrity-only to encrypted changes the initfs too (its
    # etc/image_config.json); changing to another key re-packs only the image (and what
    # depends on its MAC)
    for name in ("image_key", "image_key2"):
        key = run_cli("gen-image-key", str(ws / name))
        assert key.returncode == 0, key.output
    build_file.write_text(build_file.read_text().replace(
        'bom = ":image",', 'bom = ":image",\n    image_key = "//:image_key",'))
    outs = ran(build(ws, cache))
    assert "pack-image" in outs and "pack-initfs" in outs
    build_file.write_text(build_file.read_text().replace('"//:image_key"', '"//:image_key2"'))
    outs = ran(build(ws, cache))
    assert outs == ["config", "pack-image", "patch", "protect", "sign"]

    # one image file changes: copy_bom and an incremental re-pack
    build_file.write_text(text)
    build(ws, cache)
    src = ws / "examples/hello_c/hello.c"
    src.write_text(src.read_text().replace("Hello", "Howdy"))
    result = run_doit(ws, "build", cache=cache)
    assert result.returncode == 0, result.output
    outs = ran(outcomes(ws))
    assert "pack-image" in outs and "pack-initfs" not in outs
    assert "packed incrementally" in result.output, result.output
    assert "MRENCLAVE changed" in result.output and "the image changed" in result.output

    # the app's data in run/ survived every rebuild
    assert (inst / "run/mount/__ROOT/app-data").read_text() == "persisted by the app"


def test_new_content_in_the_same_signing_key_file_re_signs(built, tmp_path):
    """The rule reads the key only through analysis (ctx.fs), for its public fingerprint:
    a new key written over the old file is noticed by the next build, which re-signs."""
    base_ws, cache, _, _ = built
    ws = tmp_path / "ws"
    shutil.copytree(base_ws, ws, symlinks=True)
    build_file = ws / "examples/hello_c/BUILD.py"
    build_file.write_text(build_file.read_text().replace(
        'bom = ":image",', 'bom = ":image",\n    sign_key = "//:key.pem",'))
    (ws / "BUILD.py").write_text("")
    write_signing_key(ws / "key.pem")
    build(ws, cache)
    first = read_signed_info(ws / INSTANCE / "build/lib/libocclum-libos.signed.so")
    write_signing_key(ws / "key.pem")
    assert ran(build(ws, cache)) == ["sign"]
    second = read_signed_info(ws / INSTANCE / "build/lib/libocclum-libos.signed.so")
    assert first["mrsigner"] != second["mrsigner"]
    assert ran(build(ws, cache)) == []


def test_offline_two_step_signing_equals_one_step(built, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    base_ws, cache, _, _ = built
    ws = tmp_path / "ws"
    shutil.copytree(base_ws, ws, symlinks=True)
    key = write_signing_key(ws / "offline.pem")
    pub = ws / "offline.pub.pem"
    subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True,
                   capture_output=True)
    # one-step reference with the same key
    build_file = ws / "examples/hello_c/BUILD.py"
    original = build_file.read_text()
    (ws / "BUILD.py").write_text("")
    build_file.write_text(original.replace('bom = ":image",', 'bom = ":image",\n    sign_key = "//:offline.pem",'))
    build(ws, cache)
    one_step = (ws / INSTANCE / "build/lib/libocclum-libos.signed.so").read_bytes()

    build_file.write_text(original)
    wsyaml = ws / "WORKSPACE.yaml"
    wsyaml.write_text(wsyaml.read_text() + "signing:\n  mode: offline\n  public_key: offline.pub.pem\n")
    first = run_doit(ws, "build", cache=cache)
    assert first.returncode == 1
    material = ws / "out/private/examples/hello_c/instance/signing-material.bin"
    signature = ws / "examples/hello_c/instance.enclave.sig"
    assert "waiting for the enclave signature" in first.output
    assert str(signature.relative_to(ws)) in first.output and material.exists()
    assert len(material.read_bytes()) == 256
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key), "-out", str(signature),
                    str(material)], check=True, capture_output=True)
    second = run_doit(ws, "build", cache=cache)
    assert second.returncode == 0, second.output
    assert (ws / INSTANCE / "build/lib/libocclum-libos.signed.so").read_bytes() == one_step


def test_incremental_re_pack_leaves_every_stored_blob_intact(built, tmp_path):
    """The local store keeps outputs as hard links, and the incremental SEFS pack renames
    inode files and patches its metadata in place: it must give them files of their own
    first, or the stored blobs would change under their names."""
    base_ws, _, _, _ = built
    ws = tmp_path / "ws"
    shutil.copytree(base_ws, ws, symlinks=True)
    store = tmp_path / "store"
    src = ws / "examples/hello_c/hello.c"
    text = src.read_text()
    for greeting in ("Hullo", "Hallo"):  # the second re-pack patches what the first stored
        src.write_text(text.replace("Hello", greeting))
        result = run_doit(ws, "build", cache=store)
        assert result.returncode == 0, result.output
        assert "packed incrementally" in result.output, result.output
        blobs = [p for p in (store / "cas").rglob("*") if p.is_file()]
        assert any(p.stat().st_nlink > 1 for p in blobs), "no output was stored as a link"
        damaged = [p.name for p in blobs if hashlib.sha256(p.read_bytes()).hexdigest() != p.name]
        assert not damaged
