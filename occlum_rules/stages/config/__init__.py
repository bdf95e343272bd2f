"""Occlum configuration stage: Occlum.json -> Enclave.xml + .Occlum_sys.json.

A pure-Python, byte-identical replacement for Occlum's ``gen_internal_conf`` plus the
front end that produces Occlum.json (user file, jinja2 template, structured attributes).
The public API for the build integration is re-exported here, imported on first use (the
rules read only ``profiles`` while BUILD files load).
"""

from typing import TYPE_CHECKING

from occlum_rules.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from occlum_rules.stages.config.action_inputs import (
        ActionInputs,
        config_relevant_json,
        split_action_inputs,
    )
    from occlum_rules.stages.config.explain import explain_text
    from occlum_rules.stages.config.occlum_json import (
        default_occlum_json,
        load_user_json,
        merge_attrs,
        render_occlum_json,
    )
    from occlum_rules.stages.config.output_files import write_config_outputs
    from occlum_rules.stages.config.pipeline import (
        Generated,
        Resolution,
        generate,
        generate_config,
        resolve,
    )
    from occlum_rules.stages.config.sizes import format_size, parse_size

__getattr__ = lazy_exports(__name__, {
    "ActionInputs": "action_inputs", "config_relevant_json": "action_inputs",
    "split_action_inputs": "action_inputs", "explain_text": "explain",
    "default_occlum_json": "occlum_json", "load_user_json": "occlum_json",
    "merge_attrs": "occlum_json", "render_occlum_json": "occlum_json",
    "write_config_outputs": "output_files", "Generated": "pipeline", "Resolution": "pipeline",
    "generate": "pipeline", "generate_config": "pipeline", "resolve": "pipeline",
    "format_size": "sizes", "parse_size": "sizes",
})

__all__ = [
    "ActionInputs",
    "Generated",
    "Resolution",
    "config_relevant_json",
    "default_occlum_json",
    "explain_text",
    "format_size",
    "generate",
    "generate_config",
    "load_user_json",
    "merge_attrs",
    "parse_size",
    "render_occlum_json",
    "resolve",
    "split_action_inputs",
    "write_config_outputs",
]
