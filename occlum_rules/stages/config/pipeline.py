"""Occlum.json + image MACs -> Enclave.xml + .Occlum_sys.json, as gen_internal_conf does.

Everything is validated before anything is rendered, so a bad config never yields
half-made or empty outputs (gen_internal_conf prints its message, exits 0 and leaves
empty files). The checks run in the tool's order so the same problem is reported first.

Which tool is reproduced is a :class:`ConfigProfile` (one per Occlum release series, see
:mod:`profiles`); without one it is the newest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from occlum_rules.errors import UserError
from occlum_rules.stages.config.json_source import JsonObject, parse_json_text
from occlum_rules.stages.config.kss import KssIds, kss_ids
from occlum_rules.stages.config.mounts import app_stages, check_mount_sizes
from occlum_rules.stages.config.profiles import NEWEST, ConfigProfile
from occlum_rules.stages.config.resources import EnclaveResources, resolve_resources
from occlum_rules.stages.config.schema import OcclumConfig, read_config
from occlum_rules.stages.config.templating import render

SGX_MODES = ("HW", "SIM", "HYPER")
MISC_EDMM = ("1", "0xFFFFFFFF")
MISC_NON_EDMM = ("0", "0")
MISC_WITHOUT_EDMM_SUPPORT = ("1", "0x0")  # Occlum 0.29: one layout, dynamic parts allowed


@dataclass(frozen=True)
class EnclaveValues:
    """The Enclave.xml fields by name (the template decides the element order)."""

    prod_id: int
    isv_svn: int
    stack_max_size: int
    stack_min_size: int
    heap_init_size: int
    heap_max_size: int
    heap_min_size: int
    tcs_num: int
    tcs_max_num: int
    tcs_min_pool: int
    tcs_policy: int
    disable_debug: int
    misc_select: str
    misc_mask: str
    reserved_mem_max_size: int
    reserved_mem_min_size: int
    reserved_mem_init_size: int
    reserved_mem_executable: int
    user_region_size: int | None
    marshal_buffer_size: int | None
    enable_kss: int
    isv_ext_prod_id_h: int
    isv_ext_prod_id_l: int
    isv_family_id_h: int
    isv_family_id_l: int
    pkru: int
    amx: int | None  # None: the profile's Enclave.xml has no <AMX>


@dataclass(frozen=True)
class Resolution:
    """Everything derived from one Occlum.json: the model, its numbers, and the warnings."""

    config: OcclumConfig
    resources: EnclaveResources
    kss: KssIds
    warnings: list[str] = field(default_factory=list)
    profile: ConfigProfile = NEWEST


def ms_buffer_for(sgx_mode: str) -> bool:
    """Occlum builds gen_internal_conf with the ms_buffer feature only for SGX_MODE=HYPER."""
    if sgx_mode not in SGX_MODES:
        raise UserError(
            f"{sgx_mode!r} is not an SGX mode; expected one of {', '.join(SGX_MODES)}", "sgx_mode"
        )
    return sgx_mode == "HYPER"


def resolve(
    occlum_json: bytes | str | dict | JsonObject,
    *,
    edmm: bool,
    sgx_mode: str = "HW",
    source: str = "Occlum.json",
    profile: ConfigProfile = NEWEST,
) -> Resolution:
    """Parse and check an Occlum.json (all checks except the root-mount/MAC step)."""
    ms_buffer = ms_buffer_for(sgx_mode)
    tree = as_tree(occlum_json, source)
    config, warnings = read_config(tree, source=source, ms_buffer=ms_buffer, profile=profile)
    resources = resolve_resources(
        config, platform_edmm=edmm, ms_buffer=ms_buffer, source=source, profile=profile
    )
    if profile.mount_size_checks:
        check_mount_sizes(config, resources.heap_max.value, source)
    kss = kss_ids(config, source)
    return Resolution(config, resources, kss, warnings, profile)


def as_tree(occlum_json: Any, source: str = "Occlum.json") -> Any:
    """Occlum.json text (bytes/str) or an already-parsed dict, in the parser's shape."""
    if isinstance(occlum_json, bytes | str):
        return parse_json_text(occlum_json, source)
    if isinstance(occlum_json, dict | JsonObject):
        return _dict_to_tree(occlum_json)
    raise TypeError(f"Occlum.json must be bytes, str or dict, not {type(occlum_json).__name__}")


