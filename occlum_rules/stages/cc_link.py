"""Link a C/C++ program and insist on a position-independent executable.

A non-PIE binary builds fine on the host and fails only inside Occlum, far from the cause;
checking right after linking turns that into a build error naming the target.
"""

from __future__ import annotations

import os
import subprocess

from occlum_rules.core.executor import StageContext
from occlum_rules.errors import UserError
from occlum_rules.stages.elfcheck import pie_kind


def link(ctx: StageContext) -> None:
    out = ctx.outputs[0]
    argv = [a.replace("${OUT:0}", os.path.relpath(out, ctx.root)) for a in ctx.params["argv"]]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC",
           "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)}
    try:
        proc = subprocess.run(argv, cwd=ctx.root, env=env, capture_output=True, text=True,
                              errors="replace")
    except FileNotFoundError:
        raise UserError(f"{ctx.label}: linker not found: {argv[0]}") from None
    if proc.returncode != 0:
        lines = [r for r in (proc.stderr or proc.stdout).strip().splitlines() if r.strip()][:25]
        raise UserError(f"{ctx.label}: link failed (exit {proc.returncode}):\n" + "\n".join(lines))
    kind = pie_kind(out)
    allowed = ctx.params.get("allowed", ["pie", "static-pie"])
    if kind not in allowed:
        raise UserError(f"{ctx.label}: the linked file is {kind}, but Occlum needs a position-"
                        f"independent executable (link with -pie, or -static-pie); check linkopts")
