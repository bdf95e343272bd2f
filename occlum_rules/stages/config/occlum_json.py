"""Producing the Occlum.json that the config action consumes.

Three ways in, one canonical way out:

(a) a user ``Occlum.json`` (:func:`load_user_json`), used as it is;
(b) an ``Occlum.json.j2`` jinja2 template rendered with variables (StrictUndefined: an
    undefined variable is an error naming the template and line);
(c) structured attributes (``resource_limits``, ``process``, ``entry_points``, ``env``,
    ``metadata``, ``mount``, ``feature``) deep-merged over a base, which is the rendered
    template when there is one and Occlum's own template (``occlum init``) otherwise: the
    installed Occlum's ``etc/template/Occlum.json`` when the build uses an install (its
    keys differ between releases), else the copy bundled here (the newest release's).

:func:`render_occlum_json` does (b) and (c) and writes canonical bytes, so the same
inputs always give the same file (and the same cache key downstream):

* 4-space indentation like Occlum's template, non-ASCII written as is, exactly one
  trailing newline;
* keys keep the base document's order; keys that only the attributes add are appended
  in sorted order, so the order of a caller's dict never matters.

Merge rules (:func:`merge_attrs`):

* objects merge key by key, recursively; a value of ``None`` deletes the key (as in
  JSON Merge Patch, RFC 7396), e.g. ``{"resource_limits": {"user_space_max_size": None}}``;
* arrays and scalars replace the base value wholesale (``entry_points``, ``env.default``);
* ``mount`` is the exception: entries are matched by ``target``. An entry whose target
  is already mounted replaces that mount, a new target is appended (in the order given),
  and an entry with ``"type": None`` removes the mount with that target;
* size fields (kernel/user space sizes, ``marshal_buffer_size``, ``process.*`` sizes,
  mount ``cache_size``/``disk_size``) accept an int (bytes, written as the shortest
  exact Occlum string such as ``"1GB"``) or an Occlum size string, which is checked.
"""

from __future__ import annotations

import copy
import json
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import jinja2

from occlum_rules.errors import UserError
from occlum_rules.stages.config.json_source import JsonObject, parse_json_text, to_plain
from occlum_rules.stages.config.profiles import NEWEST, ConfigProfile
from occlum_rules.stages.config.schema import read_config
from occlum_rules.stages.config.sizes import ALLOWED_SIZE_TEXT, SizeError, format_size, parse_size
from occlum_rules.stages.template_errors import template_line
from occlum_rules.user_files import read_user_file

STRUCTURED_KEYS = (
    "resource_limits",
    "process",
    "entry_points",
    "env",
    "metadata",
    "mount",
    "feature",
)
RESOURCE_SIZE_KEYS = frozenset(
    {
        "kernel_space_heap_size",
        "kernel_space_heap_max_size",
        "kernel_space_stack_size",
        "user_space_size",
        "user_space_max_size",
        "marshal_buffer_size",
    }
)
PROCESS_SIZE_KEYS = frozenset({"default_stack_size", "default_heap_size", "default_mmap_size"})
MOUNT_SIZE_KEYS = frozenset({"cache_size", "disk_size"})
# Subtrees that are serde_json::Value in gen_internal_conf: repeated keys are allowed there.
FREE_FORM_KEYS = frozenset({"env", "entry_points"})


def default_occlum_json() -> dict[str, Any]:
    """A fresh copy of the Occlum.json that ``occlum init`` writes."""
    text = (
        importlib_resources.files("occlum_rules.templates")
        .joinpath("occlum_default.json")
        .read_text()
    )
    return json.loads(text)


def load_user_json(path: str | Path, profile: ConfigProfile = NEWEST) -> dict[str, Any]:
    """Read a user's Occlum.json: JSON errors carry line:column, schema errors the JSON path.

    Only the shape is checked here (types, required keys, repeated keys); sizes, thread
    counts and mounts are checked when the config is generated, where the EDMM mode is known.
    Also reads an installed Occlum's template (with that release's ``profile``).
    """
    path = Path(path)
    data = read_user_file(path)
    tree = parse_json_text(data, str(path))
    read_config(tree, source=str(path), profile=profile)
    return to_plain(tree)



def render_template(template_path: str | Path, variables: dict[str, Any]) -> str:
    """Render an Occlum.json.j2 with StrictUndefined; errors name ``template:line``."""
    template_path = Path(template_path)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_path.parent)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    try:
        template = env.get_template(template_path.name)
        template_file = template.filename or str(template_path)
        return template.render(**variables)
    except jinja2.TemplateNotFound:
        raise UserError("template not found", str(template_path)) from None
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(
            f"template syntax error: {exc.message}", f"{template_path}:{exc.lineno}"
        ) from None
    except jinja2.UndefinedError as exc:
        line = template_line(exc, template_file)
        where = f"{template_path}:{line}" if line else str(template_path)
        raise UserError(f"undefined template variable: {exc.message}", where) from None
    except jinja2.TemplateError as exc:
        line = template_line(exc, template_file)
        where = f"{template_path}:{line}" if line else str(template_path)
        raise UserError(f"template error: {exc}", where) from None


def _check_struct_duplicates(value: Any, path: str, source: str) -> None:
    """Repeated keys are fatal to gen_internal_conf outside env/entry_points; say so now."""
    if isinstance(value, JsonObject):
        seen: set[str] = set()
        for key, item in value:
            sub = f"{path}.{key}" if path else key
            if key in seen:
                raise UserError(
                    "appears twice; Occlum rejects a repeated key here", f"{source}: {sub}"
                )
            seen.add(key)
            if not (path == "" and key in FREE_FORM_KEYS):
                _check_struct_duplicates(item, sub, source)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_struct_duplicates(item, f"{path}[{i}]", source)


