"""Run one action's command line or Python stage function and describe what it made.

Outputs are made in a scratch directory and renamed into place, except for in-place
actions (the incremental stages), which update their previous outputs where they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from pathlib import Path
from typing import Any

from occlum_rules.atomic_write import remove_leftovers
from occlum_rules.core import heap
from occlum_rules.core.action import Action, StageContext
from occlum_rules.core.action_state import private_state_dir, shared_state_dir
from occlum_rules.core.build_env import BuildEnv, abs_path, digest_cache
from occlum_rules.core.keys import dynamic_digests
from occlum_rules.core.outputs import describe_outputs, remove_path
from occlum_rules.errors import UserError
from occlum_rules.process import deterministic_env, run_tool


def _subprocess_env(action: Action, env: BuildEnv) -> dict[str, str]:
    return deterministic_env(env.source_date_epoch, path=env.path_env, extra=action.env)


def _substitute(arg: str, outputs: dict[str, str], root: str) -> str:
    arg = arg.replace("${WORKSPACE}", root)
    for i, path in enumerate(outputs.values()):
        arg = arg.replace(f"${{OUT:{i}}}", path)
    return arg


def run_command(argv: list[str], cwd: str | os.PathLike, env: dict[str, str], what: str) -> None:
    """Run a build tool; a failure is one UserError with the tool's own (trimmed) output."""
    run_tool(argv, what, cwd=cwd, env=env)


def run_action(action: Action, env: BuildEnv) -> dict[str, Any]:
    """Run the action's command or stage; return its output manifest (what describe_outputs
    reports, plus ``dynamic``: the inputs it discovered, with their digests)."""
    root = env.root
    if action.in_place:
        where = {rel: abs_path(env, rel) for rel in action.outputs}
        scratch = None
        for rel, kind in zip(action.outputs, action.output_types):
            if kind != "dir":
                remove_leftovers(where[rel])  # of a run killed while writing it
    else:
        scratch = Path(env.state_dir) / "scratch" / hashlib.sha256(action.id.encode()).hexdigest()[:16]
        remove_path(str(scratch))
        where = {rel: str(scratch / rel) for rel in action.outputs}
        for rel in action.outputs:
            os.makedirs(os.path.dirname(where[rel]), exist_ok=True)
    discovered: list[str] = []
    read: dict[str, str] = {}
    described: dict[str, tuple[list[dict], bytes]] = {}
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
                shared_state_dir=shared_state_dir(env, action),
                stamp_cut=len(env.root) + 1 if action.in_place else None)
            ctx.state_dir.mkdir(parents=True, exist_ok=True)
            try:
                func(ctx)
            finally:
                with contextlib.suppress(OSError):
                    ctx.state_dir.rmdir()  # only if the stage kept nothing there
            discovered = sorted(set(ctx.discovered))
            read = ctx.input_digests
            described = ctx.described
            del ctx
            # The stage's per-file structures are garbage now: give their pages back before
            # its outputs are described (a dict per output file, the digest cache's new
            # entries), which would otherwise come on top of them (the SEFS pack of a 4 GiB
            # image).
            heap.release()
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
                # a finished output (a file or a whole tree) made in scratch, moved into
                # place: a rename of what a tool wrote, not a file write of ours
                os.replace(where[rel], final)
        manifest = describe_outputs(action, env, described)
        manifest["dynamic"] = dynamic_digests(discovered, env, read)
        return manifest
    finally:
        if scratch is not None:
            remove_path(str(scratch))
