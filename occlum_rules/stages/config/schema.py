"""The typed Occlum.json model: what gen_internal_conf's serde structs accept.

Reading mirrors serde's derive: fields are converted in document order (so the first
bad field is the one reported), a repeated struct field is an error, missing required
fields are reported after the struct, ``null`` is only allowed where the Rust field is an
``Option``, and unknown keys are dropped. Unlike serde, every error names its JSON path
(``mount[2].options.cache_size``), and unknown keys produce warnings because Occlum
silently ignores them -- usually a typo the user wants to hear about.

Deliberately stricter than serde: a struct written as a JSON *array* (serde accepts
that, field by field) is rejected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from occlum_rules.errors import UserError
from occlum_rules.stages.config.json_source import JsonObject, to_plain
from occlum_rules.stages.config.profiles import NEWEST, ConfigProfile

U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class ResourceLimits:
    max_num_of_threads: int
    init_num_of_threads: int | None
    kernel_space_heap_size: str
    kernel_space_heap_max_size: str | None
    kernel_space_stack_size: str
    user_space_size: str
    user_space_max_size: str | None
    marshal_buffer_size: str | None  # read only by ms_buffer (HYPER) builds


@dataclass(frozen=True)
class Process:
    default_stack_size: str
    default_heap_size: str
    default_mmap_size: str


@dataclass(frozen=True)
class MetaId:
    high: str
    low: str


@dataclass(frozen=True)
class Metadata:
    product_id: int
    version_number: int
    debuggable: bool
    disable_log: bool | None
    enable_kss: bool
    family_id: MetaId
    ext_prod_id: MetaId
    pkru: int = 0  # Occlum 0.29.6-0.30.0: PKRU lived in metadata before the feature section
    amx: int = 0  # Occlum 0.30.0 only: AMX too


@dataclass(frozen=True)
class Feature:
    amx: int = 0
    pkru: int = 0
    io_uring: int = 0
    enable_edmm: bool = False
    enable_posix_shm: bool = False


@dataclass(frozen=True)
class MountOptions:
    mac: str | None = None
    layers: tuple[Mount, ...] | None = None
    temporary: bool = False
    cache_size: str | None = None
    disk_size: str | None = None

    def is_default(self) -> bool:
        return self == MountOptions()


@dataclass(frozen=True)
class Mount:
    type: str
    target: str
    source: str | None
    options: MountOptions
    path: str  # JSON path of this mount, for error messages


@dataclass(frozen=True)
class OcclumConfig:
    resource_limits: ResourceLimits
    process: Process
    entry_points: Any  # free-form JSON, copied through
    env: Any  # free-form JSON, copied through
    metadata: Metadata
    feature: Feature
    mount: tuple[Mount, ...]


@dataclass(frozen=True)
class Field:
    """How one struct field is read: its JSON key, reader, and serde's Option/default."""

    key: str
    attr: str
    read: Callable[[Any, str, Reader], Any]
    required: bool = True
    nullable: bool = False  # Rust Option<T>: null means "absent"
    default: Any = None
    repeatable: bool = False  # an ignored key: serde skips every occurrence


class Reader:
    """Carries the source name, the ms_buffer switch, the profile and the warnings so far."""

    def __init__(self, source: str, ms_buffer: bool, profile: ConfigProfile = NEWEST):
        self.source = source
        self.ms_buffer = ms_buffer
        self.profile = profile
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> UserError:
        return UserError(message, f"{self.source}: {path}" if path else self.source)

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {path}: {message}")


def _describe(value: Any) -> str:
    """A JSON-ish rendering of a bad value for an error message."""
    if isinstance(value, JsonObject):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json_quote(value)
    return repr(value)


def json_quote(text: str) -> str:
    """A user string as it would appear in JSON (quotes and escapes), for messages."""
    return json.dumps(text, ensure_ascii=False)


def read_u32(value: Any, path: str, r: Reader) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise r.error(path, f"{_describe(value)} is not allowed; expected an integer 0..{U32_MAX}")
    if isinstance(value, float) or not 0 <= value <= U32_MAX:
        raise r.error(path, f"{_describe(value)} is not allowed; expected an integer 0..{U32_MAX}")
    return value


def read_bool(value: Any, path: str, r: Reader) -> bool:
    if not isinstance(value, bool):
        raise r.error(path, f"{_describe(value)} is not allowed; expected true or false")
    return value


