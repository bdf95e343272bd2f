"""The image documents (config, manifest, index) and the two ways the image is written: an
OCI image layout directory and a docker-archive tarball for ``docker load`` / ``podman load``.

Nothing here reads a clock or the machine: ``created`` and every history entry carry
SOURCE_DATE_EPOCH, the documents are canonical JSON, and the docker-archive's tar members
have fixed owners, modes and mtimes. The layers' bytes are copied as they are: their digests
were computed when they were written, and nothing is compressed here.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.stages.oci import media
from occlum_rules.stages.package_stream import Member, tar_info


@dataclass(frozen=True)
class ImageLayer:
    media_type: str
    digest: str
    diff_id: str
    size: int
    blob: Path        # the blob's bytes on disk
    created_by: str   # the history entry


@dataclass(frozen=True)
class Settings:
    """The container settings of the rule (None: keep the base's)."""

    entrypoint: list[str] | None
    cmd: list[str] | None
    env: list[str]
    workdir: str | None
    exposed_ports: list[str]
    labels: dict[str, str]
    user: str | None


def _merge_env(base: list[str], ours: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in [*base, *ours]:
        key = item.split("=", 1)[0]
        merged.pop(key, None)
        merged[key] = item
    return list(merged.values())


def container_config(base: dict | None, settings: Settings) -> dict[str, Any]:
    """The config's ``config`` section: the base's, overridden by the rule's settings (a new
    entrypoint drops the base's cmd, as ``docker build`` does)."""
    old = dict((base or {}).get("config") or {})
    new: dict[str, Any] = {k: v for k, v in old.items() if v not in (None, [], {}, "")}
    env = _merge_env(list(old.get("Env") or []), settings.env)
    if env:
        new["Env"] = env
    if settings.entrypoint is not None:
        new["Entrypoint"] = settings.entrypoint
        new.pop("Cmd", None)
    if settings.cmd is not None:
        new["Cmd"] = settings.cmd
    if settings.workdir is not None:
        new["WorkingDir"] = settings.workdir
    if settings.user is not None:
        new["User"] = settings.user
    ports = dict(old.get("ExposedPorts") or {})
    for port in settings.exposed_ports:
        ports[port if "/" in port else f"{port}/tcp"] = {}
    if ports:
        new["ExposedPorts"] = ports
    labels = {**(old.get("Labels") or {}), **settings.labels}
    if labels:
        new["Labels"] = labels
    return new


def image_config(base: dict | None, base_layers: list[ImageLayer], layers: list[ImageLayer],
                 settings: Settings, epoch: int) -> dict[str, Any]:
    created = media.rfc3339(epoch)
    history = list((base or {}).get("history") or [])
    if base is not None and not history:
        history = [{"created_by": "base layer", "created": created} for _ in base_layers]
    history += [{"created": created, "created_by": layer.created_by, "comment": "occlum-rules"}
                for layer in layers]
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": container_config(base, settings),
        "rootfs": {"type": "layers",
                   "diff_ids": [layer.diff_id for layer in [*base_layers, *layers]]},
        "history": history,
    }


def image_manifest(config: bytes, layers: list[ImageLayer],
                   annotations: dict[str, str]) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "config": media.descriptor(media.OCI_CONFIG, config),
        "layers": [{"mediaType": media.AS_OCI_LAYER[layer.media_type], "digest": layer.digest,
                    "size": layer.size} for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(sorted(annotations.items()))
    return manifest


def image_index(manifest: bytes, tag: str) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": media.OCI_INDEX,
            "manifests": [media.descriptor(media.OCI_MANIFEST, manifest,
                                           annotations={media.REF_NAME: tag})]}


def _replace_dir(out: Path, fill: Any) -> None:
    """Make directory ``out`` anew: filled beside it, then renamed into place."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_layout(out: Path, *, config: bytes, manifest: bytes, index: bytes,
                 layers: list[ImageLayer]) -> None:
    """An OCI image layout directory: ``oci-layout``, ``index.json``, ``blobs/sha256/…``."""
    def fill(root: Path) -> None:
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        for data in (config, manifest):
            (blobs / media.sha256_digest(data).split(":")[1]).write_bytes(data)
        for layer in layers:
            shutil.copyfile(layer.blob, blobs / layer.digest.split(":")[1])
        (root / "oci-layout").write_bytes(
            media.canonical_json({"imageLayoutVersion": media.OCI_LAYOUT_VERSION}))
        (root / "index.json").write_bytes(index)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    _replace_dir(out, fill)


def write_docker_archive(out: Path, *, config: bytes, layers: list[ImageLayer],
                         repo_tag: str, mtime: int) -> None:
    """A ``docker save``-style tarball: ``manifest.json``, the config and the layer blobs
    under ``blobs/sha256/``, as deterministic GNU tar members."""
    config_name = f"blobs/sha256/{media.sha256_digest(config).split(':')[1]}"
    layer_names = [f"blobs/sha256/{layer.digest.split(':')[1]}" for layer in layers]
    manifest = media.canonical_json([{"Config": config_name, "RepoTags": [repo_tag],
                                      "Layers": layer_names}])
    target = AtomicFile(out, sole_writer=True)
    try:
        with tarfile.open(fileobj=target.file, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name in ("blobs", "blobs/sha256"):
                tar.addfile(tar_info(Member(name, "dir", 0o755), "", mtime))
            written = set()
            for name, data in ((config_name, config), ("manifest.json", manifest)):
                info = tar_info(Member(name, "file", 0o644, len(data)), "", mtime)
                tar.addfile(info, io.BytesIO(data))
            for name, layer in zip(layer_names, layers):
                if name in written:
                    continue
                written.add(name)
                info = tar_info(Member(name, "file", 0o644, layer.size), "", mtime)
                with open(layer.blob, "rb") as fh:
                    tar.addfile(info, fh)
    except BaseException:
        target.discard()
        raise
    target.commit()

