"""``occlum_package``: a reproducible release tarball of an ``occlum_instance``.

It holds what ``occlum package`` puts in (Occlum.json, build/bin, the signed LibOS, the
PAL and its links, both SEFS images, the protected config, initfs, the status files and
an empty run/ skeleton) under a top directory named after the package, written so the same
instance gives the same bytes on every machine. Beside it: ``<name>.manifest.json``
(identity of the enclave, of every member and of every image file) and ``SHA256SUMS``.
Like ``occlum package`` it refuses debuggable and SIM-mode instances unless ``debug = True``.
"""

from __future__ import annotations

from typing import Any

from occlum_rules.core.rule import BOOL, INT, LABEL, STRING, Attr, Rule, RuleContext
from occlum_rules.toolchains.deflate import package_deflater


def _package_name(ctx: RuleContext, instance_name: str) -> str:
    name = ctx.attr["package_name"] or instance_name
    if name.endswith(".tar.gz"):
        name = name[: -len(".tar.gz")]
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise ctx.error(f"package_name {ctx.attr['package_name']!r} must be a plain file name "
                        "such as 'hello' (the package is <name>.tar.gz)")
    return name


def package_impl(ctx: RuleContext) -> dict[str, Any]:
    target = ctx.attr["instance"]
    instance = (target.providers or {}).get("instance")
    if instance is None:
        raise ctx.error(f"instance: {target.label} is not an occlum_instance target")
    level = ctx.attr["compression_level"]
    if not 1 <= level <= 9:
        raise ctx.error(f"compression_level must be 1..9, got {level}")
    name = _package_name(ctx, target.label.name)
    tarball = ctx.declare_file(f"{name}.tar.gz", action="package")
    manifest = ctx.declare_file(f"{name}.manifest.json", action="package")
    sums = ctx.declare_file("SHA256SUMS", action="package")
    deflater = package_deflater()
    holds_key = bool((target.resolved or target.attrs).get("buildin_image_key"))
    ctx.actions.stage(
        name="package", kind="package", func="occlum_rules.actions.package:package",
        inputs=[*instance["all_outputs"], instance["measurements"], instance["image_manifest"]],
        outputs=[tarball, manifest, sums],
        params={"instance_dir": instance["dir"], "top": name, "debug": bool(ctx.attr["debug"]),
                "level": level, "sgx_mode": instance["sgx_mode"],
                "measurements": instance["measurements"].path,
                "image_manifest": instance["image_manifest"].path,
                # deflate output differs between implementations and versions: key on it
                "deflate": deflater.name, "deflate_version": deflater.version},
        # a built-in image key inside initfs/ is a secret: never put it in a shared cache
        cacheable=not holds_key,
        # in place: the stage copies unchanged deflate segments from the previous package,
        # which it finds where it left it (the tarball itself is replaced atomically)
        in_place=True,
        description=f"package {name}.tar.gz")
    return {"files": [tarball, manifest, sums],
            "package": {"tarball": tarball, "manifest": manifest, "sha256sums": sums,
                        "name": name, "instance": instance["dir"]}}


occlum_package = Rule(
    name="occlum_package",
    attrs={
        "instance": Attr(LABEL, mandatory=True, doc="the occlum_instance to package"),
        "package_name": Attr(STRING, default=None,
                             doc="package (and top directory) name; default: the instance's name"),
        "debug": Attr(BOOL, default=False,
                      doc="allow a debuggable or SIM-mode instance (occlum package --debug)"),
        "compression_level": Attr(INT, default=6, doc="gzip level 1..9 (fixed for reproducibility)"),
    },
    impl=package_impl,
    doc="A reproducible release tarball of an occlum_instance, with manifest and SHA256SUMS.",
)

RULES = [occlum_package]