def read_str(value: Any, path: str, r: Reader) -> str:
    if not isinstance(value, str):
        raise r.error(path, f"{_describe(value)} is not allowed; expected a string")
    return value


def read_size_str(value: Any, path: str, r: Reader) -> str:
    if not isinstance(value, str):
        raise r.error(
            path, f'{_describe(value)} is not allowed; expected a size string such as "32MB"'
        )
    return value


def read_any(value: Any, path: str, r: Reader) -> Any:
    return to_plain(value)


def _read_struct(
    value: Any, path: str, r: Reader, fields: tuple[Field, ...], what: str
) -> dict[str, Any]:
    if not isinstance(value, JsonObject):
        raise r.error(path, f"{_describe(value)} is not allowed; expected an object ({what})")
    by_key = {f.key: f for f in fields}
    out: dict[str, Any] = {}
    for key, item in value:
        sub = f"{path}.{key}" if path else key
        field = by_key.get(key)
        if field is None:
            tool = "Occlum" if r.profile is NEWEST else r.profile.label
            r.warn(
                sub, f"unknown key, ignored by {tool} (known keys of {what}: {', '.join(by_key)})"
            )
            continue
        if field.attr in out and not field.repeatable:
            raise r.error(sub, "appears twice; Occlum rejects a repeated key here")
        if item is None and field.nullable:
            out[field.attr] = None
        else:
            out[field.attr] = field.read(item, sub, r)
    for field in fields:
        if field.attr not in out:
            if field.required:
                sub = f"{path}.{field.key}" if path else field.key
                raise r.error(sub, f"is missing; {what} requires it")
            out[field.attr] = field.default
    return out


_LIMIT_FIELDS = ("init_num_of_threads", "user_space_max_size")  # 0.30 and later


def _resource_limit_fields(ms_buffer: bool, profile: ConfigProfile) -> tuple[Field, ...]:
    fields: tuple[Field, ...] = (
        Field("init_num_of_threads", "init_num_of_threads", read_u32, False, True),
        Field("max_num_of_threads", "max_num_of_threads", read_u32),
        Field("kernel_space_heap_size", "kernel_space_heap_size", read_size_str),
        Field(
            "kernel_space_heap_max_size", "kernel_space_heap_max_size", read_size_str, False, True
        ),
        Field("kernel_space_stack_size", "kernel_space_stack_size", read_size_str),
        Field("user_space_size", "user_space_size", read_size_str),
        Field("user_space_max_size", "user_space_max_size", read_size_str, False, True),
    )
    if not profile.thread_and_space_limits:
        fields = tuple(f for f in fields if f.key not in _LIMIT_FIELDS)
    if ms_buffer:
        fields += (Field("marshal_buffer_size", "marshal_buffer_size", read_size_str, False, True),)
    return fields


def read_resource_limits(value: Any, path: str, r: Reader) -> ResourceLimits:
    fields = _resource_limit_fields(r.ms_buffer, r.profile)
    if not r.ms_buffer and isinstance(value, JsonObject):
        # Say why instead of the generic "unknown key" warning.
        fields += (
            Field(
                "marshal_buffer_size",
                "marshal_buffer_size",
                _ignored_msbuf,
                False,
                True,
                repeatable=True,
            ),
        )
    out = _read_struct(value, path, r, fields, "resource_limits")
    for attr in ("marshal_buffer_size", *_LIMIT_FIELDS):
        out.setdefault(attr, None)
    if not r.ms_buffer:
        out["marshal_buffer_size"] = None
    return ResourceLimits(**out)


def _ignored_msbuf(value: Any, path: str, r: Reader) -> None:
    r.warn(path, "ignored: marshal_buffer_size is only read by HYPER-mode (ms_buffer) builds")
    return None


PROCESS_FIELDS = (
    Field("default_stack_size", "default_stack_size", read_str),
    Field("default_heap_size", "default_heap_size", read_str),
    Field("default_mmap_size", "default_mmap_size", read_str),
)


def read_process(value: Any, path: str, r: Reader) -> Process:
    return Process(**_read_struct(value, path, r, PROCESS_FIELDS, "process"))


META_ID_FIELDS = (Field("high", "high", read_str), Field("low", "low", read_str))


def read_meta_id(value: Any, path: str, r: Reader) -> MetaId:
    return MetaId(**_read_struct(value, path, r, META_ID_FIELDS, path.rsplit(".", 1)[-1]))


