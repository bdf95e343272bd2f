"""What the Occlum release in use lays out, asked the way rules ask.

Which files ``occlum init`` copies, which ``build/lib`` links ``occlum build`` makes and
which config profile applies are facts about the install (its version, its files) or about
the stand-ins used without one. The stages hold the pure plans; this module puts the install
in front of them, so a rule learns the answer from the toolchain layer and imports no stage.
Errors are ``UserError``s without a location: the rule adds its target's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from occlum_rules.errors import UserError
from occlum_rules.stages.config.profiles import profile_for_version
from occlum_rules.stages.init_sources import STANDIN_NOTE
from occlum_rules.stages.instance_layout import (
    build_lib,
    image_init_plan,
    initfs_plan,
    missing_sources,
)
from occlum_rules.toolchains.resolve import Toolchains

Exists = Callable[[str], bool]


def image_init_entries(toolchains: Toolchains, exists: Exists) -> list[dict[str, Any]]:
    """What ``occlum init`` puts in image/ before the BOM: the install's files (its release
    decides the directories), or host musl stand-ins without one."""
    install = toolchains.occlum()
    if install is None:
        toolchains.note(STANDIN_NOTE)
    entries = image_init_plan(toolchains.init_sources(None),
                              install.version if install else None,
                              str(install.version_header) if install else "Occlum version")
    if install is not None:
        missing = missing_sources(entries, exists)
        if missing:
            raise UserError(f"occlum_init: the Occlum install at {install.home} has no "
                            f"{', '.join(missing)}, which `occlum init` copies into image/ "
                            "(set occlum_init = False to build the image from the BOM only)")
    return [asdict(e) for e in entries]


def initfs_entries(toolchains: Toolchains, init: str | None, variant: str | None, *,
                   listdir: Callable[[str], list[str]], exists: Exists,
                   is_file: Exists) -> tuple[list[dict[str, Any]], str]:
    """What ``occlum init [--init-ra VARIANT]`` puts in initfs/, and the init_ra_conf template.

    Checked against the install here, so a missing part is one clear error rather than a
    different initfs. The default init takes the musl runtime files there are.
    """
    install = toolchains.occlum()
    sources = toolchains.init_sources(init)  # without an install: host musl stand-ins
    entries, template = initfs_plan(variant, sources, listdir=listdir)
    if variant is None:
        entries = [e for e in entries if not (e.path.startswith("lib/") and e.src is None)]
    if install is not None:
        missing = missing_sources(entries, exists)
        if template and not is_file(template):
            missing.append(os.path.relpath(template, install.home))
        if missing and variant is None:
            raise UserError(f"the Occlum install at {install.home} has no {', '.join(missing)}")
        if missing:
            raise UserError(
                f"init_ra = {variant!r}: the Occlum install at {install.home} lacks what `occlum "
                f"init --init-ra {variant}` copies: {', '.join(missing)} (install Occlum's "
                f"{'grpc_ratls and dcap_lib' if variant == 'grpc_ratls' else 'aecs_client'} "
                "toolchain, or drop init_ra)")
    return [asdict(e) for e in entries], template


def check_config_profile(version: str, where: str) -> None:
    """Stop the build when the install's release has no config profile, naming ``where``."""
    profile_for_version(version, where)


def build_lib_layout(version: str, mode: str, pal: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``build/lib`` as ``occlum build`` leaves it for ``mode``: the links and the PAL copied
    from ``pal`` that the layout action writes, and every name that belongs there (anything
    else is another mode's and goes)."""
    names = build_lib(version, mode)
    entries = {f"build/lib/{name}": ({"kind": "copy", "src": pal} if e["kind"] == "pal" else e)
               for name, e in names.items() if e["kind"] in ("symlink", "pal")}
    return entries, list(names)


def standin_sources() -> list[str]:
    """The stand-in LibOS's source files, the inputs of the action that compiles it."""
    from occlum_rules.standin.build import standin_sources as sources

    return [str(p) for p in sources()]
