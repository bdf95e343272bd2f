"""``config explain``: the enclave's resources and where each number came from.

The numbers are read from the same :class:`Resolution` that renders Enclave.xml, so the
explanation cannot drift from what gets signed. One line per Enclave.xml element (plus
the two user-space sizes that go to .Occlum_sys.json), ``NAME  VALUE  (HUMAN)  origin``.
"""

from __future__ import annotations

from occlum_rules.stages.config.pipeline import Resolution, disable_log
from occlum_rules.stages.config.resources import Resolved
from occlum_rules.stages.config.sizes import human_size


def resource_lines(res: Resolution) -> list[tuple[str, Resolved, bool]]:
    """(element name, resolved number, is a byte size) in Enclave.xml order."""
    r = res.resources
    heap_min = Resolved(r.heap_init.value, "same as HeapInitSize")
    stack_min = Resolved(r.stack_size.value, "same as StackMaxSize")
    lines: list[tuple[str, Resolved, bool]] = [
        ("StackMaxSize", r.stack_size, True),
        ("StackMinSize", stack_min, True),
        ("HeapInitSize", r.heap_init, True),
        ("HeapMaxSize", r.heap_max, True),
        ("HeapMinSize", heap_min, True),
        ("TCSNum", r.tcs_num, False),
        ("TCSMaxNum", r.tcs_max_num, False),
        ("TCSMinPool", r.tcs_min_pool, False),
        ("ReservedMemMaxSize", r.reserved_mem, True),
        ("ReservedMemMinSize", Resolved(r.reserved_mem.value, "same as ReservedMemMaxSize"), True),
        ("ReservedMemInitSize", Resolved(r.reserved_mem.value, "same as ReservedMemMaxSize"), True),
    ]
    if r.user_region is not None:
        lines.append(("UserRegionSize", r.user_region, True))
    if r.marshal_buffer is not None:
        lines.append(("MarshalBufferSize", r.marshal_buffer, True))
    return lines


def explain_text(res: Resolution, source: str = "Occlum.json") -> str:
    """The explanation, in the format of the profile's release (``res.profile``)."""
    r, profile = res.resources, res.profile
    meta = res.config.metadata
    out = [f"{source}: {r.edmm_origin}",
           f"format: {profile.label}'s gen_internal_conf ({profile.reference})", "", "Enclave.xml:"]
    for name, resolved, is_size in resource_lines(res):
        human = f"({human_size(resolved.value)})" if is_size else ""
        out.append(f"  {name:<20} {resolved.value:>12}  {human:<12}  {resolved.origin}")
    if r.user_region is None:
        why = "non-EDMM layout" if profile.edmm else f"{profile.label} has no EDMM"
        out.append(f"  {'UserRegionSize':<20} {'-':>12}  {'':<12}  not written ({why})")
    debug = "metadata.debuggable=true" if meta.debuggable else "metadata.debuggable=false (release)"
    out.append(f"  {'DisableDebug':<20} {0 if meta.debuggable else 1:>12}  {'':<12}  {debug}")
    out.append(f"  {'TCSPolicy':<20} {profile.tcs_policy:>12}  {'':<12}  fixed by {profile.label}")
    out.append("")
    out.append(".Occlum_sys.json:")
    if profile.thread_and_space_limits:
        for name, resolved in (
            ("user_space_init_size", r.user_space_init),
            ("user_space_max_size", r.user_space_max),
        ):
            human = f"({human_size(resolved.value)})"
            out.append(f"  {name:<20} {resolved.value:>12}  {human:<12}  {resolved.origin}")
    else:  # the release copies the user's string
        text = res.config.resource_limits.user_space_size
        human = f"({human_size(r.user_space_init.value)})"
        out.append(f"  {'user_space_size':<20} {text:>12}  {human:<12}  copied as written")
    if profile.disable_log:
        log_origin = (
            "metadata.disable_log" if meta.disable_log is not None
            else "default: !metadata.debuggable"
        )
        out.append(
            f"  {'disable_log':<20} {str(disable_log(res.config)).lower():>12}  {'':<12}  "
            f"{log_origin}"
        )
    return "\n".join(out) + "\n"
