"""``occlum_bom``: an Occlum image described by a copy_bom BOM plus this build's outputs.

The BOM is Occlum's own YAML (``copy_bom`` format), so existing BOM files work unchanged;
``deps`` places files built by other rules at image paths, with their shared-library
dependencies discovered the same way. Every host file the BOM copies (including discovered
libraries) becomes an input of the action, so upgrading a host library re-runs it.
"""

from __future__ import annotations

import re
from typing import Any

from occlum_rules.core.analysis import source_files
from occlum_rules.core.rule import (
    BOOL,
    LABEL_LIST_DICT,
    SOURCE,
    SOURCE_LIST,
    STRING_DICT,
    Attr,
    File,
    Rule,
    RuleContext,
    Target,
)
from occlum_rules.errors import UserError
from occlum_rules.toolchains import occlum_layout as layout

GLIBC_STANDIN = ("stand-in: the host's glibc (no Occlum install); not Occlum's glibc, "
                 "cannot run in Occlum")
GLIBC_NOTE = ("occlum-rules: glibc: host glibc as a stand-in for Occlum's glibc (no Occlum "
              "install): glibc programs get the host's loader at their interpreter path and the "
              "host's libraries at /opt/occlum/glibc/lib in the image, which cannot run in Occlum")


def _glibc(ctx: RuleContext, explicit: File | None) -> tuple[str | None, str, str]:
    """(loader config path, glibc choice for the action, what to record as the image's glibc).

    With an Occlum install: its loader config, so glibc programs get Occlum's glibc. Without
    one, the host's glibc stands in (named as such); the action never looks at /opt/occlum.
    """
    if explicit is not None:
        return explicit.path, "config", f"as the loader_config {explicit.path} says"
    install = ctx.toolchains.occlum()
    if install is None:
        ctx.toolchains.note(GLIBC_NOTE)
        return None, "host", GLIBC_STANDIN
    config = install.templates.get("occlum_elf_loader.config")
    where = str(install.glibc_lib) if install.glibc_lib else f"{install.home}/glibc/lib"
    return (str(config) if config else None, "occlum",
            f"Occlum {install.version} glibc ({where})")


_MAKE_VARIABLE = re.compile(r"\$\(([A-Za-z0-9_]+)\)")


def _bom_env(ctx: RuleContext) -> dict[str, str]:
    """``env`` with ``$(NAME)`` replaced by what the toolchains know (Bazel's make variables)."""
    def value(match: re.Match[str]) -> str:
        found = ctx.toolchains.make_variable(match.group(1))
        if found is None:
            raise ctx.error(f"env: unknown variable $({match.group(1)}); known: "
                            + ", ".join(f"$({name})" for name in ctx.toolchains.make_variable_names()))
        return found
    return {key: _MAKE_VARIABLE.sub(value, text) for key, text in ctx.attr["env"].items()}


def _occlum_init_entries(ctx: RuleContext) -> list[dict]:
    try:
        return layout.image_init_entries(ctx.toolchains, ctx.fs.exists)
    except UserError as exc:
        raise ctx.error(str(exc)) from None


def bom_impl(ctx: RuleContext) -> dict[str, Any]:
    bom = ctx.attr["src"]
    bom_file = source_files(bom)[0]
    includes = source_files(ctx.attr["includes"])
    include_dirs = sorted({f.path.rsplit("/", 1)[0] for f in includes})
    extra: dict[str, list[str]] = {}
    origins: dict[str, str] = {}
    dep_files: list[File] = []
    for image_dir, refs in sorted(ctx.attr["deps"].items()):
        files = source_files(refs)
        if not image_dir.startswith("/") or ".." in image_dir.split("/"):
            raise ctx.error(f"deps: image directory '{image_dir}' must be absolute inside the image "
                            "(such as '/bin') and must not contain '..'")
        extra[image_dir] = [f.path for f in files]
        dep_files += files
        for ref in refs if isinstance(refs, list) else [refs]:
            if isinstance(ref, Target) and ref.providers:  # name it (and its toolchain) in errors
                how = ref.providers.get("toolchain") or ref.rule.name
                origins.update({f.path: f"{ref.label} ({how})" for f in ref.providers["files"]})
            else:
                origins.update({f.path: f"{f.path} (source file)" for f in source_files(ref)})
    loader = ctx.attr["loader_config"]
    loader_path, glibc, glibc_desc = _glibc(ctx, source_files(loader)[0] if loader else None)
    init_entries = _occlum_init_entries(ctx) if ctx.attr["occlum_init"] else None
    image = ctx.declare_file("image", action="image", is_dir=True)
    manifest = ctx.declare_file("image.manifest.json", action="image")
    ctx.actions.stage(
        name="image", kind="copy_bom", func="occlum_rules.actions.bom:assemble",
        inputs=[bom_file, *includes, *dep_files], outputs=[image, manifest],
        params={"bom": bom_file.path, "include_dirs": include_dirs, "extra_files": extra,
                "origins": origins,
                "env": _bom_env(ctx), "loader_config": loader_path, "glibc": glibc,
                "out_dir": ctx.workspace.output_dir, "init_entries": init_entries},
        in_place=True, description=f"assemble image from {bom_file.path}")
    return {"files": [image, manifest], "image": image, "image_manifest": manifest,
            "glibc": glibc_desc}


occlum_bom = Rule(
    name="occlum_bom",
    attrs={
        "src": Attr(SOURCE, mandatory=True, doc="the BOM file (copy_bom YAML)"),
        "includes": Attr(SOURCE_LIST, default=list, doc="BOM files it includes"),
        "deps": Attr(LABEL_LIST_DICT, default=dict,
                     doc="image directory -> files or targets placed there, e.g. {'/bin': [':app']}"),
        "env": Attr(STRING_DICT, default=dict,
                    doc="variables for $VAR expansion in the BOM (the build's environment is "
                        "not used); values may use $(PYTHON3_VERSION) and $(PYTHON3_EXT_SUFFIX)"),
        "loader_config": Attr(SOURCE, default=None, doc="occlum_elf_loader.config to use"),
        "occlum_init": Attr(BOOL, default=True,
                            doc="start from the image/ `occlum init` makes (directories, etc/hosts, "
                                "etc/localtime, musl runtime, Occlum glibc); False: the BOM only"),
    },
    impl=bom_impl,
    doc="An Occlum image assembled from a BOM.",
)

RULES = [occlum_bom]
