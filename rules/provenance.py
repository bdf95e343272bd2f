"""``occlum_provenance``: SLSA provenance of an ``occlum_package`` or an ``occlum_oci_image``.

A rule of its own (``subject = ":package"`` or ``":image"``) rather than an extra action of
the package and image rules: those stay as they are, and a workspace chooses what it attests.
The statement action's inputs are the subject's files, the instance's measurements and every
source file behind the subject (the inputs of its actions, transitively, that no action
produced and that are not secrets); its params hold the toolchain fingerprints of those
actions and the pinned base images. So the statement changes exactly when what it attests
changes, and it is cacheable: it holds only digests and public facts.

With ``provenance.signing_key`` in WORKSPACE.yaml a second action signs the statement as a
DSSE envelope. The key is a secret of that action (not in its key, params, logs or outputs)
and the action is never cached; analysis refuses the key when its public key is the enclave
signing key's.
"""

from __future__ import annotations

from typing import Any

from occlum_rules import __version__
from occlum_rules.core.rule import LABEL, Attr, File, Rule, RuleContext, Target
from occlum_rules.errors import UserError


def _closure(root: Target) -> list[Target]:
    """The subject and every target it depends on, each once, in a stable order."""
    seen: dict[str, Target] = {}
    todo = [root]
    while todo:
        target = todo.pop()
        if str(target.label) not in seen:
            seen[str(target.label)] = target
            todo.extend(target.direct_deps())
    return [seen[k] for k in sorted(seen)]


def _behind(targets: list[Target]) -> tuple[list[str], list[str], list[str]]:
    """(source paths, toolchain fingerprints, enclave signing keys) of the targets' actions."""
    actions = [a for t in targets for a in t.actions]
    secrets = {path for a in actions for path in a.secrets.values()}
    sources = sorted({path for a in actions for path in a.inputs
                      if path not in a.input_producers and path not in secrets})
    toolchains = sorted({fp for a in actions for fp in a.toolchains})
    keys = sorted({a.secrets["key"] for a in actions if a.kind == "sign" and "key" in a.secrets})
    return sources, toolchains, keys


def _base_uri(base: Target) -> str:
    attrs = base.resolved
    if attrs.get("image"):
        return f"oci://{attrs['image']}"
    if attrs.get("layout"):
        pkg = base.label.package
        return f"oci-layout:{pkg + '/' if pkg else ''}{attrs['layout']}"
    return f"oci-archive:{base.label}"


def _instance(ctx: RuleContext, subject: Target) -> dict[str, Any]:
    inst = subject.resolved.get("instance")
    found = (inst.providers or {}).get("instance") if isinstance(inst, Target) else None
    if found is None:
        raise ctx.error(f"subject: {subject.label} has no occlum_instance")
    return found


def provenance_impl(ctx: RuleContext) -> dict[str, Any]:
    subject = ctx.attr["subject"]
    providers = subject.providers or {}
    params: dict[str, Any] = {"bases": []}
    inputs: list[File | str] = []
    if "package" in providers:
        package = providers["package"]
        files = [package["tarball"], package["manifest"]]
        params.update(subject_kind="package", files=[f.path for f in files])
        inputs += files
    elif "oci_image" in providers:
        image = providers["oci_image"]
        params.update(subject_kind="image", digest_file=image["digest"].path,
                      image_name=f"{image['repository']}:{image['tag']}")
        inputs.append(image["digest"])
        base = subject.resolved.get("base")
        if isinstance(base, Target) and "oci_base" in (base.providers or {}):
            params["bases"] = [{"uri": _base_uri(base),
                                "digest": base.providers["oci_base"]["digest"]}]  # type: ignore[index]
    else:
        raise ctx.error(f"subject: {subject.label} is not an occlum_package or occlum_oci_image "
                        "target")
    instance = _instance(ctx, subject)
    measurements = instance["measurements"]
    # host files the BOM copied are found while the image is assembled, after analysis; the
    # image manifest (path and sha256 of every image file) pins them
    image_manifest = instance["image_manifest"]
    closure = _closure(subject)
    sources, toolchains, enclave_keys = _behind(closure)
    # the BUILD files that declared them (analysis read them; no action has them as inputs)
    sources = sorted({*sources, *(t.location.rsplit(":", 1)[0] for t in closure
                                  if ":" in t.location and not t.location.startswith("<"))})
    inputs += [measurements, image_manifest, *sources]
    params.update(measurements=measurements.path, image_manifest=image_manifest.path,
                  sources=sources, toolchains=toolchains,
                  workspace=ctx.workspace.name, targets=[str(subject.label), str(ctx.label)],
                  builder_version=__version__)
    statement = ctx.declare_file(f"{ctx.label.name}.provenance.json", action="statement")
    ctx.actions.stage(
        name="statement", kind="provenance", func="occlum_rules.actions.provenance:statement",
        inputs=inputs, outputs=[statement], params=params,
        description=f"provenance of {subject.label}")
    files = [statement]
    key = ctx.workspace.provenance.get("signing_key")
    if key:
        signing = ctx.workspace.signing
        enclave_keys += [k for k in (signing.get("key"), signing.get("public_key")) if k]
        try:
            key_id = ctx.fs.provenance_key_id(key, enclave_keys)
        except UserError as exc:
            raise ctx.error(str(exc)) from None
        envelope = ctx.declare_file(f"{ctx.label.name}.dsse.json", action="sign")
        ctx.actions.stage(
            name="sign", kind="provenance.sign", func="occlum_rules.actions.provenance:sign",
            inputs=[statement], outputs=[envelope], params={"key_id": key_id},
            secrets={"key": key}, cacheable=False,
            description=f"sign the provenance of {subject.label} (DSSE)")
        files.append(envelope)
    return {"files": files, "provenance": {"statement": statement,
                                           "envelope": files[1] if key else None}}


occlum_provenance = Rule(
    name="occlum_provenance",
    attrs={"subject": Attr(LABEL, mandatory=True,
                           doc="the occlum_package or occlum_oci_image it attests")},
    impl=provenance_impl,
    doc="An in-toto Statement (SLSA provenance v1) of a package or image; DSSE-signed when "
        "WORKSPACE.yaml names provenance.signing_key.",
)

RULES = [occlum_provenance]
