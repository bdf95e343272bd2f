"""The ``occlum_provenance`` actions: write the statement (cacheable: it holds only digests
and public facts), and sign it (never cached: it reads the provenance private key, which is a
secret of the action, never in its key, its params, a log or an output)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from occlum_rules.atomic_write import write_atomic
from occlum_rules.core.action import StageContext, key_path
from occlum_rules.stages import provenance as prov

ENCLAVE_FIELDS = ("mrenclave", "mrsigner", "isv_prod_id", "isv_svn", "debuggable", "sgx_mode")


def _subjects(ctx: StageContext) -> list[tuple[str, str]]:
    p = ctx.params
    if p["subject_kind"] == "image":
        text = (ctx.root / p["digest_file"]).read_text().strip()
        return [(p["image_name"], text.removeprefix("sha256:"))]
    return [(Path(path).name, ctx.digests.digest(ctx.root / path)) for path in p["files"]]


def _dependencies(ctx: StageContext) -> list[dict[str, Any]]:
    p = ctx.params
    deps: list[dict[str, Any]] = []
    for path in p["sources"]:
        full = ctx.root / path
        deps.append({"name": key_path(str(full)) if Path(path).is_absolute() else path,
                     "digest": {"sha256": ctx.digests.digest(full)}})
    deps.append({"name": p["image_manifest"],
                 "digest": {"sha256": ctx.digests.digest(ctx.root / p["image_manifest"])},
                 "annotations": {"role": "image manifest: path and sha256 of every file of the "
                                         "enclave image, host files included"}})
    for fingerprint in p["toolchains"]:
        deps.append({"name": "toolchain", "annotations": {"fingerprint": fingerprint},
                     "digest": {"sha256": hashlib.sha256(fingerprint.encode()).hexdigest()}})
    for base in p["bases"]:
        deps.append({"uri": base["uri"], "digest": {"sha256": base["digest"].split(":", 1)[1]},
                     "annotations": {"role": "base image"}})
    return deps


def statement(ctx: StageContext) -> None:
    """Write ``<name>.provenance.json``: canonical bytes, no clock, paths workspace-relative."""
    p = ctx.params
    measurements = ctx.read_json(p["measurements"])
    enclave = {k: measurements.get(k) for k in ENCLAVE_FIELDS}
    st = prov.statement(
        subjects=_subjects(ctx),
        external={"workspace": p["workspace"], "targets": p["targets"],
                  "source_date_epoch": ctx.source_date_epoch},
        internal={"enclave": enclave, "subject_kind": p["subject_kind"]},
        dependencies=_dependencies(ctx), builder_version=p["builder_version"])
    write_atomic(ctx.outputs[0], prov.canonical_json(st), mode=0o644)
    ctx.log(f"provenance of {p['targets'][0]}: {len(st['subject'])} subjects, "
            f"{len(st['predicate']['buildDefinition']['resolvedDependencies'])} dependencies, "
            f"MRENCLAVE {enclave['mrenclave']}")


def sign(ctx: StageContext) -> None:
    """Write the DSSE envelope of the statement, signed with the provenance key."""
    key_file = ctx.secrets["key"]
    key = prov.load_private_key(key_file, "provenance signing key")
    envelope = prov.sign_envelope(ctx.inputs[0].read_bytes(), key)
    write_atomic(ctx.outputs[0], envelope, mode=0o644)
    ctx.log(f"signed the provenance (DSSE, keyid {prov.key_id(key.public_key())[:16]}…)")
