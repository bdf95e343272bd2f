"""Run one action's command line or Python stage function and describe what it made.

Outputs are made in a scratch directory and renamed into place, except for in-place
actions (the incremental stages), which update their previous outputs where they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import subprocess
from pathlib import Path
from typing import Any

from occlum_rules.core.action import Action, StageContext
from occlum_rules.core.action_state import private_state_dir, shared_state_dir
from occlum_rules.core.build_env import BuildEnv, abs_path, digest_cache
from occlum_rules.core.keys import dynamic_digests
from occlum_rules.core.outputs import describe_outputs, remove_path
from occlum_rules.errors import UserError


def _subprocess_env(action: Action, env: BuildEnv) -> dict[str, str]:
    base = {
        "PATH": env.path_env or os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(env.source_date_epoch),
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    base.update(action.env)
    return base


def _substitute(arg: str, outputs: dict[str, str], root: str) -> str:
    arg = arg.replace("${WORKSPACE}", root)
    for i, path in enumerate(outputs.values()):
        arg = arg.replace(f"${{OUT:{i}}}", path)
    return arg


def _trim(text: str, lines: int = 25) -> str:
    rows = [r for r in text.strip().splitlines() if r.strip()]
    if len(rows) > lines:
        rows = rows[:lines] + [f"... ({len(rows) - lines} more lines)"]
    return "\n".join(rows)


def run_command(argv: list[str], cwd: str | os.PathLike, env: dict[str, str], what: str) -> None:
    """Run a build tool; a failure is one UserError with the tool's own (trimmed) output."""
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              errors="replace")
    except FileNotFoundError:
        raise UserError(f"{what}: tool not found: {argv[0]}") from None
    if proc.returncode != 0:
        raise UserError(f"{what} failed (exit {proc.returncode}):\n{_trim(proc.stderr or proc.stdout)}")


def run_action(action: Action, env: BuildEnv) -> dict[str, Any]:
    """Run the action's command or stage; return its output manifest (what describe_outputs
    reports, plus ``dynamic``: the inputs it discovered, with their digests)."""
    root = env.root
    if action.in_place:
        where = {rel: abs_path(env, rel) for rel in action.outputs}
        scratch = None
    else:
        scratch = Path(env.state_dir) / "scratch" / hashlib.sha256(action.id.encode()).hexdigest()[:16]
        remove_path(str(scratch))
        where = {rel: str(scratch / rel) for rel in action.outputs}
        for rel in action.outputs:
            os.makedirs(os.path.dirname(where[rel]), exist_ok=True)
    discovered: list[str] = []
    try:
        if action.argv is not None:
            rel_where = {k: os.path.relpath(v, root) for k, v in where.items()}
            argv = [_substitute(a, rel_where, root) for a in action.argv]
            run_command(argv, root, _subprocess_env(action, env),
                        f"{action.label}: {action.kind}")
        elif action.func is not None:
            module_name, func_name = action.func.split(":")
            func = getattr(importlib.import_module(module_name), func_name)
            ctx = StageContext(
                root=Path(root), label=action.label,
                inputs=[Path(abs_path(env, p)) for p in action.inputs],
                outputs=[Path(where[rel]) for rel in action.outputs],
                params=action.params,
                secrets={k: Path(abs_path(env, v)) for k, v in action.secrets.items()},
                source_date_epoch=env.source_date_epoch,
                digests=digest_cache(env), state_dir=private_state_dir(env, action),
                shared_state_dir=shared_state_dir(env, action))
            ctx.state_dir.mkdir(parents=True, exist_ok=True)
            try:
                func(ctx)
            finally:
                with contextlib.suppress(OSError):
                    ctx.state_dir.rmdir()  # only if the stage kept nothing there
            discovered = sorted(set(ctx.discovered))
        for rel, kind in zip(action.outputs, action.output_types):
            ok = os.path.isdir(where[rel]) if kind == "dir" else (
                os.path.isfile(where[rel]) or os.path.islink(where[rel]))
            if not ok:
                raise UserError(f"{action.label}: {action.kind} did not create its declared "
                                f"output '{rel}'")
        if scratch is not None:
            for rel in action.outputs:
                final = abs_path(env, rel)
                os.makedirs(os.path.dirname(final), exist_ok=True)
                remove_path(final)
                os.replace(where[rel], final)
        manifest = describe_outputs(action, env)
        manifest["dynamic"] = dynamic_digests(discovered, env)
        return manifest
    finally:
        if scratch is not None:
            remove_path(str(scratch))
