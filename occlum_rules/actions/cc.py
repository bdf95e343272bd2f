"""The ``cc.link`` action: run the link command, then check the result is a PIE."""

from __future__ import annotations

import os

from occlum_rules.core.action import StageContext
from occlum_rules.core.runner import run_command
from occlum_rules.stages.cc_link import DEFAULT_ALLOWED, require_pie


def link(ctx: StageContext) -> None:
    out = ctx.outputs[0]
    argv = [a.replace("${OUT:0}", os.path.relpath(out, ctx.root)) for a in ctx.params["argv"]]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC",
           "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)}
    run_command(argv, ctx.root, env, f"{ctx.label}: link")
    require_pie(out, ctx.params.get("allowed", list(DEFAULT_ALLOWED)), ctx.label)
