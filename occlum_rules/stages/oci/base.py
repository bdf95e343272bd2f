"""Base images from the workspace: an OCI image layout directory, an OCI archive (a tar of
a layout) or a docker-archive (``docker save``), checked against the pinned digest.

The pin is what identifies the image to its users: for an OCI layout or archive the digest
of the image manifest (what ``skopeo inspect`` prints as Digest), or of an image index whose
linux/amd64 manifest is then taken; for a docker-archive, which has no manifest, the digest
of the image's config (Docker's image ID). Every blob is checked against its descriptor, every
layer's uncompressed digest against the config's diff_ids, and every layer member's name:
absolute names and ``..`` components are refused, because a runtime would write them
outside the container's root. A layer's bytes are kept as they are (never re-compressed),
so its digest stays the base's.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from occlum_rules.atomic_write import AtomicFile
from occlum_rules.errors import UserError
from occlum_rules.stages.oci import media

CHUNK = 1 << 20


class _Source:
    """Files of a layout, in a directory or a tar, each named for errors."""

    def __init__(self, path: Path, display: str):
        self.path = path
        self.display = display
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if path.is_file():
            try:
                self._tar = tarfile.open(path, "r:*")
                for info in self._tar.getmembers():
                    name = posixpath.normpath(info.name.lstrip("/"))
                    if info.isreg():
                        self._members[name] = info
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise UserError(f"{display}: not a readable tar file ({exc})") from None
        elif not path.is_dir():
            raise UserError(f"{display}: no such directory or file")

    @property
    def kind(self) -> str:
        if self._tar is None:
            return "oci-layout"
        return "docker-archive" if "manifest.json" in self._members and \
            "index.json" not in self._members else "oci-archive"

    def where(self, name: str) -> str:
        return f"{self.display}/{name}" if self._tar is None else f"{self.display}:{name}"

    def has(self, name: str) -> bool:
        return name in self._members if self._tar is not None else (self.path / name).is_file()

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if self._tar is not None:
            info = self._members.get(posixpath.normpath(name))
            handle = self._tar.extractfile(info) if info is not None else None
            if handle is None:
                raise UserError(f"{self.where(name)}: missing")
            with handle:
                yield handle
            return
        try:
            with open(self.path / name, "rb") as fh:
                yield fh
        except FileNotFoundError:
            raise UserError(f"{self.where(name)}: missing") from None

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        with self.open(name) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise UserError(f"{self.where(name)}: implausibly large for a JSON document")
        return data

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _json(src: _Source, name: str, data: bytes | None = None) -> Any:
    try:
        return json.loads(src.read(name) if data is None else data)
    except ValueError as exc:
        raise UserError(f"{src.where(name)}: not valid JSON ({exc})") from None


def _blob_name(src: _Source, digest: str, field_name: str) -> str:
    try:
        return f"blobs/sha256/{media.hex_of(digest, field_name)}"
    except ValueError as exc:
        raise UserError(f"{src.display}: {exc}") from None


def _verified_blob(src: _Source, digest: str, field_name: str) -> bytes:
    name = _blob_name(src, digest, field_name)
    data = src.read(name)
    if media.sha256_digest(data) != digest:
        raise UserError(f"{src.where(name)}: content does not match its digest {digest} "
                        f"(it hashes to {media.sha256_digest(data)}): the blob is corrupted")
    return data


@dataclass
class BaseLayer:
    media_type: str
    digest: str
    diff_id: str
    size: int
    blob: str                 # file name in the imported blobs directory
    entries: list[list] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"media_type": self.media_type, "digest": self.digest, "diff_id": self.diff_id,
                "size": self.size, "blob": self.blob, "entries": self.entries}


def _pick_manifest(src: _Source, pinned: str, platform: str) -> tuple[str, dict]:
    """(manifest digest, manifest) of an OCI layout for the pinned digest."""
    index = _json(src, "index.json")
    listed = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(listed, list):
        raise UserError(f"{src.where('index.json')}: no 'manifests' list")
    hit = next((d for d in listed if isinstance(d, dict) and d.get("digest") == pinned), None)
    if hit is None:
        have = ", ".join(str(d.get("digest")) for d in listed if isinstance(d, dict)) or "none"
        raise UserError(f"{src.where('index.json')}: digest {pinned} (the oci_base's pinned "
                        f"digest) is not listed; it lists {have}")
    doc = _json(src, "", _verified_blob(src, pinned, "digest"))
    if doc.get("mediaType") in media.INDEXES or hit.get("mediaType") in media.INDEXES:
        os_name, _, arch = platform.partition("/")
        choice = next((d for d in doc.get("manifests", []) if isinstance(d, dict) and
                       (d.get("platform") or {}).get("os") == os_name and
                       (d.get("platform") or {}).get("architecture") == arch), None)
        if choice is None:
            raise UserError(f"{src.where(_blob_name(src, pinned, 'digest'))}: the image index "
                            f"has no {platform} manifest")
        return choice["digest"], _json(src, "", _verified_blob(src, choice["digest"],
                                                               "manifests[].digest"))
    return pinned, doc


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _uncompressed(fh: _Reader) -> Iterator[bytes]:
    """The layer's tar bytes (gunzipped when it is gzip), in chunks."""
    first = fh.read(CHUNK)
    if first[:2] != b"\x1f\x8b":
        while first:
            yield first
            first = fh.read(CHUNK)
        return
    inflate = zlib.decompressobj(31)
    data = first
    while data:
        yield inflate.decompress(data)
        while inflate.eof and inflate.unused_data:  # concatenated gzip members
            rest = inflate.unused_data
            inflate = zlib.decompressobj(31)
            yield inflate.decompress(rest)
        data = fh.read(CHUNK)
    yield inflate.flush()


