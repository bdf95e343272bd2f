"""The ``occlum_package`` action: refuse what ``occlum package`` refuses, then write the
deterministic tarball, its release manifest and SHA256SUMS."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from occlum_rules.atomic_write import AtomicFile, write_atomic
from occlum_rules.core.action import StageContext
from occlum_rules.errors import UserError


def _write(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=0o644)


def _write_streamed(path: Path, chunks: Iterable[bytes]) -> str:
    """Write ``chunks`` to ``path`` as :func:`_write` would their join; return its sha256.
    A release manifest lists every file twice (160k records on a 4 GiB image): written as
    it is made, its text is never whole in memory."""
    sha = hashlib.sha256()
    f = AtomicFile(path, mode=0o644)
    try:
        for chunk in chunks:
            sha.update(chunk)
            f.write(chunk)
    except BaseException:
        f.discard()
        raise
    f.commit()
    return sha.hexdigest()


def refusal(label: str, occlum_json: dict, measurements: dict, sgx_mode: str,
            debug: bool) -> str | None:
    """Why a release package must not be made (the reasons ``occlum package`` gives), or None."""
    if debug:
        return None
    metadata = occlum_json.get("metadata") if isinstance(occlum_json, dict) else None
    configured = isinstance(metadata, dict) and metadata.get("debuggable") is True
    if configured or measurements.get("debuggable"):
        return (f"{label}: refusing to package a debuggable enclave (Occlum.json "
                "metadata.debuggable is true, so its SIGSTRUCT allows debugging). If that is not "
                "intended, set metadata = {\"debuggable\": False} on the occlum_instance (or in "
                "its Occlum.json) and build again; to package a debug build on purpose, set "
                "debug = True on this occlum_package")
    if sgx_mode == "SIM":
        return (f"{label}: refusing to package a simulation-mode (SIM) instance: release packages "
                "are for SGX hardware (HW) or HYPER mode. Build the instance with "
                "sgx_mode = \"HW\" or \"HYPER\"; to package a simulation build on purpose, set "
                "debug = True on this occlum_package")
    return None


def package(ctx: StageContext) -> None:
    from occlum_rules.stages.deflate import deflater
    from occlum_rules.stages.package import (
        compressor_record,
        iter_bill_of_materials,
        manifest_chunks,
        package_manifest,
        select_members,
        sha256sums,
    )
    from occlum_rules.stages.package_stream import write_package

    p = ctx.params
    instance = ctx.root / p["instance_dir"]
    try:
        occlum_json = json.loads((instance / "Occlum.json").read_text())
        measurements = json.loads((ctx.root / p["measurements"]).read_text())
        mode = (instance / ".sgx_mode").read_text().strip() or p["sgx_mode"]
    except (OSError, ValueError) as exc:
        raise UserError(f"{ctx.label}: cannot read the instance ({exc})") from None
    why = refusal(ctx.label, occlum_json, measurements, mode, p["debug"])
    if why:
        raise UserError(why)
    tarball, manifest_file, sums = ctx.outputs
    compressor = deflater(p["deflate"])
    if compressor.version != p["deflate_version"]:
        raise UserError(f"{ctx.label}: {compressor.name} is now version {compressor.version}, "
                        f"but the build was planned with {p['deflate_version']}; run the build "
                        "again")
    members = select_members(instance, mode)
    result = write_package(members, p["top"], tarball, mtime=ctx.source_date_epoch,
                           level=p["level"], state_path=ctx.state_dir / "segments.state",
                           known=ctx.digests, raw_digest=True, deflater=compressor)
    ctx.digests.remember(tarball, result.sha256)  # hashed while written: not again for the cache
    del members  # the result keeps them (its contents) until the manifest is written
    try:  # a record per image file: read after the tarball, so not in memory while it is made
        image_bom = iter_bill_of_materials((ctx.root / p["image_manifest"]).read_bytes())
    except (OSError, ValueError) as exc:
        raise UserError(f"{ctx.label}: cannot read the instance ({exc})") from None
    manifest = package_manifest(
        file_name=tarball.name, top=p["top"], label=ctx.label, result=result,
        measurements=measurements, image_bom=image_bom, stream=True,
        source_date_epoch=ctx.source_date_epoch, level=p["level"],
        compressor=compressor_record(compressor.name, compressor.version, p["level"]))
    manifest_sha = _write_streamed(manifest_file, manifest_chunks(manifest))
    del manifest, image_bom
    _write(sums, sha256sums([(tarball.name, result.sha256), (manifest_file.name, manifest_sha)]))
    if p["debug"] and (measurements.get("debuggable") or mode == "SIM"):
        ctx.log(f"warning: packaged a {'debuggable' if measurements.get('debuggable') else 'SIM'}"
                " enclave (debug = True): not for production")
    ctx.log(f"packaged {tarball.name} ({result.size} bytes, sha256 {result.sha256[:16]}…; "
            f"{result.deflated} segments deflated by {compressor.identity}, {result.reused} "
            "reused); "
            f"MRENCLAVE {measurements['mrenclave']}, MRSIGNER {measurements['mrsigner']}")
