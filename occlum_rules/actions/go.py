"""The ``go.build`` action: one ``go build`` with the environment of stages/go_build.py and
a build cache the engine shares between the Go builds of one toolchain fingerprint."""

from __future__ import annotations

from occlum_rules.core.action import StageContext
from occlum_rules.errors import UserError
from occlum_rules.process import run_tool
from occlum_rules.stages.cargo_build import trim_tool_output
from occlum_rules.stages.go_build import build_argv, go_env, require_pie


def build(ctx: StageContext) -> None:
    p = ctx.params
    if "missing" in p:
        raise UserError(f"{ctx.label}: {p['missing']}")
    go = p["go"]
    out = ctx.outputs[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = build_argv(go, out, p["ldflags"], p["tags"], p["args"])
    cwd = ctx.root / p["cwd"] if p["cwd"] else ctx.root
    env = go_env(go, ctx.shared_state_dir, ctx.source_date_epoch, vendor=bool(p.get("vendor")),
                 module=bool(p.get("module")), cgo=bool(p.get("cgo")))
    proc = run_tool(argv, f"{ctx.label}: go build", cwd=cwd, env=env, check=False)
    if proc.returncode != 0:
        raise UserError(f"{ctx.label}: go build failed (exit {proc.returncode}):\n"
                        f"{trim_tool_output(proc.stderr or proc.stdout)}")
    require_pie(out, ctx.label)
