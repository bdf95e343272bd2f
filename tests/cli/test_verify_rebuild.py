"""``occlum-rules verify --rebuild`` across two deflate builds: the system zlib (Python's
zlib module) made the release, the pinned zlib-ng wheel the rebuild. Real builds of the
hello_c example, real rebuilds in a copy of the workspace."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import pytest

from occlum_rules.stages.deflate import deflater
from occlum_rules.stages.package import manifest_bytes, select_members
from occlum_rules.stages.package_stream import write_package
from occlum_rules.stages.verify_package import tar_stream_sha256
from tests.support.tar import extract_all
from tests.support.workspace import copy_examples, run_cli, run_doit

PKG_DIR = "out/bin/examples/hello_c/package"
PACKAGE = f"{PKG_DIR}/hello_c.tar.gz"
MANIFEST = f"{PKG_DIR}/hello_c.manifest.json"
ZLIB_NG = {"OCCLUM_RULES_DEFLATE": "zlib-ng"}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """A workspace whose release was compressed by the standard zlib."""
    base = tmp_path_factory.mktemp("rebuild")
    ws = copy_examples(base / "ws", ["hello_c"])
    built = run_doit(ws, "build", cache=base / "cache", env={"OCCLUM_RULES_DEFLATE": "zlib"})
    assert built.returncode == 0, built.output
    return ws


def _copy_release(ws: Path, dest: Path) -> Path:
    shutil.copytree(ws / PKG_DIR, dest)
    return dest / "hello_c.tar.gz"


def _manifest(package: Path) -> Path:
    return package.with_name("hello_c.manifest.json")


def test_a_rebuild_by_another_compressor_passes_and_says_so(released):
    manifest = json.loads((released / MANIFEST).read_text())
    assert manifest["package"]["compressor"]["name"] == "zlib"
    result = run_cli("verify", "--rebuild", str(released / PACKAGE), "--workspace",
                     str(released), env=ZLIB_NG)
    assert result.returncode == 0, result.output
    here = deflater("zlib-ng").version
    assert (f"the compressed bytes differ only because another compressor was used: the "
            f"release was compressed by zlib {zlib.ZLIB_RUNTIME_VERSION} level 6, this rebuild "
            f"by zlib-ng {here} level 6") in result.stdout
    assert f"identical tar stream (tar_sha256 {manifest['package']['tar_sha256']})" in result.stdout


def test_the_same_compressor_rebuilds_the_same_bytes(released):
    result = run_cli("verify", "--rebuild", "//examples/hello_c:package", "--workspace",
                     str(released), env={"OCCLUM_RULES_DEFLATE": "zlib"})
    assert result.returncode == 0, result.output
    assert "byte-identical" in result.stdout


def test_tampered_content_fails_whatever_the_manifest_claims(released, tmp_path):
    """A release with one member changed, its manifest's digests updated to match: the
    rebuild's tar stream differs, so the other compressor explains nothing."""
    package = _copy_release(released, tmp_path / "release")
    unpacked = tmp_path / "x"
    extract_all(package, unpacked)
    hosts = unpacked / "hello_c/initfs/etc/hosts"
    hosts.write_bytes(b"#" + hosts.read_bytes()[1:])
    manifest = json.loads(_manifest(package).read_text())
    result = write_package(select_members(unpacked / "hello_c", "HW"), "hello_c", package,
                           mtime=manifest["package"]["source_date_epoch"], raw_digest=True)
    manifest["package"].update(sha256=result.sha256, size=result.size,
                               tar_sha256=result.raw_sha256)
    _manifest(package).write_bytes(manifest_bytes(manifest))
    assert tar_stream_sha256(package) == result.raw_sha256
    failed = run_cli("verify", "--rebuild", str(package), "--workspace", str(released),
                     env=ZLIB_NG)
    assert failed.returncode == 1, failed.output
    assert "DIFFERENT" in failed.stderr and "Traceback" not in failed.output
    assert "first differing file: hello_c/initfs/etc/hosts" in failed.stderr
    assert "the rebuilt tar stream has sha256" in failed.stderr


def test_a_manifest_without_tar_sha256_needs_byte_identical_bytes(released, tmp_path):
    package = _copy_release(released, tmp_path / "release")
    manifest = json.loads(_manifest(package).read_text())
    for key in ("tar_sha256", "compressor"):
        del manifest["package"][key]
    manifest["package"]["zlib"] = zlib.ZLIB_RUNTIME_VERSION  # as the old manifests had it
    _manifest(package).write_bytes(manifest_bytes(manifest))
    failed = run_cli("verify", "--rebuild", str(package), "--workspace", str(released),
                     env=ZLIB_NG)
    assert failed.returncode == 1, failed.output
    assert "records no tar_sha256" in failed.stderr and "Traceback" not in failed.output
    same = run_cli("verify", "--rebuild", str(package), "--workspace", str(released),
                   env={"OCCLUM_RULES_DEFLATE": "zlib"})
    assert same.returncode == 0 and "byte-identical" in same.stdout, same.output


def test_an_unknown_deflate_is_one_clear_error(released):
    result = run_doit(released, "list", cache=released.parent / "cache",
                      env={"OCCLUM_RULES_DEFLATE": "brotli"})
    assert result.returncode != 0
    assert "unknown deflate implementation 'brotli'" in result.output
    assert "Traceback" not in result.output
