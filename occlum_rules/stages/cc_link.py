"""Link a C/C++ program and insist on a position-independent executable.

A non-PIE binary builds fine on the host and fails only inside Occlum, far from the cause;
checking right after linking turns that into a build error naming the target.
"""

from __future__ import annotations

import os

from occlum_rules.core.executor import StageContext, run_command
from occlum_rules.errors import UserError
from occlum_rules.stages.elfcheck import pie_kind


def link(ctx: StageContext) -> None:
    out = ctx.outputs[0]
    argv = [a.replace("${OUT:0}", os.path.relpath(out, ctx.root)) for a in ctx.params["argv"]]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC",
           "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)}
    run_command(argv, ctx.root, env, f"{ctx.label}: link")
    kind = pie_kind(out)
    allowed = ctx.params.get("allowed", ["pie", "static-pie"])
    if kind not in allowed:
        raise UserError(f"{ctx.label}: the linked file is {kind}, but Occlum needs a position-"
                        f"independent executable (link with -pie, or -static-pie); check linkopts")