METADATA_FIELDS = (
    Field("product_id", "product_id", read_u32),
    Field("version_number", "version_number", read_u32),
    Field("debuggable", "debuggable", read_bool),
    Field("disable_log", "disable_log", read_bool, False, True),
    Field("enable_kss", "enable_kss", read_bool),
    Field("family_id", "family_id", read_meta_id),
    Field("ext_prod_id", "ext_prod_id", read_meta_id),
)


def read_metadata(value: Any, path: str, r: Reader) -> Metadata:
    fields: tuple[Field, ...] = METADATA_FIELDS
    if not r.profile.disable_log:
        fields = tuple(f for f in fields if f.key != "disable_log")
    if r.profile.pkru_in_metadata:
        fields += (Field("pkru", "pkru", read_u32, False, False, 0),)
    if r.profile.amx_in_metadata:
        fields += (Field("amx", "amx", read_u32, False, False, 0),)
    out = _read_struct(value, path, r, fields, "metadata")
    out.setdefault("disable_log", None)
    return Metadata(**out)


FEATURE_FIELDS = (
    Field("amx", "amx", read_u32, False, False, 0),
    Field("pkru", "pkru", read_u32, False, False, 0),
    Field("io_uring", "io_uring", read_u32, False, False, 0),
    Field("enable_edmm", "enable_edmm", read_bool, False, False, False),
    Field("enable_posix_shm", "enable_posix_shm", read_bool, False, False, False),
)


def read_feature(value: Any, path: str, r: Reader) -> Feature:
    keys = r.profile.feature_keys or ()
    fields = tuple(f for f in FEATURE_FIELDS if f.key in keys)
    return Feature(**_read_struct(value, path, r, fields, "feature"))


def read_mount_list(value: Any, path: str, r: Reader) -> tuple[Mount, ...]:
    if not isinstance(value, list):
        raise r.error(path, f"{_describe(value)} is not allowed; expected an array of mounts")
    return tuple(read_mount(item, f"{path}[{i}]", r) for i, item in enumerate(value))


MOUNT_OPTION_FIELDS = (
    Field("MAC", "mac", read_str, False, True),
    Field("layers", "layers", read_mount_list, False, True),
    Field("temporary", "temporary", read_bool, False, False, False),
    Field("cache_size", "cache_size", read_size_str, False, True),
    Field("disk_size", "disk_size", read_size_str, False, True),
)


def read_mount_options(value: Any, path: str, r: Reader) -> MountOptions:
    keys = r.profile.mount_option_keys
    fields = tuple(f for f in MOUNT_OPTION_FIELDS if f.key in keys)
    return MountOptions(**_read_struct(value, path, r, fields, "mount options"))


MOUNT_FIELDS = (
    Field("type", "type", read_str),
    Field("target", "target", read_str),
    Field("source", "source", read_str, False, True),
    Field("options", "options", read_mount_options, False, False, MountOptions()),
)


def read_mount(value: Any, path: str, r: Reader) -> Mount:
    return Mount(path=path, **_read_struct(value, path, r, MOUNT_FIELDS, "a mount"))


TOP_FIELDS = (
    Field("resource_limits", "resource_limits", read_resource_limits),
    Field("process", "process", read_process),
    Field("entry_points", "entry_points", read_any),
    Field("env", "env", read_any),
    Field("metadata", "metadata", read_metadata),
    Field("feature", "feature", read_feature),
    Field("mount", "mount", read_mount_list),
)

DEFAULT_MMAP_SIZE = "100MB"  # the value in Occlum's template Occlum.json


def read_config(
    tree: Any,
    *,
    source: str = "Occlum.json",
    ms_buffer: bool = False,
    profile: ConfigProfile = NEWEST,
) -> tuple[OcclumConfig, list[str]]:
    """Build the typed model from a parsed JSON tree; returns it with the warnings.

    ``profile`` decides which keys the tool knows (the rest warn as ignored).
    """
    r = Reader(source, ms_buffer, profile)
    fields: tuple[Field, ...] = TOP_FIELDS
    if profile.feature_keys is None:
        fields = tuple(f for f in fields if f.key != "feature")
    out = _read_struct(tree, "", r, fields, "Occlum.json")
    out.setdefault("feature", Feature())
    config = OcclumConfig(**out)
    if config.process.default_mmap_size != DEFAULT_MMAP_SIZE:
        r.warn(
            "process.default_mmap_size",
            f"{json_quote(config.process.default_mmap_size)} has no effect: Occlum copies this "
            "obsolete field into .Occlum_sys.json but the LibOS ignores it",
        )
    return config, r.warnings
