"""Package and instance verification as stage functions that return what they found.

The inputs are real: the hello_c example built with the stand-in LibOS into a package and
an instance, then copies of them changed one piece at a time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.deflate import ZLIB, deflater
from occlum_rules.stages.package import compressor_record, manifest_compressor, select_members
from occlum_rules.stages.package_stream import write_package
from occlum_rules.stages.securefs import mac_text, patch_builtin_config, read_protected_mac
from occlum_rules.stages.securefs.builtin_config import read_builtin_config
from occlum_rules.stages.sign import read_signed_info
from occlum_rules.stages.verify_instance import verify_instance
from occlum_rules.stages.verify_package import (
    SIGNED,
    compare_packages,
    default_manifest,
    load_manifest,
    tar_stream_sha256,
    verify_package,
)
from tests.support.tar import extract_all
from tests.support.workspace import copy_examples, run_doit

PKG_DIR = "out/bin/examples/hello_c/package"
INSTANCE = "out/bin/examples/hello_c/instance"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("verify")
    ws = copy_examples(base / "ws", ["hello_c"])
    result = run_doit(ws, "build", cache=base / "cache")
    assert result.returncode == 0, result.output
    return ws


@pytest.fixture
def package(built, tmp_path) -> Path:
    """A private copy of the package directory (tarball, manifest, SHA256SUMS)."""
    dest = tmp_path / "package"
    shutil.copytree(built / PKG_DIR, dest)
    return dest / "hello_c.tar.gz"


@pytest.fixture
def instance(built, tmp_path) -> Path:
    dest = tmp_path / "instance"
    shutil.copytree(built / INSTANCE, dest, symlinks=True)
    return dest


# --------------------------------------------------------------------------- package

def test_a_built_package_verifies_and_reports_its_identity(package):
    check = verify_package(package)
    assert check.ok, check.problems
    assert check.manifest_path == default_manifest(package)
    enclave = check.manifest["enclave"]
    for key in ("mrenclave", "mrsigner", "isv_prod_id", "isv_svn"):
        assert check.identity[key] == enclave[key]


def test_a_changed_manifest_row_is_named(package):
    manifest_path = default_manifest(package)
    manifest = json.loads(manifest_path.read_text())
    row = next(m for m in manifest["contents"] if m["path"].endswith("initfs/etc/hosts"))
    row["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    check = verify_package(package)
    assert not check.ok
    assert any(p.startswith(row["path"]) for p in check.problems), check.problems
    # SHA256SUMS beside it still lists the old manifest
    assert f"{manifest_path.name}: does not match its line in SHA256SUMS" in check.problems


def test_a_repacked_member_is_found_by_verify_and_by_compare(package, tmp_path):
    original = tmp_path / "original.tar.gz"
    shutil.copy(package, original)
    unpacked = tmp_path / "x"
    extract_all(package, unpacked)
    hosts = unpacked / "hello_c/initfs/etc/hosts"
    hosts.write_bytes(b"#" + hosts.read_bytes()[1:])
    manifest = load_manifest(default_manifest(package))
    write_package(select_members(unpacked / "hello_c", "HW"), "hello_c", package,
                  mtime=manifest["package"]["source_date_epoch"])
    check = verify_package(package)
    assert "hello_c/initfs/etc/hosts: content differs" in " ".join(check.problems)
    same = compare_packages(original, original)
    assert same.identical and same.first_difference is None
    diff = compare_packages(original, package)
    assert not diff.identical
    assert diff.first_difference == "hello_c/initfs/etc/hosts"


def test_missing_package_or_manifest_is_one_user_error(package, tmp_path):
    with pytest.raises(UserError, match="no such package file"):
        verify_package(tmp_path / "nothing.tar.gz")
    default_manifest(package).unlink()
    with pytest.raises(UserError, match=r"hello_c\.manifest\.json: no release manifest"):
        verify_package(package)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="not an occlum-rules release manifest"):
        verify_package(package, bad)


def _repack(package: Path, dest: Path, deflater=ZLIB, edit: bool = False) -> Path:
    """The package's members written again into ``dest`` by ``deflater`` (one member's
    first byte changed when ``edit``)."""
    unpacked = dest.with_suffix(".d")
    extract_all(package, unpacked)
    if edit:
        hosts = unpacked / "hello_c/initfs/etc/hosts"
        hosts.write_bytes(b"#" + hosts.read_bytes()[1:])
    manifest = load_manifest(default_manifest(package))
    write_package(select_members(unpacked / "hello_c", "HW"), "hello_c", dest,
                  mtime=manifest["package"]["source_date_epoch"], deflater=deflater)
    return dest


def _rebuilt_manifest(package: Path, compressor: dict) -> dict:
    manifest = load_manifest(default_manifest(package))
    manifest["package"] = dict(manifest["package"], compressor=compressor)
    return manifest


def test_the_release_records_its_tar_stream_and_compressor(package):
    want = load_manifest(default_manifest(package))["package"]
    assert want["tar_sha256"] == tar_stream_sha256(package)
    assert want["compressor"] == {"name": "zlib-ng", "version": deflater("zlib-ng").version,
                                  "level": 6}


def test_another_compressor_with_the_same_tar_stream_is_reproduced(package, tmp_path):
    manifest = load_manifest(default_manifest(package))
    other = _repack(package, tmp_path / "zlib.tar.gz")
    zlib_record = compressor_record("zlib", ZLIB.version, 6)
    c = compare_packages(package, other, manifest, _rebuilt_manifest(package, zlib_record))
    assert not c.identical and c.same_tar and c.compressor_differs and c.reproduced
    assert c.first_difference == "the gzip stream (members are identical)"
    assert c.explanation() is None
    assert c.compressors == (manifest["package"]["compressor"], zlib_record)


def test_same_tar_stream_from_the_same_compressor_is_not_explained_away(package, tmp_path):
    """Equal tar streams but different gzip bytes from the compressor the release names:
    something other than the compressor changed the bytes, so it fails."""
    manifest = load_manifest(default_manifest(package))
    other = _repack(package, tmp_path / "zlib.tar.gz")
    c = compare_packages(package, other, manifest, manifest)
    assert c.same_tar and not c.reproduced
    assert "the same compressor (zlib-ng" in (c.explanation() or "")


def test_tampered_content_fails_even_with_another_compressor(package, tmp_path):
    manifest = load_manifest(default_manifest(package))
    other = _repack(package, tmp_path / "zlib.tar.gz", edit=True)
    zlib_record = compressor_record("zlib", ZLIB.version, 6)
    c = compare_packages(package, other, manifest, _rebuilt_manifest(package, zlib_record))
    assert not c.reproduced and c.first_difference == "hello_c/initfs/etc/hosts"
    assert "the rebuilt tar stream has sha256" in (c.explanation() or "")
    # a tampered release whose manifest was updated to match still differs from the rebuild
    tampered = _repack(package, tmp_path / "tampered.tar.gz", deflater("zlib-ng"), edit=True)
    forged = dict(manifest, package=dict(manifest["package"],
                                         tar_sha256=tar_stream_sha256(tampered)))
    c = compare_packages(tampered, package, forged, manifest)
    assert not c.reproduced and "the rebuilt tar stream" in (c.explanation() or "")


def test_a_manifest_without_tar_sha256_needs_identical_bytes(package, tmp_path):
    manifest = load_manifest(default_manifest(package))
    old = dict(manifest, package={k: v for k, v in manifest["package"].items()
                                  if k not in ("tar_sha256", "compressor")})
    old["package"]["zlib"] = "1.2.13"
    other = _repack(package, tmp_path / "zlib.tar.gz")
    c = compare_packages(package, other, old, manifest)
    assert not c.reproduced and c.tar_sha256 is None
    assert "records no tar_sha256" in (c.explanation() or "")
    assert manifest_compressor(old["package"]) == compressor_record("zlib", "1.2.13", 6)


# --------------------------------------------------------------------------- instance

def test_a_built_instance_verifies(instance):
    check = verify_instance(instance)
    assert check.ok, check.problems
    assert [(i.what, i.rel) for i in check.images] == [("image", "build/mount"),
                                                        ("initfs", "build/initfs")]
    for image in check.images:
        assert image.entries > 0 and not image.skipped
        assert image.root_mac == (instance / image.rel / ".ROOT_MAC").read_text().strip()
    protected = instance / "build/.Occlum_sys.json.protected"
    assert check.config_mac == mac_text(read_protected_mac(protected))
    assert check.identity == read_signed_info(instance / SIGNED)


def test_read_builtin_config_gives_what_the_patch_wrote(instance, tmp_path):
    libos = instance / SIGNED
    protected = read_protected_mac(instance / "build/.Occlum_sys.json.protected")
    assert read_builtin_config(libos).startswith(mac_text(protected).encode())
    patch_builtin_config(libos, b"not the config MAC\n")
    assert read_builtin_config(libos).startswith(b"not the config MAC\n")
    not_elf = tmp_path / "text"
    not_elf.write_text("hello")
    with pytest.raises(UserError) as info:
        read_builtin_config(not_elf)
    assert str(not_elf) in str(info.value) and "not a valid ELF file" in str(info.value)


def test_every_broken_piece_is_named_in_one_call(instance):
    (instance / "build/initfs/.ROOT_MAC").write_text("00-" * 15 + "00\n")
    measurements = instance / "build/measurements.json"
    recorded = json.loads(measurements.read_text())
    recorded["mrenclave"] = "ab" * 32
    measurements.write_text(json.dumps(recorded))
    patch_builtin_config(instance / SIGNED, b"some other MAC\n")
    check = verify_instance(instance)
    assert not check.ok
    assert [i.what for i in check.images] == ["image"]
    assert any(p.startswith("build/initfs: ") for p in check.problems), check.problems
    assert any(".builtin_config does not hold the protected config's MAC" in p
               for p in check.problems), check.problems
    assert any(p.startswith("build/measurements.json: mrenclave " + "ab" * 32)
               for p in check.problems), check.problems
    assert check.config_mac == ""


def test_an_encrypted_image_without_its_key_is_skipped_not_failed(instance):
    config = instance / "build/image_config.json"
    data = json.loads(config.read_text())
    data["image_type"] = "encrypted"
    config.write_text(json.dumps(data))
    check = verify_instance(instance)
    assert check.ok, check.problems
    assert check.images[0].what == "image" and "--image-key" in check.images[0].skipped


def test_a_missing_libos_names_the_file(instance):
    (instance / SIGNED).unlink()
    check = verify_instance(instance)
    assert len(check.problems) == 1
    assert str(instance / SIGNED) in check.problems[0]
