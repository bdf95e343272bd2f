"""The enclave's resources derived from Occlum.json, each with where its number came from.

These are gen_internal_conf's rules for TCS counts, kernel heap, user space, reserved
memory and UserRegionSize under EDMM and non-EDMM layouts. They are kept in one place so
that ``config explain`` and Enclave.xml cannot disagree: both read the same
:class:`EnclaveResources`. Checks run in the tool's order so the same problem wins when
several exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from occlum_rules.errors import UserError
from occlum_rules.stages.config.profiles import NEWEST, ConfigProfile
from occlum_rules.stages.config.schema import OcclumConfig, json_quote
from occlum_rules.stages.config.sizes import ALLOWED_SIZE_TEXT, SizeError, parse_size

DEFAULT_TCS_INIT = 16
DEFAULT_TCS_MAX = 4096
DEFAULT_KERNEL_HEAP_MAX = 1 << 30  # "1024MB"
DEFAULT_USER_SPACE_MAX = 16 << 30  # "16GB"
EXTRA_USER_REGION_FOR_SDK = 1 << 30  # "1GB"
DEFAULT_MARSHAL_BUFFER = 1 << 20
U64_LIMIT = 1 << 64


@dataclass(frozen=True)
class Resolved:
    """A number that ends up in the enclave config, and a sentence on where it came from."""

    value: int
    origin: str


@dataclass(frozen=True)
class EnclaveResources:
    edmm: bool
    edmm_origin: str
    tcs_num: Resolved
    tcs_min_pool: Resolved
    tcs_max_num: Resolved
    stack_size: Resolved
    heap_init: Resolved
    heap_max: Resolved
    user_space_init: Resolved
    user_space_max: Resolved
    reserved_mem: Resolved
    user_region: Resolved | None  # EDMM only
    marshal_buffer: Resolved | None  # ms_buffer (HYPER) builds only


def edmm_mode(config: OcclumConfig, platform_edmm: bool) -> tuple[bool, str]:
    """EDMM is on if the platform says so *or* Occlum.json asks for it (even in SIM)."""
    if platform_edmm and config.feature.enable_edmm:
        return True, "INSTANCE_IS_FOR_EDMM_PLATFORM=YES and feature.enable_edmm=true"
    if platform_edmm:
        return True, "INSTANCE_IS_FOR_EDMM_PLATFORM=YES"
    if config.feature.enable_edmm:
        return True, "feature.enable_edmm=true (forces the EDMM layout whatever the platform)"
    return False, "platform without EDMM and feature.enable_edmm is false"


def size_field(text: str, path: str, source: str) -> int:
    """Parse a size-valued field, or a UserError naming it."""
    try:
        return parse_size(text)
    except SizeError as exc:
        raise UserError(
            f"{json_quote(text)} is not a valid size ({exc.reason}); expected {ALLOWED_SIZE_TEXT}",
            f"{source}: {path}",
        ) from None


def _quote(text: str | None) -> str:
    return "absent" if text is None else json_quote(text)


def _marshal_buffer(config: OcclumConfig, ms_buffer: bool, source: str) -> Resolved | None:
    if not ms_buffer:
        return None
    text = config.resource_limits.marshal_buffer_size
    if text is None:
        return Resolved(DEFAULT_MARSHAL_BUFFER, "HYPER-mode default 1MB")
    value = size_field(text, "resource_limits.marshal_buffer_size", source)
    return Resolved(value, f"resource_limits.marshal_buffer_size {_quote(text)}")


def _resolve_without_edmm_support(
    config: OcclumConfig, ms_buffer: bool, source: str, label: str
) -> EnclaveResources:
    """Occlum 0.29's rules: one layout, a TCS and heap range, no user-space maximum.

    The thread count is both the initial and minimum pool with room to grow to 4096, the
    heap may grow to kernel_space_heap_max_size (default max(heap, 1GB)) and the reserved
    memory is exactly user_space_size. Nothing is range-checked, only parsed (in the
    order stack, heap, heap max, user space, marshal buffer).
    """
    rl = config.resource_limits
    threads = rl.max_num_of_threads
    tcs_num = Resolved(threads, "resource_limits.max_num_of_threads")
    tcs_max = Resolved(
        max(threads, DEFAULT_TCS_MAX), f"max(max_num_of_threads={threads}, {DEFAULT_TCS_MAX})"
    )
    stack = size_field(
        rl.kernel_space_stack_size, "resource_limits.kernel_space_stack_size", source
    )
    heap = size_field(rl.kernel_space_heap_size, "resource_limits.kernel_space_heap_size", source)
    heap_src = f"resource_limits.kernel_space_heap_size {_quote(rl.kernel_space_heap_size)}"
    if rl.kernel_space_heap_max_size is not None:
        heap_max = Resolved(
            size_field(
                rl.kernel_space_heap_max_size, "resource_limits.kernel_space_heap_max_size", source
            ),
            f"resource_limits.kernel_space_heap_max_size {_quote(rl.kernel_space_heap_max_size)}",
        )
    else:
        heap_max = Resolved(max(heap, DEFAULT_KERNEL_HEAP_MAX), f"max({heap_src}, 1GB)")
    user = size_field(rl.user_space_size, "resource_limits.user_space_size", source)
    user_r = Resolved(user, f"resource_limits.user_space_size {_quote(rl.user_space_size)}")
    return EnclaveResources(
        edmm=False,
        edmm_origin=f"{label} has no EDMM support: one layout for every platform",
        tcs_num=tcs_num,
        tcs_min_pool=Resolved(threads, "same as TCSNum"),
        tcs_max_num=tcs_max,
        stack_size=Resolved(
            stack, f"resource_limits.kernel_space_stack_size {_quote(rl.kernel_space_stack_size)}"
        ),
        heap_init=Resolved(heap, heap_src),
        heap_max=heap_max,
        user_space_init=user_r,
        user_space_max=user_r,
        reserved_mem=user_r,
        user_region=None,
        marshal_buffer=_marshal_buffer(config, ms_buffer, source),
    )


def resolve_resources(
    config: OcclumConfig,
    *,
    platform_edmm: bool,
    ms_buffer: bool = False,
    source: str = "Occlum.json",
    profile: ConfigProfile = NEWEST,
) -> EnclaveResources:
    """Apply gen_internal_conf's memory and thread rules; UserError on the first problem."""
    if not profile.edmm:
        return _resolve_without_edmm_support(config, ms_buffer, source, profile.label)
    edmm, edmm_origin = edmm_mode(config, platform_edmm)
    rl = config.resource_limits
    where = f"{source}: resource_limits"
    layout = "EDMM" if edmm else "non-EDMM"

    # TCS
    max_threads = rl.max_num_of_threads
    if edmm:
        if rl.init_num_of_threads is not None:
            tcs_num = Resolved(
                rl.init_num_of_threads, "resource_limits.init_num_of_threads (EDMM, taken as is)"
            )
        else:
            tcs_num = Resolved(
                min(DEFAULT_TCS_INIT, max_threads),
                f"EDMM default min({DEFAULT_TCS_INIT}, max_num_of_threads={max_threads})",
            )
        tcs_max = Resolved(
            max(max_threads, DEFAULT_TCS_MAX),
            f"EDMM: max(max_num_of_threads={max_threads}, {DEFAULT_TCS_MAX})",
        )
    else:
        note = (
            " (init_num_of_threads is ignored without EDMM)"
            if rl.init_num_of_threads is not None
            else ""
        )
        tcs_num = Resolved(max_threads, f"resource_limits.max_num_of_threads{note}")
        tcs_max = Resolved(max_threads, "resource_limits.max_num_of_threads")
    if tcs_num.value > tcs_max.value:
        raise UserError(
            f"{rl.init_num_of_threads} is not allowed; with EDMM the initial thread count must be "
            f"at most max(max_num_of_threads, {DEFAULT_TCS_MAX}) = {tcs_max.value}",
            f"{where}.init_num_of_threads",
        )
    tcs_min_pool = Resolved(tcs_num.value, "same as TCSNum")

    # Kernel stack
    stack = size_field(
        rl.kernel_space_stack_size, "resource_limits.kernel_space_stack_size", source
    )
    stack_r = Resolved(
        stack, f"resource_limits.kernel_space_stack_size {_quote(rl.kernel_space_stack_size)}"
    )

    # Kernel heap
    heap = size_field(rl.kernel_space_heap_size, "resource_limits.kernel_space_heap_size", source)
    heap_src = f"resource_limits.kernel_space_heap_size {_quote(rl.kernel_space_heap_size)}"
    heap_max_cfg = None
    if rl.kernel_space_heap_max_size is not None:
        heap_max_cfg = size_field(
            rl.kernel_space_heap_max_size, "resource_limits.kernel_space_heap_max_size", source
        )
        hmax_src = (
            f"resource_limits.kernel_space_heap_max_size {_quote(rl.kernel_space_heap_max_size)}"
        )
    if heap_max_cfg is not None and edmm:
        heap_init = Resolved(heap, heap_src)
        heap_max = Resolved(
            max(heap_max_cfg, DEFAULT_KERNEL_HEAP_MAX), f"EDMM: max({hmax_src}, 1GB)"
        )
    elif heap_max_cfg is not None:
        heap_init = Resolved(heap_max_cfg, f"{hmax_src} (non-EDMM: the max replaces {heap_src})")
        heap_max = Resolved(heap_max_cfg, hmax_src)
    elif edmm:
        heap_init = Resolved(heap, heap_src)
        heap_max = Resolved(max(heap, DEFAULT_KERNEL_HEAP_MAX), f"EDMM: max({heap_src}, 1GB)")
    else:
        heap_init = Resolved(heap, heap_src)
        heap_max = Resolved(heap, f"{heap_src} (no kernel_space_heap_max_size)")
    if heap_init.value > heap_max.value:
        raise UserError(
            f"{_quote(rl.kernel_space_heap_size)} ({heap_init.value} bytes) is larger than the EDMM "
            f"heap maximum max(kernel_space_heap_max_size {_quote(rl.kernel_space_heap_max_size)}, 1GB)"
            f" = {heap_max.value}; it must be at most that",
            f"{where}.kernel_space_heap_size",
        )

    # User space
    user = size_field(rl.user_space_size, "resource_limits.user_space_size", source)
    user_src = f"resource_limits.user_space_size {_quote(rl.user_space_size)}"
    user_max_cfg = None
    if rl.user_space_max_size is not None:
        user_max_cfg = size_field(
            rl.user_space_max_size, "resource_limits.user_space_max_size", source
        )
        umax_src = f"resource_limits.user_space_max_size {_quote(rl.user_space_max_size)}"
    user_init = Resolved(user, user_src)
    if user_max_cfg is not None and edmm:
        user_max = Resolved(
            max(user_max_cfg, DEFAULT_USER_SPACE_MAX), f"EDMM: max({umax_src}, 16GB)"
        )
    elif user_max_cfg is not None:
        user_max = Resolved(user_max_cfg, umax_src)
    elif edmm:
        user_max = Resolved(max(user, DEFAULT_USER_SPACE_MAX), f"EDMM: max({user_src}, 16GB)")
    else:
        user_max = Resolved(user, f"{user_src} (no user_space_max_size)")
    if user_init.value > user_max.value:
        raise UserError(
            f"{_quote(rl.user_space_size)} ({user} bytes) is larger than user_space_max_size "
            f"{_quote(rl.user_space_max_size)} ({user_max.value} bytes); without EDMM it must be at most that",
            f"{where}.user_space_size",
        )

    # Reserved memory and the SDK's user region
    if edmm:
        reserved = Resolved(user_init.value, f"EDMM: user space init ({user_src})")
        if user_max.value == user_init.value:
            region = Resolved(user_max.value, "EDMM: user space max (equal to init, no extra)")
        else:
            region_value = user_max.value + EXTRA_USER_REGION_FOR_SDK
            if region_value >= U64_LIMIT:
                raise UserError(
                    f"user space max {user_max.value} + 1GB for the SGX SDK does not fit in 64 bits",
                    f"{where}.user_space_max_size",
                )
            region = Resolved(region_value, "EDMM: user space max + 1GB extra for the SGX SDK")
    else:
        reserved = Resolved(user_max.value, f"non-EDMM: user space max ({user_max.origin})")
        region = None

    marshal = _marshal_buffer(config, ms_buffer, source)

    return EnclaveResources(
        edmm=edmm,
        edmm_origin=f"{layout} layout: {edmm_origin}",
        tcs_num=tcs_num,
        tcs_min_pool=tcs_min_pool,
        tcs_max_num=tcs_max,
        stack_size=stack_r,
        heap_init=heap_init,
        heap_max=heap_max,
        user_space_init=user_init,
        user_space_max=user_max,
        reserved_mem=reserved,
        user_region=region,
        marshal_buffer=marshal,
    )
