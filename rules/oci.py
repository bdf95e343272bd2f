"""OCI container images of Occlum instances, built without a daemon, reproducibly.

Shaped like Bazel's rules_oci: ``oci_layer`` makes a layer from an ``occlum_bom`` image tree
or from files (so a small runtime base can be assembled from host files with the BOM
format), ``oci_base`` imports a base image kept in the workspace (an OCI layout directory,
an OCI archive or a docker-archive) pinned by digest, and ``occlum_oci_image`` stacks the
base, extra layers and the instance as ``occlum package`` lays it out, at ``instance_dir``.
``oci_pull`` fetches a base from a registry by digest (the one action allowed the network;
cached by that digest), and ``occlum_oci_push`` names where ``doit push`` sends an image
(never part of ``doit build``, never cached: a push is an effect, not an output).

The instance is split into three layers, each its own cached action, by how often they
change: *runtime* (PAL, build/bin, initfs; changes with the Occlum release), *image* (the
image SEFS, build/mount; changes with any image file) and *enclave* (the signed LibOS, the
protected config, Occlum.json, status files, run/ skeleton: small, but it changes with the
image too, because the LibOS carries the config MAC, which covers the image's root MAC).
Changing an image file re-compresses the image and enclave layers only; the image action
then copies blobs by digest and compresses nothing.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import zlib
from typing import Any

from occlum_rules.core.analysis import source_files
from occlum_rules.core.rule import (
    BOOL,
    INT,
    LABEL,
    LABEL_LIST,
    SOURCE,
    SOURCE_LIST,
    STRING,
    STRING_DICT,
    STRING_LIST,
    Attr,
    File,
    Rule,
    RuleContext,
)

# Instance-relative patterns of the package's members, by layer (see the module docstring);
# "run" is the empty run/ skeleton, never the data found there. The image action checks that
# the layers together hold exactly the package's members.
INSTANCE_LAYERS = {
    "runtime": ["build/bin", "build/lib/libocclum-pal*", "build/initfs", "initfs"],
    "image": ["build/mount"],
    "enclave": ["Occlum.json", "build/lib/libocclum-libos.signed.so",
                "build/.Occlum_sys.json.protected", ".__occlum_status", ".sgx_mode", "run"],
}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_REGISTRY_IMAGE = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]+)?/[a-z0-9._/-]+")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")


def _container_path(ctx: RuleContext, attr: str) -> str:
    value = ctx.attr[attr]
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        raise ctx.error(f"{attr}: {value!r} must be an absolute path in the container without "
                        "'..', such as '/opt/occlum_instance'")
    return posixpath.normpath(value)


def _level(ctx: RuleContext) -> int:
    level = ctx.attr["compression_level"]
    if not 1 <= level <= 9:
        raise ctx.error(f"compression_level must be 1..9, got {level}")
    return level


def _layer_provider(blob: File, descriptor: File) -> dict[str, Any]:
    return {"files": [blob, descriptor], "oci_layer": {"blob": blob, "descriptor": descriptor}}


# --------------------------------------------------------------------------- oci_layer

def layer_impl(ctx: RuleContext) -> dict[str, Any]:
    bom, srcs = ctx.attr["bom"], ctx.attr["srcs"]
    if (bom is None) == (not srcs):
        raise ctx.error("oci_layer needs exactly one of bom (an occlum_bom target) or srcs")
    prefix = _container_path(ctx, "prefix")
    blob = ctx.declare_file("layer.tar.gz", action="layer")
    descriptor = ctx.declare_file("layer.json", action="layer")
    common = {"level": _level(ctx), "prefix": prefix, "zlib": zlib.ZLIB_RUNTIME_VERSION,
              "created_by": f"oci_layer {ctx.label}"}
    if bom is not None:
        image = (bom.providers or {}).get("image")
        if image is None:
            raise ctx.error(f"bom: {bom.label} is not an occlum_bom target")
        ctx.actions.stage(
            name="layer", kind="oci.layer", func="occlum_rules.actions.oci:layer_from_tree",
            inputs=[image, bom.providers["image_manifest"]], outputs=[blob, descriptor],
            params={**common, "tree": image.path},
            description=f"layer of {bom.label} at {prefix}")
    else:
        files = source_files(srcs)
        placed = [[posixpath.join(prefix, f.path.rsplit("/", 1)[-1]), f.path] for f in files]
        names = [dest for dest, _ in placed]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ctx.error(f"srcs: two files would both be {dup} in the layer")
        ctx.actions.stage(
            name="layer", kind="oci.layer", func="occlum_rules.actions.oci:layer_from_files",
            inputs=files, outputs=[blob, descriptor], params={**common, "files": placed},
            description=f"layer of {len(files)} files at {prefix}")
    return _layer_provider(blob, descriptor)


oci_layer = Rule(
    name="oci_layer",
    attrs={
        "bom": Attr(LABEL, default=None, doc="an occlum_bom target: its image tree is the layer"),
        "srcs": Attr(SOURCE_LIST, default=list, doc="files or targets placed in prefix"),
        "prefix": Attr(STRING, default="/", doc="where in the container the tree or files go"),
        "compression_level": Attr(INT, default=6, doc="gzip level 1..9 (fixed: reproducible)"),
    },
    impl=layer_impl,
    doc="A reproducible OCI layer from an occlum_bom image tree or from files.",
)


# --------------------------------------------------------------------------- oci_base

def base_impl(ctx: RuleContext) -> dict[str, Any]:
    layout, tarball, digest = ctx.attr["layout"], ctx.attr["tarball"], ctx.attr["digest"]
    if (layout is None) == (tarball is None):
        raise ctx.error("oci_base needs exactly one of layout (an OCI layout directory) or "
                        "tarball (a docker-archive or OCI archive)")
    if not _DIGEST.fullmatch(digest):
        raise ctx.error(f"digest: {digest!r} is not a pinned digest (sha256:<64 lowercase hex "
                        "digits>)")
    if layout is not None:
        if layout.startswith("/") or ".." in layout.split("/"):
            raise ctx.error(f"layout: {layout!r} must be a directory inside the package")
        source = posixpath.join(ctx.label.package, layout) if ctx.label.package else layout
        inputs = ctx.fs.tree(source)
        if not inputs:
            raise ctx.error(f"layout: {source} has no files (expected oci-layout, index.json "
                            "and blobs/)")
    else:
        inputs = source_files(tarball)
        if len(inputs) != 1:
            raise ctx.error("tarball: must name one file")
        source = inputs[0].path
    descriptor = ctx.declare_file("base.json", action="base")
    blobs = ctx.declare_file("blobs", action="base", is_dir=True)
    ctx.actions.stage(
        name="base", kind="oci.base", func="occlum_rules.actions.oci:base",
        inputs=inputs, outputs=[descriptor, blobs],
        params={"source": source, "digest": digest, "platform": ctx.attr["platform"]},
        description=f"check base {source} against {digest[:19]}…")
    return {"files": [descriptor, blobs],
            "oci_base": {"descriptor": descriptor, "blobs": blobs, "digest": digest}}


oci_base = Rule(
    name="oci_base",
    attrs={
        "layout": Attr(STRING, default=None, doc="an OCI image layout directory in the package"),
        "tarball": Attr(SOURCE, default=None, doc="a docker-archive or OCI archive tar file"),
        "digest": Attr(STRING, mandatory=True,
                       doc="pinned digest: the manifest's (OCI) or the config's (docker-archive)"),
        "platform": Attr(STRING, default="linux/amd64", doc="which manifest of an image index"),
    },
    impl=base_impl,
    doc="A base image from the workspace, checked against its pinned digest.",
)


# --------------------------------------------------------------------------- oci_pull

def pull_impl(ctx: RuleContext) -> dict[str, Any]:
    image, digest = ctx.attr["image"], ctx.attr["digest"]
    if not _REGISTRY_IMAGE.fullmatch(image) or image.endswith("/"):
        raise ctx.error(f"image: {image!r} must be REGISTRY/REPOSITORY without tag or digest, "
                        "such as 'registry.example.com/team/base'")
    if not _DIGEST.fullmatch(digest):
        raise ctx.error(f"digest: {digest!r} is not a pinned digest (sha256:<64 lowercase hex "
                        "digits>)")
    descriptor = ctx.declare_file("base.json", action="pull")
    blobs = ctx.declare_file("blobs", action="pull", is_dir=True)
    # no inputs: the key is the stage and its params, so the store caches the pull by digest
    ctx.actions.stage(
        name="pull", kind="oci.pull", func="occlum_rules.actions.oci:pull",
        inputs=[], outputs=[descriptor, blobs],
        params={"image": image, "digest": digest, "platform": ctx.attr["platform"],
                "insecure": ctx.attr["insecure"]},
        description=f"pull {image}@{digest[:19]}…")
    return {"files": [descriptor, blobs],
            "oci_base": {"descriptor": descriptor, "blobs": blobs, "digest": digest}}


oci_pull = Rule(
    name="oci_pull",
    attrs={
        "image": Attr(STRING, mandatory=True, doc="REGISTRY/REPOSITORY, e.g. 'docker.io/library/debian'"),
        "digest": Attr(STRING, mandatory=True, doc="pinned digest of the manifest or image index"),
        "platform": Attr(STRING, default="linux/amd64", doc="which manifest of an image index"),
        "insecure": Attr(BOOL, default=False, doc="plain http (a local test registry only)"),
    },
    impl=pull_impl,
    doc="A base image pulled from a registry by digest, every blob verified (like oci_base).",
)


# --------------------------------------------------------------------------- occlum_oci_image

def _in_group(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) or rel.startswith(p + "/") for p in patterns)


def _instance_layers(ctx: RuleContext, instance: dict[str, Any], container_dir: str,
                     holds_key: bool) -> list[tuple[File, File]]:
    inst = instance["dir"]
    files: list[File] = list(dict.fromkeys([*instance["all_outputs"]]))
    out = []
    for group, patterns in INSTANCE_LAYERS.items():
        inputs = [f for f in files if f.path.startswith(inst + "/")
                  and _in_group(f.path[len(inst) + 1:], patterns)]
        blob = ctx.declare_file(f"layers/{group}.tar.gz", action=f"layer-{group}")
        descriptor = ctx.declare_file(f"layers/{group}.json", action=f"layer-{group}")
        ctx.actions.stage(
            name=f"layer-{group}", kind="oci.layer", func="occlum_rules.actions.oci:instance_layer",
            inputs=inputs, outputs=[blob, descriptor],
            params={"instance_dir": inst, "patterns": patterns, "container_dir": container_dir,
                    "level": _level(ctx), "zlib": zlib.ZLIB_RUNTIME_VERSION,
                    "created_by": f"occlum_oci_image {ctx.label}: instance {group} layer"},
            # a built-in image key (initfs/etc/image_key) is a secret: not for shared caches
            cacheable=not (holds_key and group == "runtime"),
            in_place=True,  # the stage copies unchanged segments of its previous blob
            description=f"instance {group} layer at {container_dir}")
        out.append((blob, descriptor))
    return out


def image_impl(ctx: RuleContext) -> dict[str, Any]:
    target = ctx.attr["instance"]
    instance = (target.providers or {}).get("instance")
    if instance is None:
        raise ctx.error(f"instance: {target.label} is not an occlum_instance target")
    holds_key = bool((target.resolved or target.attrs).get("buildin_image_key"))
    if holds_key and not ctx.attr["allow_image_key"]:
        raise ctx.error(f"instance: {target.label} has buildin_image_key = True: its image key "
                        "(a secret) would be in the image's layers for anyone who pulls it. Use "
                        "an instance without a built-in key, or set allow_image_key = True to "
                        "ship it on purpose")
    container_dir = _container_path(ctx, "instance_dir")
    tag = ctx.attr["tag"]
    if not _TAG.fullmatch(tag):
        raise ctx.error(f"tag: {tag!r} is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*)")
    repository = ctx.attr["repository"] or ctx.label.name.lower()
    if not _REPOSITORY.fullmatch(repository):
        raise ctx.error(f"repository: {repository!r} is not a valid repository name "
                        "(lowercase letters, digits, '.', '_', '-' and '/')")
    for name in ctx.attr["env"]:
        if not name or "=" in name:
            raise ctx.error(f"env: {name!r} is not a variable name")
    inputs: list[File] = []
    params: dict[str, Any] = {"base": None, "base_blobs": None}
    base = ctx.attr["base"]
    if base is not None:
        found = (base.providers or {}).get("oci_base")
        if found is None:
            raise ctx.error(f"base: {base.label} is not an oci_base target")
        inputs += [found["descriptor"], found["blobs"]]
        params.update(base=found["descriptor"].path, base_blobs=found["blobs"].path)
    layers: list[tuple[File, File]] = []
    for dep in ctx.attr["layers"]:
        layer = (dep.providers or {}).get("oci_layer")
        if layer is None:
            raise ctx.error(f"layers: {dep.label} is not an oci_layer target")
        layers.append((layer["blob"], layer["descriptor"]))
    own = _instance_layers(ctx, instance, container_dir, holds_key)
    layers += own
    inputs += [f for pair in layers for f in pair]
    pal_files = [f for f in instance["all_outputs"]
                 if f.path.startswith(f"{instance['dir']}/build/lib/libocclum-pal")]
    inputs += [*pal_files, instance["occlum_json"], instance["image_manifest"]]
    env = dict(ctx.attr["env"])
    env.setdefault("OCCLUM_INSTANCE_DIR", container_dir)
    params.update(
        layers=[[blob.path, descriptor.path] for blob, descriptor in layers],
        instance_layers=[descriptor.path for _, descriptor in own],
        instance_path=instance["dir"], instance_dir=container_dir,
        sgx_mode=instance["sgx_mode"],
        pal_desc="stand-in PAL (no Occlum install)" if not instance["real"] else
        f"Occlum {instance['version']} PAL",
        occlum_json=instance["occlum_json"].path, image_manifest=instance["image_manifest"].path,
        entrypoint=ctx.attr["entrypoint"], cmd=ctx.attr["cmd"],
        env=[f"{k}={v}" for k, v in env.items()],
        workdir=ctx.attr["workdir"] if ctx.attr["workdir"] is not None else container_dir,
        exposed_ports=list(ctx.attr["exposed_ports"]), labels=dict(ctx.attr["labels"]),
        annotations=dict(ctx.attr["annotations"]), user=ctx.attr["user"],
        tag=tag, repository=repository)
    layout = ctx.declare_file("image.oci", action="image", is_dir=True)
    archive = ctx.declare_file("image.tar", action="image")
    digest = ctx.declare_file("image.digest", action="image")
    summary = ctx.declare_file("image.json", action="image")
    ctx.actions.stage(
        name="image", kind="oci.image", func="occlum_rules.actions.oci:image",
        inputs=inputs, outputs=[layout, archive, digest, summary], params=params,
        cacheable=not holds_key,
        description=f"OCI image {repository}:{tag} (runtime check, layout, docker-archive)",
        # the runtime check compares the layers with the whole built instance, whose files
        # are not this action's inputs (only what the layers were made from is)
        local_only="its runtime check reads the whole built instance")
    return {"files": [layout, archive, digest, summary],
            "oci_image": {"layout": layout, "archive": archive, "digest": digest,
                          "summary": summary, "tag": tag, "repository": repository,
                          "instance": instance}}


occlum_oci_image = Rule(
    name="occlum_oci_image",
    attrs={
        "instance": Attr(LABEL, mandatory=True, doc="the occlum_instance the image runs"),
        "base": Attr(LABEL, default=None, doc="an oci_base target (default: no base)"),
        "layers": Attr(LABEL_LIST, default=list, doc="oci_layer targets, above the base"),
        "instance_dir": Attr(STRING, default="/opt/occlum_instance",
                             doc="where the instance is in the container"),
        "entrypoint": Attr(STRING_LIST, default=None,
                           doc="default: [<instance_dir>/build/bin/occlum-run]"),
        "cmd": Attr(STRING_LIST, default=None,
                    doc="default (with the default entrypoint): the first program of the "
                        "instance's first entry point, e.g. ['/bin/app']"),
        "env": Attr(STRING_DICT, default=dict,
                    doc="environment; OCCLUM_INSTANCE_DIR defaults to instance_dir"),
        "workdir": Attr(STRING, default=None, doc="default: instance_dir"),
        "exposed_ports": Attr(STRING_LIST, default=list, doc="e.g. ['8080/tcp']"),
        "labels": Attr(STRING_DICT, default=dict, doc="config labels"),
        "annotations": Attr(STRING_DICT, default=dict, doc="manifest annotations"),
        "user": Attr(STRING, default=None, doc="the user the container runs as"),
        "tag": Attr(STRING, default="latest", doc="the tag in index.json and the archive"),
        "repository": Attr(STRING, default=None,
                           doc="repository name in the docker-archive (default: target name)"),
        "allow_image_key": Attr(BOOL, default=False,
                                doc="allow an instance whose initfs holds its image key"),
        "compression_level": Attr(INT, default=6, doc="gzip level of the instance layers"),
    },
    impl=image_impl,
    doc="An OCI image (layout + docker-archive) running an Occlum instance.",
)

# --------------------------------------------------------------------------- occlum_oci_push

def push_impl(ctx: RuleContext) -> dict[str, Any]:
    target = ctx.attr["image"]
    image = (target.providers or {}).get("oci_image")
    if image is None:
        raise ctx.error(f"image: {target.label} is not an occlum_oci_image target")
    repository = ctx.attr["repository"]
    if not _REGISTRY_IMAGE.fullmatch(repository) or repository.endswith("/"):
        raise ctx.error(f"repository: {repository!r} must be REGISTRY/REPOSITORY without a tag "
                        "(tags go in tags), such as 'registry.example.com/team/app'")
    tags = list(ctx.attr["tags"]) or [image["tag"]]
    bad = next((t for t in tags if not _TAG.fullmatch(t)), None)
    if bad is not None:
        raise ctx.error(f"tags: {bad!r} is not a valid image tag")
    # no action: doit_bridge makes a `push` task for this target, run only when asked
    return {"files": [], "oci_push": {"func": "occlum_rules.actions.oci:push",
                                      "image": str(target.label), "layout": image["layout"].path,
                                      "digest": image["digest"].path, "repository": repository,
                                      "tags": tags,
                                      "insecure": ctx.attr["insecure"],
                                      "mount_from": list(ctx.attr["mount_from"])}}


occlum_oci_push = Rule(
    name="occlum_oci_push",
    attrs={
        "image": Attr(LABEL, mandatory=True, doc="the occlum_oci_image to push"),
        "repository": Attr(STRING, mandatory=True, doc="REGISTRY/REPOSITORY to push to"),
        "tags": Attr(STRING_LIST, default=list, doc="tags (default: the image's tag)"),
        "insecure": Attr(BOOL, default=False, doc="plain http (a local test registry only)"),
        "mount_from": Attr(STRING_LIST, default=list,
                           doc="repositories of the same registry to mount blobs from"),
    },
    impl=push_impl,
    default_target=False,
    doc="Where `doit push` (or `doit <this target>`) pushes an image; never in `doit build`.",
)

RULES = [oci_layer, oci_base, oci_pull, occlum_oci_image, occlum_oci_push]
