"""Occlum configuration stage: Occlum.json -> Enclave.xml + .Occlum_sys.json.

A pure-Python, byte-identical replacement for Occlum's ``gen_internal_conf`` plus the
front end that produces Occlum.json (user file, jinja2 template, structured attributes).
The public API for the build integration is re-exported here.
"""

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
