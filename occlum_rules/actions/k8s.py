"""The Kubernetes manifest action: read the image digest, the signed enclave's size and the
measurements, then let ``stages.k8s`` lay out (or render the user's template) and write."""

from __future__ import annotations

import json
import re
from pathlib import Path

from occlum_rules.atomic_write import write_atomic
from occlum_rules.core.action import StageContext
from occlum_rules.errors import UserError
from occlum_rules.user_files import read_user_text

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ENCLAVE_SIZE_OFFSET = 40  # metadata_t.enclave_size (SDK metadata.h; see stages.sign.dump)


def enclave_size(signed: str) -> int:
    """``metadata_t.enclave_size`` of the main metadata blob of a signed enclave."""
    from occlum_rules.stages.sign.metadata import read_metadata_area
    from occlum_rules.stages.sign.signer import metadata_area

    area, _ = metadata_area(Path(signed))
    blobs = read_metadata_area(area)
    if not blobs:
        raise UserError("the enclave is not signed (no metadata in .note.sgxmeta)", signed)
    return blobs[0].field("<Q", _ENCLAVE_SIZE_OFFSET)


def manifest(ctx: StageContext) -> None:
    """``occlum_k8s_manifest``: deployment.yaml for the image, by digest."""
    from occlum_rules.stages.k8s import ManifestValues, Port
    from occlum_rules.stages.k8s import manifest as layout

    p = ctx.params
    digest = read_user_text(ctx.root / p["digest"], "image digest").strip()
    if not _DIGEST.fullmatch(digest):
        raise UserError(f"{digest!r} is not an image digest (sha256:<64 hex digits>)", p["digest"])
    measured = json.loads(read_user_text(ctx.root / p["measurements"], "measurements"))
    values = ManifestValues(
        name=p["name"], namespace=p["namespace"], image=f"{p['repository']}@{digest}",
        repository=p["repository"], digest=digest, replicas=p["replicas"],
        ports=[Port(number, protocol) for number, protocol in p["ports"]],
        env={**p["env"], "SGX_MODE": p["sgx_mode"]}, sgx_mode=p["sgx_mode"],
        enclave_size=enclave_size(str(ctx.root / p["signed"])),
        remote_attestation=p["remote_attestation"], mrenclave=measured["mrenclave"],
        mrsigner=measured["mrsigner"], service=p["service"], limits=dict(p["limits"]),
        requests=dict(p["requests"]))
    template = None
    if p["template"] is not None:
        template = (read_user_text(ctx.root / p["template"], "template"), p["template"])
    text = layout(values, template)
    write_atomic(ctx.outputs[0], text.encode(), mode=0o644)
    ctx.log(f"{values.image} ({values.sgx_mode}"
            + (f", {values.epc} EPC" if values.sgx_mode == "HW" else "") + ")")
