"""The OCI actions: context → stage arguments. Layers (from a BOM tree, from files, from a
part of an instance), a base image imported from the workspace, and the image itself."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from occlum_rules.atomic_write import write_atomic
from occlum_rules.core.action import StageContext
from occlum_rules.errors import UserError


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, sort_keys=True, indent=1).encode() + b"\n", mode=0o644)


def _finish_layer(ctx: StageContext, members: list, *, reuse: bool = False) -> None:
    from occlum_rules.stages.oci.layer import write_layer

    blob, descriptor = ctx.outputs
    layer = write_layer(members, blob, mtime=ctx.source_date_epoch,
                        level=ctx.params["level"], known=ctx.digests,
                        state_path=ctx.state_dir / "segments.state" if reuse else None)
    ctx.digests.remember(blob, layer.digest.split(":")[1])
    _write_json(descriptor, {**layer.to_json(), "created_by": ctx.params["created_by"]})
    ctx.log(f"layer {layer.digest[:19]}… ({layer.size} bytes, {len(members)} entries)")


def layer_from_tree(ctx: StageContext) -> None:
    """An ``oci_layer`` of an ``occlum_bom`` image tree."""
    from occlum_rules.stages.oci.layer import tree_members

    _finish_layer(ctx, tree_members(ctx.root / ctx.params["tree"], ctx.params["prefix"]))


def layer_from_files(ctx: StageContext) -> None:
    """An ``oci_layer`` of files placed at container paths."""
    from occlum_rules.stages.oci.layer import file_members

    _finish_layer(ctx, file_members((dest, ctx.root / src) for dest, src in ctx.params["files"]))


def instance_layer(ctx: StageContext) -> None:
    """One of the instance's layers (see ``stages/oci/instance_layers``)."""
    from occlum_rules.stages.oci.instance_layers import group_members

    p = ctx.params
    # in place: the image SEFS changes a few of its files per edit, so most segments of
    # the previous blob are copied instead of deflated again
    _finish_layer(ctx, group_members(ctx.root / p["instance_dir"], p["patterns"],
                                     p["container_dir"]), reuse=True)


def base(ctx: StageContext) -> None:
    """An ``oci_base``: check the base against its pinned digest and import its layers."""
    from occlum_rules.stages.oci.base import import_base

    p = ctx.params
    descriptor, blobs = ctx.outputs
    found = import_base(ctx.root / p["source"], p["source"], p["digest"], blobs,
                        platform=p["platform"])
    _write_json(descriptor, found)
    ctx.log(f"base {p['source']} ({found['kind']}, {p['digest'][:19]}…): "
            f"{len(found['layers'])} layers checked")


def _default_program(ctx: StageContext) -> str:
    """The first program of the instance's first entry point: the first regular file
    (by name) directly in that directory of the image."""
    p = ctx.params
    config = ctx.read_json(p["occlum_json"])
    points = config.get("entry_points") if isinstance(config, dict) else None
    if not isinstance(points, list) or not points or not isinstance(points[0], str):
        raise UserError(f"{ctx.label}: the instance's Occlum.json has no entry_points; set cmd "
                        "on the occlum_oci_image to say which program to run")
    top = points[0].strip("/")
    names = sorted(e["path"] for e in ctx.read_json(p["image_manifest"])
                   if e.get("type") == "file" and e.get("path", "").rpartition("/")[0] == top)
    if not names:
        raise UserError(f"{ctx.label}: the image has no program in its first entry point "
                        f"{points[0]}; set cmd on the occlum_oci_image")
    return "/" + names[0]


