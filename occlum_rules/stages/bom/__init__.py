"""copy_bom as a pure-Python stage: parse a BOM, plan the image, apply the plan.

Public API (what the build rules call)::

    plan = plan_bom(bom_file, include_dirs, loader_config, env, extra_files, source_dir=...)
    plan.host_inputs            # every host file the plan reads
    result = apply_plan(plan, root, sync=True)
    result.manifest             # == image_manifest(root)
"""

from .apply import ApplyResult, apply_plan
from .elf_deps import LoaderConfig, find_dependencies, load_loader_config, parse_loader_config
from .manifest import encode_manifest, image_manifest, write_manifest
from .plan import Plan, plan_bom
from .schema import BomFile, parse_bom_text, read_bom_file

__all__ = [
    "ApplyResult",
    "BomFile",
    "LoaderConfig",
    "Plan",
    "apply_plan",
    "find_dependencies",
    "encode_manifest",
    "image_manifest",
    "load_loader_config",
    "parse_bom_text",
    "parse_loader_config",
    "plan_bom",
    "read_bom_file",
    "write_manifest",
]