def _dict_to_tree(value: Any, path: str = "") -> Any:
    """A plain dict (already parsed elsewhere) in the parser's shape, JSON types only."""
    if isinstance(value, JsonObject):
        return value
    if isinstance(value, dict):
        pairs = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"key {k!r} is not a string", f"Occlum.json: {path or '(top)'}")
            pairs.append((k, _dict_to_tree(v, f"{path}.{k}" if path else k)))
        return JsonObject(pairs)
    if isinstance(value, list | tuple):
        return [_dict_to_tree(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise UserError(f"{value} cannot be written as JSON", f"Occlum.json: {path}")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise UserError(f"{type(value).__name__} is not a JSON value", f"Occlum.json: {path}")


def enclave_values(res: Resolution) -> EnclaveValues:
    r, meta, kss, profile = res.resources, res.config.metadata, res.kss, res.profile
    if not profile.edmm:
        misc = MISC_WITHOUT_EDMM_SUPPORT
    else:
        misc = MISC_EDMM if r.edmm else MISC_NON_EDMM
    return EnclaveValues(
        prod_id=meta.product_id,
        isv_svn=meta.version_number,
        stack_max_size=r.stack_size.value,
        stack_min_size=r.stack_size.value,
        heap_init_size=r.heap_init.value,
        heap_max_size=r.heap_max.value,
        heap_min_size=r.heap_init.value,
        tcs_num=r.tcs_num.value,
        tcs_max_num=r.tcs_max_num.value,
        tcs_min_pool=r.tcs_min_pool.value,
        tcs_policy=profile.tcs_policy,
        disable_debug=0 if meta.debuggable else 1,
        misc_select=misc[0],
        misc_mask=misc[1],
        reserved_mem_max_size=r.reserved_mem.value,
        reserved_mem_min_size=r.reserved_mem.value,
        reserved_mem_init_size=r.reserved_mem.value,
        reserved_mem_executable=1,
        user_region_size=None if r.user_region is None else r.user_region.value,
        marshal_buffer_size=None if r.marshal_buffer is None else r.marshal_buffer.value,
        enable_kss=kss.enable_kss,
        isv_ext_prod_id_h=kss.ext_prod_id_high,
        isv_ext_prod_id_l=kss.ext_prod_id_low,
        isv_family_id_h=kss.family_id_high,
        isv_family_id_l=kss.family_id_low,
        pkru=meta.pkru if profile.pkru_in_metadata else res.config.feature.pkru,
        amx=None if not profile.amx_element else (
            meta.amx if profile.amx_in_metadata else res.config.feature.amx),
    )


def disable_log(config: OcclumConfig) -> bool:
    """The user's choice if given, otherwise logging is off exactly for release enclaves."""
    if config.metadata.disable_log is not None:
        return config.metadata.disable_log
    return not config.metadata.debuggable


def sorted_value(value: Any) -> Any:
    """A serde_json::Value tree: object keys in byte order (BTreeMap), arrays as they are."""
    if isinstance(value, dict):
        return {k: sorted_value(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_value(v) for v in value]
    return value


def sys_json_values(
    res: Resolution, user_fs_mac: str, init_fs_mac: str, source: str
) -> dict[str, Any]:
    """What the .Occlum_sys.json template prints; sections the profile lacks are None."""
    config, profile = res.config, res.profile
    if profile.thread_and_space_limits:
        limits = {
            "user_space_init_size": f"{res.resources.user_space_init.value}B",
            "user_space_max_size": f"{res.resources.user_space_max.value}B",
        }
    else:  # Occlum 0.29 passes the user's string through
        limits = {"user_space_size": config.resource_limits.user_space_size}
    feature = None
    if profile.feature_keys is not None:  # in the Rust struct's order, not sorted
        feature = {key: getattr(config.feature, key) for key in profile.feature_keys}
    apps = app_stages(config, user_fs_mac, init_fs_mac, source, profile, res.warnings)
    return {
        "resource_limits": limits,
        "process": config.process,
        "env": sorted_value(config.env),
        "disable_log": disable_log(config) if profile.disable_log else None,
        "app": sorted_value(apps),
        "feature": feature,
    }


@dataclass(frozen=True)
class Generated:
    """The two files plus what they were derived from (for messages and explain)."""

    enclave_xml: bytes
    sys_json: bytes
    resolution: Resolution

    @property
    def warnings(self) -> list[str]:
        return self.resolution.warnings

    @property
    def edmm(self) -> bool:
        return self.resolution.resources.edmm


def generate_config(
    occlum_json: bytes | str | dict,
    user_fs_mac: str,
    init_fs_mac: str,
    *,
    edmm: bool,
    sgx_mode: str = "HW",
    source: str = "Occlum.json",
    profile: ConfigProfile = NEWEST,
) -> Generated:
    """:func:`generate` keeping the resolution and the warnings (fields Occlum ignores)."""
    for flag, mac in (("--user_fs_mac", user_fs_mac), ("--init_fs_mac", init_fs_mac)):
        if not isinstance(mac, str):
            raise UserError(f"expected a string, got {type(mac).__name__}", flag)
        try:
            mac.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError("the MAC string is not valid UTF-8", flag) from None
    res = resolve(occlum_json, edmm=edmm, sgx_mode=sgx_mode, source=source, profile=profile)
    sys_values = sys_json_values(res, user_fs_mac, init_fs_mac, source)
    enclave_xml = render("Enclave.xml.j2", enclave=enclave_values(res))
    sys_json = render("Occlum_sys.json.j2", sys=sys_values)
    return Generated(enclave_xml.encode("utf-8"), sys_json.encode("utf-8"), res)


def generate(
    occlum_json: bytes | str | dict,
    user_fs_mac: str,
    init_fs_mac: str,
    *,
    edmm: bool,
    sgx_mode: str = "HW",
    source: str = "Occlum.json",
    profile: ConfigProfile = NEWEST,
) -> tuple[bytes, bytes]:
    """Enclave.xml and .Occlum_sys.json bytes, identical to gen_internal_conf's.

    ``edmm`` is what Occlum passes as INSTANCE_IS_FOR_EDMM_PLATFORM=YES (HW mode with
    ENABLE_EDMM); ``feature.enable_edmm`` in the JSON turns the EDMM layout on as well.
    ``sgx_mode="HYPER"`` selects the ms_buffer variant of the tool (MarshalBufferSize).
    ``profile`` selects the Occlum release series (:func:`profiles.profile_for_version`).
    Raises UserError naming the JSON path of the first problem.
    """
    out = generate_config(
        occlum_json,
        user_fs_mac,
        init_fs_mac,
        edmm=edmm,
        sgx_mode=sgx_mode,
        source=source,
        profile=profile,
    )
    return out.enclave_xml, out.sys_json