def image(ctx: StageContext) -> None:
    """An ``occlum_oci_image``: check the runtime, then write the layout and the archive."""
    from occlum_rules.stages.oci import media
    from occlum_rules.stages.oci.fsview import ImageFS
    from occlum_rules.stages.oci.image import (
        ImageLayer,
        Settings,
        image_config,
        image_index,
        image_manifest,
        write_docker_archive,
        write_layout,
    )
    from occlum_rules.stages.oci.instance_layers import check_complete
    from occlum_rules.stages.oci.runtime_check import Pal, check_pal_libraries, check_program

    p = ctx.params
    layout_dir, archive, digest_file, summary_file = ctx.outputs
    base_doc = ctx.read_json(p["base"]) if p["base"] else None
    fs = ImageFS()
    base_layers: list[ImageLayer] = []
    for i, layer in enumerate((base_doc or {}).get("layers", [])):
        fs.apply(i, layer["entries"])
        base_layers.append(ImageLayer(layer["media_type"], layer["digest"], layer["diff_id"],
                                      layer["size"], ctx.root / p["base_blobs"] / layer["blob"],
                                      "base"))
    layers: list[ImageLayer] = []
    instance_entries = []
    for blob, descriptor in p["layers"]:
        doc = ctx.read_json(descriptor)
        fs.apply(len(base_layers) + len(layers), doc["entries"])
        if descriptor in p["instance_layers"]:
            instance_entries.append(doc["entries"])
        layers.append(ImageLayer(doc["media_type"], doc["digest"], doc["diff_id"], doc["size"],
                                 ctx.root / blob, doc["created_by"]))
    entrypoint, cmd = p["entrypoint"], p["cmd"]
    if entrypoint is None and cmd is None:
        entrypoint = [f"{p['instance_dir']}/build/bin/occlum-run"]
        cmd = [_default_program(ctx)]
    settings = Settings(entrypoint=entrypoint, cmd=cmd, env=p["env"], workdir=p["workdir"],
                        exposed_ports=p["exposed_ports"], labels=p["labels"], user=p["user"])
    config = image_config((base_doc or {}).get("config"), base_layers, layers, settings,
                          ctx.source_date_epoch)
    run = config["config"]
    env = list(run.get("Env") or [])

    # the runtime check, before anything is written
    instance = ctx.root / p["instance_path"]
    check_complete(instance, p["sgx_mode"], p["instance_dir"], instance_entries)
    pal_file = os.path.realpath(instance / "build" / "lib" / "libocclum-pal.so")
    pal = Pal(file=pal_file, description=p["pal_desc"],
              image_path=f"{p['instance_dir']}/build/lib/{os.path.basename(pal_file)}")
    try:
        found = check_pal_libraries(fs, pal, p["sgx_mode"], env)
        program = check_program(fs, [*(run.get("Entrypoint") or []), *(run.get("Cmd") or [])],
                                env, run.get("WorkingDir") or "/")
    except UserError as exc:
        raise UserError(f"{ctx.label}: runtime check failed: {exc.message}") from None
    ctx.log(f"runtime check ({p['sgx_mode']} mode, {p['pal_desc']} "
            f"{os.path.basename(pal_file)}): {'; '.join(found) or 'no DT_NEEDED libraries'}; "
            f"entrypoint program {program} present")

    all_layers = [*base_layers, *layers]
    config_bytes = media.canonical_json(config)
    manifest_bytes = media.canonical_json(image_manifest(config_bytes, all_layers,
                                                         p["annotations"]))
    index_bytes = media.canonical_json(image_index(manifest_bytes, p["tag"]))
    write_layout(layout_dir, config=config_bytes, manifest=manifest_bytes, index=index_bytes,
                 layers=all_layers)
    write_docker_archive(archive, config=config_bytes, layers=all_layers,
                         repo_tag=f"{p['repository']}:{p['tag']}", mtime=ctx.source_date_epoch)
    digest = media.sha256_digest(manifest_bytes)
    write_atomic(digest_file, f"{digest}\n".encode(), mode=0o644)
    _write_json(summary_file, {
        "digest": digest, "config": media.sha256_digest(config_bytes),
        "tag": p["tag"], "repository": p["repository"], "sgx_mode": p["sgx_mode"],
        "layers": [{"digest": x.digest, "diff_id": x.diff_id, "size": x.size,
                    "created_by": x.created_by} for x in all_layers],
        "runtime_check": {"pal": pal.image_path, "pal_kind": p["pal_desc"], "libraries": found,
                          "program": program},
        # where a pulled base came from: a push to that registry mounts its layers
        **({"base_source": base_doc["source"]} if base_doc and base_doc.get("source") else {})})
    ctx.log(f"image {digest} ({len(all_layers)} layers; {len(base_layers)} from the base)")


def pull(ctx: StageContext) -> None:
    """An ``oci_pull``: fetch the image by digest into a scratch layout inside the blobs
    output, then import it exactly as ``oci_base`` imports a workspace layout."""
    import shutil

    from occlum_rules.credentials import REGISTRY_ENV, credentials_from_env
    from occlum_rules.stages.oci.base import import_base
    from occlum_rules.stages.oci.pull import pull_layout
    from occlum_rules.stages.oci.registry import Registry, parse_reference, timeouts_from_env

    p = ctx.params
    descriptor, blobs = ctx.outputs
    ref = parse_reference(p["image"], allow_tag=False)
    connect, read = timeouts_from_env()
    reg = Registry(ref.registry, ref.repository, insecure=p["insecure"],
                   credentials=credentials_from_env(names=REGISTRY_ENV),
                   connect_timeout=connect, read_timeout=read)
    scratch = blobs / ".pulled.oci"
    try:
        pull_layout(reg, p["digest"], p["platform"], scratch)
        found = import_base(scratch, f"{p['image']}@{p['digest']}", p["digest"], blobs,
                            platform=p["platform"])
    except UserError as exc:
        raise UserError(f"{ctx.label}: {exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _write_json(descriptor, {**found, "source": p["image"]})
    ctx.log(f"pulled {p['image']}@{p['digest'][:19]}…: {len(found['layers'])} layers verified")


def push(root: Path, target: dict[str, Any]) -> list[str]:
    """An ``occlum_oci_push`` target, run by ``doit push`` (not an action: never cached).
    The lines to print: the summary, then the pushed ``REGISTRY/REPO@sha256:…``."""
    from occlum_rules.stages.oci.push import push_built_image, summary

    reference = target["repository"]
    result, pushed = push_built_image(root / target["layout"], root / target["digest"],
                                      reference, target["tags"], insecure=target["insecure"],
                                      mount_from=target["mount_from"])
    return [summary(result), f"written to {pushed.relative_to(root)}", result.reference]
