"""The jinja2 environment for the generated config files (shape only, no logic).

The templates live in ``occlum_rules/templates`` so users can read exactly what is
written. Everything they print is computed in Python first; the filters here only turn
one scalar into its JSON text, which is where byte-exactness with serde_json is decided
(string escapes as Python's ``json.dumps(ensure_ascii=False)``, floats as ryu).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2

from occlum_rules.stages.config.json_numbers import format_json_float


def json_scalar(value: Any) -> str:
    """JSON text for a string, number, bool or null, as serde_json writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_json_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"not a JSON scalar: {type(value).__name__}")


def _is_json_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_json_array(value: Any) -> bool:
    return isinstance(value, list | tuple)


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """One shared environment: strict undefined, no autoescape, no newline added."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("occlum_rules", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters["json_scalar"] = json_scalar
    env.tests["json_object"] = _is_json_object
    env.tests["json_array"] = _is_json_array
    return env


def render(template_name: str, **context: Any) -> str:
    return environment().get_template(template_name).render(**context)
