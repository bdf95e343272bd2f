"""The copy_bom action: BOM + rule outputs → image/ and its manifest (over what ``occlum
init`` puts in image/ first, unless the rule turned that off)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from occlum_rules.core.action import StageContext
from occlum_rules.core.outputs import StampBlob
from occlum_rules.errors import UserError
from occlum_rules.stages.bom import apply_plan, elf_deps, plan_bom, write_manifest
from occlum_rules.stages.bom.apply import tree_entries_of_image


def assemble(ctx: StageContext) -> None:
    params = ctx.params
    image, manifest_path = ctx.outputs
    bom = ctx.root / params["bom"]
    includes = [ctx.root / d for d in params["include_dirs"]]
    extra = {image_dir: [str(ctx.root / p) for p in paths]
             for image_dir, paths in params["extra_files"].items()}
    loader = _loader_config(params)
    elf_cache = ctx.state_dir / "elf-headers.state"
    elf_deps.load_elf_cache(elf_cache)
    origins = {str(ctx.root / p): who for p, who in params.get("origins", {}).items()}
    base = None
    if params.get("init_entries") is not None:  # image/ as `occlum init` leaves it
        from occlum_rules.stages.image_init import init_tree

        base, init_inputs = init_tree(params["init_entries"], ctx.state_dir / "image-init")
        ctx.add_inputs(init_inputs)
    try:
        plan = plan_bom(bom, includes, loader, env=params.get("env", {}), extra_files=extra,
                        origins=origins, initial=base)
    except UserError as exc:
        if exc.where is None:  # about the rule's deps: say which image
            raise UserError(f"{ctx.label}: {exc.message}", exit_code=exc.exit_code) from None
        raise
    for warning in plan.warnings:
        ctx.log(f"warning: {warning}")
    outside = _outside(ctx.root / params["out_dir"])
    ctx.add_inputs(p for p in plan.host_inputs if outside(p))
    image.mkdir(parents=True, exist_ok=True)
    stamps = StampBlob() if ctx.stamp_cut is not None else None
    result = apply_plan(plan, image, sync=True, digests=ctx.digests,
                        previous_manifest=_previous_manifest(manifest_path),
                        stamps=stamps, stamp_cut=ctx.stamp_cut or 0)
    ctx.inputs_read(result.sources_read)
    if result.written or result.removed:
        ctx.log(f"image: {len(result.written)} written, {len(result.unchanged)} unchanged, "
                f"{len(result.removed)} removed")
    write_manifest(manifest_path, result.manifest)
    if stamps is not None:  # apply met every path of image/: the engine need not walk it
        ctx.describe_tree(image, tree_entries_of_image(result.manifest), stamps.encoded())
    elf_deps.save_elf_cache(elf_cache)
    elf_deps.forget_elf_cache()


def _loader_config(params: dict) -> elf_deps.LoaderConfig | str:
    """The loader config the rule chose; never one found by probing this machine's /opt/occlum
    (a partial one must not change a build). ``glibc: host`` = no Occlum install: the host's
    glibc stands in for Occlum's."""
    if params.get("loader_config"):
        return params["loader_config"]
    if params.get("glibc") == "host":
        return elf_deps.host_glibc_config()
    return elf_deps.parse_loader_config(elf_deps.DEFAULT_LOADER_CONFIG_TEXT, None)


def _outside(directory: os.PathLike[str]) -> Callable[[str], bool]:
    """Whether a host path lies outside ``directory`` (the build's outputs are not inputs)."""
    prefix = os.fspath(directory) + os.sep
    return lambda path: not os.path.abspath(path).startswith(prefix)


def _previous_manifest(path) -> list[dict] | None:
    """The manifest this action wrote last time, if it is still there and readable."""
    try:
        return load_manifest(path)
    except (OSError, ValueError):
        return None


def load_manifest(path) -> list[dict]:
    with open(path) as f:
        return json.load(f)
