"""Push a built image (its OCI layout) to a registry, blob by blob, then its manifest.

Blobs the repository already holds are skipped after a HEAD, so re-pushing an unchanged
image uploads nothing; blobs another repository of the registry holds are mounted instead
of uploaded when ``mount_from`` names it. Blobs are streamed from their files (monolithic
PUT up to ``chunk_size``, PATCH chunks of ``chunk_size`` above), never read whole. The
manifest is pushed byte for byte as built, so the digest the registry answers is the
image's own digest; a different answer is an error, not a warning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from occlum_rules.atomic_write import write_atomic
from occlum_rules.credentials import REGISTRY_ENV, credentials_from_env
from occlum_rules.errors import UserError
from occlum_rules.stages.oci import media
from occlum_rules.stages.oci.registry import (
    TAG,
    Reference,
    Registry,
    parse_reference,
    timeouts_from_env,
    upload_location,
    with_query,
)

DEFAULT_CHUNK = 64 << 20


@dataclass
class LocalImage:
    """A built image's manifest and the blob files it references, read from its layout."""

    digest: str
    media_type: str
    manifest: bytes
    blobs: list[tuple[str, int, Path]]  # digest, size, file


@dataclass
class PushResult:
    reference: str                # REGISTRY/REPO@sha256:…
    tags: list[str]
    uploaded: int = 0
    skipped: int = 0
    mounted: int = 0
    bytes_up: int = 0
    details: list[str] = field(default_factory=list)


def read_layout(layout: Path, expected: str | None = None) -> LocalImage:
    """The image of a layout written by ``occlum_oci_image`` (one manifest in index.json);
    ``expected`` is ``image.digest``, which the manifest's bytes must hash to."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        desc = index["manifests"][0]
        digest, media_type = desc["digest"], desc.get("mediaType", media.OCI_MANIFEST)
        hexpart = media.hex_of(digest, f"{layout}/index.json")
        manifest = (layout / "blobs" / "sha256" / hexpart).read_bytes()
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"{layout}: not a readable image layout ({exc}); build the image "
                        "first") from None
    if media.sha256_digest(manifest) != digest:
        raise UserError(f"{layout}: the manifest blob does not hash to {digest}; rebuild the "
                        "image")
    if expected is not None and expected != digest:
        raise UserError(f"{layout}: its manifest is {digest} but image.digest says {expected}; "
                        "rebuild the image")
    doc = json.loads(manifest)
    blobs = []
    for d in [doc["config"], *doc["layers"]]:
        path = layout / "blobs" / "sha256" / media.hex_of(d["digest"], "manifest")
        if not path.is_file() or path.stat().st_size != d["size"]:
            raise UserError(f"{path}: missing or of the wrong size; rebuild the image")
        blobs.append((d["digest"], int(d["size"]), path))
    unique = list({b[0]: b for b in blobs}.values())
    return LocalImage(digest, media_type, manifest, unique)


def _has_blob(reg: Registry, digest: str) -> bool:
    what = f"check blob {digest[:19]}…"
    resp = reg.check(reg.request("HEAD", reg.path("blobs", digest), what), what, (200, 404))
    return resp.status == 200


def _start_upload(reg: Registry, digest: str) -> str | None:
    """Mount the blob from a ``mount_from`` repository (None: done) or open an upload
    session (its URL)."""
    for source in reg.mount_from:
        what = f"mount blob {digest[:19]}… from {source}"
        target = f"/v2/{reg.repository}/blobs/uploads/?" + \
            with_query("", mount=digest, **{"from": source})[1:]
        resp = reg.check(reg.request("POST", target, what), what, (201, 202))
        if resp.status == 201:
            return None
        return upload_location(reg, resp, what)  # not mounted: upload into this session
    what = f"start upload of blob {digest[:19]}…"
    resp = reg.check(reg.request("POST", f"/v2/{reg.repository}/blobs/uploads/", what),
                     what, (202,))
    return upload_location(reg, resp, what)


def _upload(reg: Registry, location: str, digest: str, size: int, path: Path,
            chunk_size: int) -> None:
    what = f"upload blob {digest[:19]}… ({size} bytes)"
    octets = {"Content-Type": "application/octet-stream"}
    with open(path, "rb") as fh:
        if size <= chunk_size:
            resp = reg.request("PUT", with_query(location, digest=digest), what, headers=octets,
                               body=fh, length=size)
            reg.check(resp, what, (201,))
            return
        offset = 0
        while offset < size:
            data = fh.read(chunk_size)  # one chunk in memory, never the whole blob
            end = offset + len(data) - 1
            resp = reg.request("PATCH", location, what, body=data, length=len(data),
                               headers={**octets, "Content-Range": f"{offset}-{end}"})
            reg.check(resp, f"{what}: chunk at {offset}", (202,))
            location = upload_location(reg, resp, what)
            offset += len(data)
    resp = reg.request("PUT", with_query(location, digest=digest), what, body=b"", length=0)
    reg.check(resp, f"{what}: finish", (201,))


def _put_manifest(reg: Registry, image: LocalImage, ref: str) -> None:
    what = f"put manifest {ref}"
    resp = reg.request("PUT", reg.path("manifests", ref), what, body=image.manifest,
                       headers={"Content-Type": image.media_type})
    reg.check(resp, what, (200, 201))
    answered = resp.headers.get("docker-content-digest")
    if answered and answered != image.digest:
        raise reg.fail(f"{what}: the registry stored it as {answered}, not the image's digest "
                       f"{image.digest} (it rewrote the manifest)")


def push(reg: Registry, image: LocalImage, tags: list[str],
         chunk_size: int = DEFAULT_CHUNK) -> PushResult:
    """Push ``image`` to ``reg``'s repository under ``tags`` (and by digest)."""
    if chunk_size < 1:
        raise UserError("chunk size must be at least 1 byte")
    reg.login("pull,push")
    result = PushResult(f"{reg.host}/{reg.repository}@{image.digest}", list(tags))
    try:
        for digest, size, path in image.blobs:
            if _has_blob(reg, digest):
                result.skipped += 1
                continue
            location = _start_upload(reg, digest)
            if location is None:
                result.mounted += 1
                continue
            _upload(reg, location, digest, size, path, chunk_size)
            result.uploaded += 1
            result.bytes_up += size
        for tag in tags:
            _put_manifest(reg, image, tag)
        _put_manifest(reg, image, image.digest)
    finally:
        reg.close()
    return result