def _size_value(value: Any, path: str, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return format_size(value)
        except ValueError:
            raise UserError(
                f"{value} is not a byte count Occlum can express", f"{where}: {path}"
            ) from None
    if isinstance(value, str):
        try:
            parse_size(value)
        except SizeError as exc:
            raise UserError(
                f"{json.dumps(value)} is not a valid size ({exc.reason}); expected bytes as an int or {ALLOWED_SIZE_TEXT}",
                f"{where}: {path}",
            ) from None
        return value
    raise UserError(
        f"{value!r} is not allowed; expected bytes as an int or {ALLOWED_SIZE_TEXT}",
        f"{where}: {path}",
    )


def _normalize_sizes(key: str, value: Any, where: str) -> Any:
    """Ints -> Occlum size strings in the size fields of one structured attribute."""
    value = copy.deepcopy(value)
    size_keys = {"resource_limits": RESOURCE_SIZE_KEYS, "process": PROCESS_SIZE_KEYS}.get(key)
    if size_keys is not None and isinstance(value, dict):
        for name in size_keys & value.keys():
            if value[name] is not None:
                value[name] = _size_value(value[name], f"{key}.{name}", where)
    if key == "mount" and isinstance(value, list):
        _normalize_mount_sizes(value, "mount", where)
    return value


def _normalize_mount_sizes(mounts: list[Any], path: str, where: str) -> None:
    for i, mount in enumerate(mounts):
        options = mount.get("options") if isinstance(mount, dict) else None
        if not isinstance(options, dict):
            continue
        for name in MOUNT_SIZE_KEYS & options.keys():
            if options[name] is not None:
                options[name] = _size_value(options[name], f"{path}[{i}].options.{name}", where)
        if isinstance(options.get("layers"), list):
            _normalize_mount_sizes(options["layers"], f"{path}[{i}].options.layers", where)


def _merge_objects(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key in [k for k in override if k in base] + sorted(k for k in override if k not in base):
        value = override[key]
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_objects(out[key], value)
        else:
            out[key] = _strip_nones(value)
    return out


def _strip_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nones(v) for v in value]
    return value


def _merge_mounts(base: list[Any], override: list[Any], where: str) -> list[Any]:
    out = list(base)
    for i, mount in enumerate(override):
        if not isinstance(mount, dict) or not isinstance(mount.get("target"), str):
            raise UserError(
                'is not allowed; each mount must be an object with a "target" string',
                f"{where}: mount[{i}]",
            )
        index = next(
            (
                j
                for j, m in enumerate(out)
                if isinstance(m, dict) and m.get("target") == mount["target"]
            ),
            None,
        )
        if "type" in mount and mount["type"] is None:
            if index is not None:
                del out[index]
        elif index is not None:
            out[index] = _strip_nones(mount)
        else:
            out.append(_strip_nones(mount))
    return out


def merge_attrs(
    base: dict[str, Any], attrs: dict[str, Any], where: str = "attributes"
) -> dict[str, Any]:
    """Deep-merge structured attributes over a base Occlum.json (rules in the module doc)."""
    if not isinstance(attrs, dict):
        raise UserError(
            f"expected a mapping of Occlum.json sections, got {type(attrs).__name__}", where
        )
    out = copy.deepcopy(base)
    for key in attrs:
        if key not in STRUCTURED_KEYS:
            raise UserError(
                f"unknown attribute; allowed: {', '.join(STRUCTURED_KEYS)}", f"{where}: {key}"
            )
    for key in [k for k in base if k in attrs] + sorted(k for k in attrs if k not in base):
        value = _normalize_sizes(key, attrs[key], where)
        if value is None:
            out.pop(key, None)
        elif key == "mount":
            if not isinstance(value, list):
                raise UserError("is not allowed; expected a list of mounts", f"{where}: mount")
            out["mount"] = _merge_mounts(out.get("mount") or [], value, where)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_objects(out[key], value)
        else:
            out[key] = _strip_nones(value)
    return out


def dump_occlum_json(config: dict[str, Any]) -> bytes:
    """The canonical Occlum.json bytes: 4-space indent, raw UTF-8, one trailing newline."""
    return (json.dumps(config, indent=4, ensure_ascii=False) + "\n").encode("utf-8")


def render_occlum_json(
    template_path: str | Path | None,
    variables: dict[str, Any] | None = None,
    structured_attrs: dict[str, Any] | None = None,
    *,
    base_path: str | Path | None = None,
    profile: ConfigProfile = NEWEST,
) -> bytes:
    """Occlum.json bytes from an optional template, its variables and structured attributes.

    Without a template the attributes merge over ``base_path`` (an installed Occlum's
    ``etc/template/Occlum.json``) or, without that, the bundled copy of Occlum's template.
    The result is checked against the ``profile``'s gen_internal_conf schema (types,
    required keys) so a mistake is reported here, naming the template or attribute.
    """
    if template_path is not None:
        rendered = render_template(template_path, variables or {})
        source = f"{template_path} (rendered)"
        tree = parse_json_text(rendered, source)
        _check_struct_duplicates(tree, "", source)
        base = to_plain(tree)
        if not isinstance(base, dict):
            raise UserError("must render to a JSON object", source)
    elif base_path is not None:
        base = load_user_json(base_path, profile)
        source = f"Occlum.json ({base_path} + attributes)"
    else:
        base = default_occlum_json()
        source = "Occlum.json (Occlum's template + attributes)"
    merged = merge_attrs(base, structured_attrs or {}) if structured_attrs else base
    data = dump_occlum_json(merged)
    read_config(parse_json_text(data, source), source=source, profile=profile)
    return data