def _safe_name(raw: str, where: str) -> str:
    name = raw[2:] if raw.startswith("./") else raw
    name = name.rstrip("/")
    if raw.startswith("/") or ".." in name.split("/"):
        raise UserError(f"{where}: layer member {raw!r} is absolute or has a '..' component; "
                        "refusing this base (a runtime would write it outside the container)")
    return name


def _entries(path: Path, where: str) -> list[list]:
    entries: list[list] = []
    try:
        with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for info in tar:
                name = _safe_name(info.name, where)
                if not name or name == ".":
                    continue
                if info.islnk():
                    _safe_name(info.linkname, where)
                    kind = "hardlink"
                elif info.issym():
                    kind = "symlink"
                elif info.isdir():
                    kind = "dir"
                elif info.isreg():
                    kind = "file"
                else:
                    continue  # devices and FIFOs: present, never resolved by the check
                entries.append([name, kind, info.mode & 0o7777, info.linkname])
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{where}: not a readable layer tar ({exc})") from None
    return entries


def _import_layer(src: _Source, name: str, digest: str | None, diff_id: str, blobs: Path,
                  where_field: str) -> BaseLayer:
    """Copy one layer blob into ``blobs`` checking its digests, and list its entries."""
    compressed, raw = hashlib.sha256(), hashlib.sha256()
    size = 0
    tmp = AtomicFile(blobs / "incoming", sole_writer=True)
    try:
        with src.open(name) as fh:
            reader = _Tee(fh, compressed, tmp.file)
            try:
                for chunk in _uncompressed(reader):
                    raw.update(chunk)
            except zlib.error as exc:
                raise UserError(f"{src.where(name)}: corrupted gzip stream ({exc})") from None
            size = reader.size
    except BaseException:
        tmp.discard()
        raise
    actual = f"sha256:{compressed.hexdigest()}"
    if digest is not None and actual != digest:
        tmp.discard()
        raise UserError(f"{src.where(name)}: content does not match its digest {digest} "
                        f"({where_field}; it hashes to {actual}): the blob is corrupted")
    if f"sha256:{raw.hexdigest()}" != diff_id:
        tmp.discard()
        raise UserError(f"{src.where(name)}: uncompressed content sha256:{raw.hexdigest()} "
                        f"does not match the config's rootfs.diff_ids entry {diff_id}")
    hexpart = actual.split(":", 1)[1]
    tmp.commit()
    os.replace(blobs / "incoming", blobs / hexpart)
    with open(blobs / hexpart, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    entries = _entries(blobs / hexpart, src.where(name))
    return BaseLayer(media.OCI_LAYER_GZIP if gz else media.OCI_LAYER, actual, diff_id, size,
                     hexpart, entries)


class _Tee:
    """A reader that hashes what passes through it and copies it to ``out``."""

    def __init__(self, fh: IO[bytes], sha: Any, out: IO[bytes]):
        self.fh, self.sha, self.out, self.size = fh, sha, out, 0

    def read(self, n: int = -1, /) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        self.out.write(data)
        self.size += len(data)
        return data


def _diff_ids(src: _Source, config: Any, config_name: str, count: int) -> list[str]:
    ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(ids, list) or len(ids) != count:
        raise UserError(f"{src.where(config_name)}: rootfs.diff_ids must list one digest per "
                        f"layer ({count})")
    return ids


def import_base(path: Path, display: str, pinned: str, blobs: Path,
                platform: str = "linux/amd64") -> dict:
    """Check the base against ``pinned`` and copy its layers into ``blobs``; the base's
    description (kind, digest, config, layers with their entries)."""
    try:
        media.hex_of(pinned, "digest")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    src = _Source(path, display)
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        if src.kind == "docker-archive":
            return _import_docker_archive(src, pinned, blobs)
        if src.has("oci-layout"):
            layout = _json(src, "oci-layout")
            if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
                raise UserError(f"{src.where('oci-layout')}: no imageLayoutVersion")
        else:
            raise UserError(f"{src.display}: neither an OCI image layout (oci-layout, index.json) "
                            "nor a docker-archive (manifest.json)")
        digest, manifest = _pick_manifest(src, pinned, platform)
        if manifest.get("mediaType", media.OCI_MANIFEST) not in media.MANIFESTS:
            raise UserError(f"{src.where(_blob_name(src, digest, 'digest'))}: mediaType "
                            f"{manifest.get('mediaType')!r} is not an image manifest")
        config_desc = manifest.get("config") or {}
        config_name = _blob_name(src, str(config_desc.get("digest")), "config.digest")
        config = _json(src, config_name, _verified_blob(src, str(config_desc.get("digest")),
                                                        "config.digest"))
        descs = manifest.get("layers") or []
        ids = _diff_ids(src, config, config_name, len(descs))
        layers = []
        for i, desc in enumerate(descs):
            if desc.get("mediaType") not in media.AS_OCI_LAYER:
                raise UserError(f"{src.where(_blob_name(src, digest, 'digest'))}: layers[{i}] "
                                f"has media type {desc.get('mediaType')!r}, not a tar layer")
            name = _blob_name(src, str(desc.get("digest")), f"layers[{i}].digest")
            layers.append(_import_layer(src, name, desc["digest"], ids[i], blobs,
                                        f"layers[{i}].digest"))
        return {"kind": src.kind, "pinned": pinned, "manifest_digest": digest,
                "config": config, "layers": [layer.to_json() for layer in layers]}
    finally:
        src.close()


def _import_docker_archive(src: _Source, pinned: str, blobs: Path) -> dict:
    images = _json(src, "manifest.json")
    if not isinstance(images, list) or not images:
        raise UserError(f"{src.where('manifest.json')}: expected a non-empty list of images")
    seen = []
    for image in images:
        config_name = str(image.get("Config"))
        data = src.read(config_name)
        digest = media.sha256_digest(data)
        seen.append(digest)
        if digest != pinned:
            continue
        config = _json(src, config_name, data)
        names = image.get("Layers") or []
        ids = _diff_ids(src, config, config_name, len(names))
        layers = [_import_layer(src, str(n), None, ids[i], blobs, f"Layers[{i}]")
                  for i, n in enumerate(names)]
        return {"kind": src.kind, "pinned": pinned, "manifest_digest": None, "config": config,
                "layers": [layer.to_json() for layer in layers]}
    raise UserError(f"{src.where('manifest.json')}: no image whose config has digest {pinned} "
                    f"(the oci_base's pinned digest; a docker-archive is pinned by its image "
                    f"ID, the config digest); it holds {', '.join(seen)}")
