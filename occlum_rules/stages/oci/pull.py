"""Pull an image pinned by digest from a registry into an OCI layout, every blob verified.

The manifest (or image index, then the platform's manifest), the config and the layers are
fetched by digest and each is hashed while it streams to its file: a registry answering
other bytes than the digest names is an error, never a silently different base. The layout
written here is then imported exactly like an ``oci_base`` layout (``stages/oci/base``), so
a pulled base and a vendored one are checked by the same code and give the same provider.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO

from occlum_rules.atomic_write import AtomicFile, write_atomic
from occlum_rules.stages.oci import media
from occlum_rules.stages.oci.registry import Registry

_ACCEPT = ", ".join([*media.MANIFESTS, *media.INDEXES])
_REDIRECTS = (301, 302, 303, 307, 308)


class _Hashing:
    """A writer that hashes and counts what it passes on."""

    def __init__(self, out: IO[bytes]):
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)


def _manifest(reg: Registry, digest: str) -> tuple[bytes, dict]:
    what = f"get manifest {digest}"
    resp = reg.check(reg.request("GET", reg.path("manifests", digest), what,
                                 headers={"Accept": _ACCEPT}), what, (200,))
    actual = media.sha256_digest(resp.body)
    if actual != digest:
        raise reg.fail(f"{what}: the registry answered bytes that hash to {actual}, not the "
                       "pinned digest (wrong digest or a tampered answer)")
    try:
        doc = json.loads(resp.body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise reg.fail(f"{what}: the answer is not a JSON manifest or index")
    return resp.body, doc


def _blob(reg: Registry, digest: str, dest: Path) -> None:
    """GET a blob (following a redirect to its storage) into ``dest``, verified."""
    what = f"get blob {digest}"
    target = reg.path("blobs", digest)
    tmp = AtomicFile(dest, mode=0o644)
    try:
        for _ in range(4):
            sink = _Hashing(tmp.file)
            resp = reg.request("GET", target, what, stream_to=sink)
            if resp.status not in _REDIRECTS:
                break
            target = resp.headers.get("location") or ""
            if not target:
                break
        reg.check(resp, what, (200,))
        actual = f"sha256:{sink.sha.hexdigest()}"
        if actual != digest:
            raise reg.fail(f"{what}: the registry answered {sink.size} bytes that hash to "
                           f"{actual}, not the digest the manifest names")
        tmp.commit()
    finally:
        tmp.discard()


def pull_layout(reg: Registry, pinned: str, platform: str, layout: Path) -> None:
    """Write the image ``pinned`` (manifest or index digest) as an OCI layout at ``layout``."""
    media.hex_of(pinned, "digest")
    reg.login("pull")
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    try:
        body, doc = _manifest(reg, pinned)
        top_type = doc.get("mediaType") or (media.OCI_INDEX if "manifests" in doc
                                            else media.OCI_MANIFEST)
        write_atomic(blobs / media.hex_of(pinned, "digest"), body, mode=0o644)
        manifest = doc
        if top_type in media.INDEXES:
            os_name, _, arch = platform.partition("/")
            choice = next((d for d in doc.get("manifests") or [] if isinstance(d, dict)
                           and (d.get("platform") or {}).get("os") == os_name
                           and (d.get("platform") or {}).get("architecture") == arch), None)
            if choice is None:
                raise reg.fail(f"get manifest {pinned}: the image index has no {platform} "
                               "manifest")
            sub = str(choice.get("digest"))
            body, manifest = _manifest(reg, sub)
            write_atomic(blobs / media.hex_of(sub, "manifests[].digest"), body, mode=0o644)
        try:
            descs = [manifest["config"], *manifest["layers"]]
            digests = [str(d["digest"]) for d in descs]
        except (KeyError, TypeError):
            raise reg.fail(f"manifest of {pinned}: no config or layers") from None
        for digest in dict.fromkeys(digests):
            dest = blobs / media.hex_of(digest, "manifest")
            if not dest.is_file():
                _blob(reg, digest, dest)
    finally:
        reg.close()
    write_atomic(layout / "oci-layout",
                 media.canonical_json({"imageLayoutVersion": media.OCI_LAYOUT_VERSION}))
    write_atomic(layout / "index.json", media.canonical_json({
        "schemaVersion": 2, "mediaType": media.OCI_INDEX,
        "manifests": [{"mediaType": top_type, "digest": pinned,
                       "size": (blobs / media.hex_of(pinned, "digest")).stat().st_size}]}))
