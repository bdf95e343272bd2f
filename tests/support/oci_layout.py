"""Hand-made OCI image layouts (written with tarfile and json here, not with the code under
test), so tests can feed oci_base good and bad bases."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def layer_tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """An uncompressed tar holding ``files`` (names as given, even unsafe ones) and symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layout(root: Path, layers: list[bytes], env: list[str] | None = None) -> str:
    """An OCI layout with gzip layers; returns the manifest digest (what a pin names)."""
    descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
              **_blob(root, gzip.compress(tar, mtime=0))} for tar in layers]
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": env or ["PATH=/usr/bin:/bin"]},
              "rootfs": {"type": "layers",
                         "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in layers]},
              "history": [{"created_by": f"layer {i}"} for i in range(len(layers))]}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **_blob(root, json.dumps(config).encode())},
                "layers": descs}
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             **_blob(root, json.dumps(manifest).encode()),
             "annotations": {"org.opencontainers.image.ref.name": "base"}}
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    return mdesc["digest"]
