"""The OCI and Docker media types and the canonical JSON every image document is written in.

An image's digest is the sha256 of its manifest bytes, so the bytes of every JSON document
(config, manifest, index) must be the same on every machine: sorted keys, no spaces, UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
# Docker's layer types name the same bytes as OCI's: an OCI manifest uses OCI's names.
AS_OCI_LAYER = {OCI_LAYER: OCI_LAYER, OCI_LAYER_GZIP: OCI_LAYER_GZIP,
                DOCKER_LAYER: OCI_LAYER, DOCKER_LAYER_GZIP: OCI_LAYER_GZIP}
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(obj: Any) -> bytes:
    """The one encoding of image documents (sorted keys, compact, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


def rfc3339(epoch: int) -> str:
    """SOURCE_DATE_EPOCH as the config's ``created`` (UTC, seconds): never the clock."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def hex_of(digest: str, where: str) -> str:
    """The hex part of a ``sha256:<64 hex>`` digest, or ValueError naming ``where``."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ValueError(f"{where}: {digest!r} is not a sha256 digest (sha256:<64 hex digits>)")
    return hexpart