def summary(result: PushResult) -> str:
    return (f"pushed {result.reference}: {result.uploaded} blobs uploaded "
            f"({result.bytes_up} bytes), {result.skipped} already present, "
            f"{result.mounted} mounted; tags: {', '.join(result.tags) or 'none'}")


def record(pushed_file: Path, result: PushResult) -> None:
    """Write ``REGISTRY/REPO@sha256:…`` (one line) for CI and deployment manifests."""
    write_atomic(pushed_file, f"{result.reference}\n".encode(), mode=0o644)


def known_mount_sources(summary_file: Path, ref: Reference) -> list[str]:
    """The repository an ``oci_pull`` base came from (recorded in ``image.json``) when it is
    on the registry pushed to: its layers are mounted there instead of uploaded."""
    try:
        source = json.loads(summary_file.read_text()).get("base_source")
        base = parse_reference(source, allow_tag=False) if isinstance(source, str) else None
    except (OSError, ValueError, UserError):
        return []
    if base is None or base.registry != ref.registry or base.repository == ref.repository:
        return []
    return [base.repository]


def push_built_image(layout: Path, digest_file: Path, reference: str, extra_tags: list[str],
                     *, insecure: bool = False, mount_from: list[str] | None = None,
                     default_tag: str | None = None, chunk_size: int = DEFAULT_CHUNK,
                     environ: Mapping[str, str] | None = None) -> tuple[PushResult, Path]:
    """What ``occlum-rules push`` and ``doit push`` do: push a built image to
    ``REGISTRY/REPO[:TAG]`` with credentials from the environment, then record the pushed
    reference as ``image.pushed`` beside ``image.digest`` (the image's output directory)."""
    ref = parse_reference(reference)
    tags = list(dict.fromkeys([*([ref.tag] if ref.tag else []), *extra_tags]))
    if not tags and default_tag:
        tags = [default_tag]
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise UserError(f"{tag!r} is not a valid image tag")
    if not digest_file.is_file():
        raise UserError(f"{digest_file}: missing; build the image first")
    image = read_layout(layout, digest_file.read_text().strip())
    sources = [*(mount_from or ()), *known_mount_sources(digest_file.parent / "image.json", ref)]
    connect, read = timeouts_from_env(environ)
    reg = Registry(ref.registry, ref.repository, insecure=insecure,
                   credentials=credentials_from_env(environ, REGISTRY_ENV),
                   mount_from=tuple(dict.fromkeys(sources)), connect_timeout=connect,
                   read_timeout=read)
    result = push(reg, image, tags, chunk_size)
    pushed = digest_file.parent / "image.pushed"
    record(pushed, result)
    return result, pushed
