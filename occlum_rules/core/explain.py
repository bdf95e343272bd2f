"""Why an action re-ran, or will: the fields of its key material that changed.

Every action record keeps the material its key was computed from, and the material of the
build before it; comparing two of them names the input file, parameter or toolchain that
changed. ``occlum-rules explain`` prints what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from occlum_rules.core.action import Action, key_material, material_changes
from occlum_rules.core.action_state import previous_material, read_state
from occlum_rules.core.build_env import BuildEnv
from occlum_rules.core.keys import input_digests
from occlum_rules.errors import UserError


@dataclass
class Explanation:
    """``status`` is one of "unknown" (the key cannot be computed now: ``detail`` says why),
    "not built", "will re-run" or "up to date"; ``reasons`` lists what changed (for "up to
    date": why the last run re-ran)."""

    status: str
    reasons: list[str] = field(default_factory=list)
    detail: str = ""


def explain(action: Action, env: BuildEnv) -> Explanation:
    state = read_state(env, action.id)
    try:
        current = key_material(action, input_digests(action, env))
    except UserError as exc:
        return Explanation("unknown", detail=str(exc))
    if not state:
        previous = previous_material(env, action.id)
        reasons = (material_changes(previous, current) or ["nothing in its key changed"]
                   if previous else [])
        return Explanation("not built", reasons)
    pending = material_changes(state.get("material") or {}, current)
    if pending:
        return Explanation("will re-run", pending)
    why = material_changes(state["previous"], state["material"]) if state.get("previous") else []
    return Explanation("up to date", why, detail=state["key"][:16])
