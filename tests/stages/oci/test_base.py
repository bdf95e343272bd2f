"""Bases from the workspace: checked against the pinned digest, blob by blob, member by
member; each bad input is one error naming the file and what is wrong."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from occlum_rules.errors import UserError
from occlum_rules.stages.oci.base import import_base
from tests.support.oci_layout import layer_tar, make_layout

SKOPEO = shutil.which("skopeo")


def _good(tmp_path):
    layout = tmp_path / "base"
    digest = make_layout(layout, [layer_tar({"bin/sh": b"sh"}, {"lib": "usr/lib"}),
                                  layer_tar({"usr/lib/libc.so.6": b"libc"})])
    return layout, digest


def test_a_good_layout_is_imported_with_its_entries(tmp_path):
    layout, digest = _good(tmp_path)
    found = import_base(layout, "base", digest, tmp_path / "blobs")
    assert found["kind"] == "oci-layout" and found["manifest_digest"] == digest
    first, second = found["layers"]
    assert ["bin/sh", "file", 0o755, ""] in first["entries"]
    assert ["lib", "symlink", 0o644, "usr/lib"] in first["entries"]
    blob = (tmp_path / "blobs" / second["blob"]).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == second["digest"]
    assert found["config"]["config"]["Env"] == ["PATH=/usr/bin:/bin"]


def test_a_wrong_pinned_digest_is_named(tmp_path):
    layout, digest = _good(tmp_path)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(UserError) as caught:
        import_base(layout, "base", wrong, tmp_path / "blobs")
    assert "base/index.json" in caught.value.message and wrong in caught.value.message
    assert digest in caught.value.message  # what it does list


def test_a_corrupted_blob_is_named(tmp_path):
    layout, digest = _good(tmp_path)
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    hexpart = manifest["layers"][1]["digest"].split(":")[1]
    blob = layout / "blobs" / "sha256" / hexpart
    data = bytearray(blob.read_bytes())
    data[-9] ^= 0xFF  # inside the gzip trailer's CRC: still a gzip file, wrong bytes
    blob.write_bytes(bytes(data))
    with pytest.raises(UserError) as caught:
        import_base(layout, "base", digest, tmp_path / "blobs")
    assert f"base/blobs/sha256/{hexpart}" in caught.value.message
    assert "corrupted" in caught.value.message


@pytest.mark.parametrize("name", ["../escape", "usr/../../escape", "/etc/passwd"])
def test_unsafe_member_names_are_refused(tmp_path, name):
    layout = tmp_path / "base"
    digest = make_layout(layout, [layer_tar({"ok": b"", name: b"x"})])
    with pytest.raises(UserError) as caught:
        import_base(layout, "base", digest, tmp_path / "blobs")
    assert repr(name) in caught.value.message and "base/blobs/sha256/" in caught.value.message


def test_a_malformed_digest_and_a_missing_base(tmp_path):
    with pytest.raises(UserError, match="not a sha256 digest"):
        import_base(tmp_path, "base", "sha256:xyz", tmp_path / "blobs")
    with pytest.raises(UserError, match="nowhere: no such directory or file"):
        import_base(tmp_path / "nowhere", "nowhere", "sha256:" + "0" * 64, tmp_path / "blobs")


@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (apt-get install skopeo)")
def test_docker_archive_and_oci_archive_made_by_skopeo(tmp_path):
    layout, digest = _good(tmp_path)
    archive = tmp_path / "base.tar"
    subprocess.run([SKOPEO, "copy", f"oci:{layout}:base", f"docker-archive:{archive}:base:1"],
                   check=True, capture_output=True)
    config = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())["config"]
    found = import_base(archive, "base.tar", config["digest"], tmp_path / "blobs")
    assert found["kind"] == "docker-archive" and len(found["layers"]) == 2
    assert ["usr/lib/libc.so.6", "file", 0o755, ""] in found["layers"][1]["entries"]
    with pytest.raises(UserError) as caught:
        import_base(archive, "base.tar", digest, tmp_path / "blobs2")
    assert "base.tar:manifest.json" in caught.value.message and "image ID" in caught.value.message
    oci_archive = tmp_path / "base-oci.tar"
    subprocess.run([SKOPEO, "copy", f"oci:{layout}:base", f"oci-archive:{oci_archive}:base"],
                   check=True, capture_output=True)
    found = import_base(oci_archive, "base-oci.tar", digest, tmp_path / "blobs3")
    assert found["kind"] == "oci-archive" and found["manifest_digest"] == digest


def test_an_image_index_pin_takes_its_platform_manifest(tmp_path):
    layout, manifest_digest = _good(tmp_path)
    blobs = layout / "blobs" / "sha256"
    manifest = (blobs / manifest_digest[7:]).read_bytes()
    other = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": "sha256:" + "2" * 64, "size": 1,
             "platform": {"os": "linux", "architecture": "arm64"}}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [other, {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                              "digest": manifest_digest, "size": len(manifest),
                                              "platform": {"os": "linux",
                                                           "architecture": "amd64"}}]}).encode()
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    (blobs / index_digest[7:]).write_bytes(index)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest,
         "size": len(index)}]}))
    found = import_base(layout, "base", index_digest, tmp_path / "blobs")
    assert found["manifest_digest"] == manifest_digest and len(found["layers"]) == 2
    with pytest.raises(UserError, match="no linux/s390x manifest"):
        import_base(layout, "base", index_digest, tmp_path / "blobs", platform="linux/s390x")
