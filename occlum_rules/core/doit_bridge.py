"""The doit bridge: a loaded workspace becomes doit tasks.

Every action is a doit subtask of its target's label (``//pkg:name:action``), so ``doit
list`` shows targets, ``doit //pkg:name`` builds one, ``doit info`` explains one. doit keeps
its own file_dep state; our ``uptodate`` hook adds what doit cannot see (action keys over
parameters, toolchains, directory inputs and host files discovered at run time).
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter

from occlum_rules.atomic_write import write_atomic
from occlum_rules.core import heap
from occlum_rules.core.action import Action
from occlum_rules.core.action_state import (
    read_state_summary,
    remove_action_state,
    remove_legacy_state,
)
from occlum_rules.core.analysis import Graph
from occlum_rules.core.build_env import BuildEnv, digest_cache
from occlum_rules.core.executor import execute, is_up_to_date
from occlum_rules.core.journal import drop_journal, read_journal
from occlum_rules.core.workspace import Workspace, find_root, load_workspace
from occlum_rules.errors import UserError

_RUN_COMMANDS = {"run", "clean", "forget", "ignore", "strace", "auto"}
_STATE: dict[str, Any] = {}


def _debug() -> bool:
    return bool(os.environ.get("OCCLUM_RULES_DEBUG"))


def load_graph(start: Path | None = None) -> tuple[Workspace, Graph]:
    from occlum_rules.rules import all_rules
    from occlum_rules.toolchains import Toolchains

    root = find_root(start or Path.cwd())
    ws = load_workspace(root)
    graph = Graph(ws, all_rules(), Toolchains(ws))
    graph.load_all()
    graph.analyze()
    return ws, graph


def build_env(ws: Workspace, run_id: str | None = None) -> BuildEnv:
    return BuildEnv(
        root=str(ws.root), out=str(ws.out), state_dir=str(ws.state_dir),
        cache_dir=str(ws.cache_dir()), run_id=run_id or uuid.uuid4().hex[:16],
        source_date_epoch=ws.source_date_epoch(),
        remote_url=ws.cache.get("remote"), remote_upload=ws.cache.get("upload"),
        remote_instance=ws.cache.get("instance_name"),
        exec_url=ws.execution.get("remote"), exec_instance=ws.execution.get("instance_name"),
        path_env=os.environ.get("PATH", ""))


def _doit_command(argv: list[str]) -> str:
    for arg in argv[1:]:
        if arg.startswith("-"):
            continue
        return arg if arg in {"list", "info", "help", "dumpdb", "tabcompletion", "reset-dep",
                              *_RUN_COMMANDS} else "run"
    return "run"


def _take_lock(ws: Workspace) -> None:
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(ws.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"occlum-rules: another build is running in {ws.root}; waiting for it to finish",
              file=sys.stderr)
        fcntl.flock(fd, fcntl.LOCK_EX)
    _STATE["lock_fd"] = fd  # held until this process exits


def execute_task(action: Action, env: BuildEnv):
    try:
        execute(action, env)
    except UserError as exc:
        if _debug():
            raise
        return TaskFailed(str(exc))
    return None


def push_task(push: dict[str, Any], env: BuildEnv):
    """The action of an ``occlum_oci_push`` target: its ``func`` (an actions adapter, named
    like a stage's, so the engine never imports stages) pushes the built image.

    Not an ``Action``: a push is an effect on a registry, not an output, so it is never
    cached or skipped as up to date, and it runs only when asked (``doit push``)."""
    def run() -> TaskFailed | None:
        module_name, _, func_name = push["func"].partition(":")
        func = getattr(importlib.import_module(module_name), func_name)
        try:
            for line in func(Path(env.root), push):
                print(line)
        except UserError as exc:
            if _debug():
                raise
            return TaskFailed(f"{push['image']}: {exc}")
        return None
    return run


def _uptodate(action: Action, env: BuildEnv):
    def check(task, values) -> bool:
        return is_up_to_date(action, env)
    return check


def _clean(action: Action, env: BuildEnv):
    def clean() -> None:
        import shutil

        for rel in action.outputs:
            full = os.path.join(env.root, rel)
            if os.path.islink(full) or os.path.isfile(full):
                os.unlink(full)
            elif os.path.isdir(full):
                shutil.rmtree(full)
        remove_action_state(env, action)
    return clean


def make_tasks(ws: Workspace, graph: Graph, env: BuildEnv) -> list[dict]:
    tasks: list[dict] = []
    by_label: dict[str, list] = {}
    for action in graph.actions:
        by_label.setdefault(action.label, []).append(action)
    defaults: list[str] = []
    pushes: list[str] = []
    for label in sorted(graph.targets):
        target = graph.targets[label]
        name = str(label)
        actions = by_label.get(name, [])
        if target.rule.default_target:
            defaults.append(name)
        tasks.append({"basename": name, "name": None, "uptodate": [True],
                      "doc": f"{target.rule.name} ({target.location})"})
        for a in actions:
            file_deps = [p for p in a.inputs
                         if p not in a.input_producers and not os.path.isabs(p)
                         and (ws.root / p).is_file()]
            tasks.append({
                "basename": name, "name": a.name,
                "doc": a.description,
                "actions": [(execute_task, [a, env])],
                "file_dep": file_deps,
                "targets": list(a.outputs),
                "task_dep": list(a.producers),
                "uptodate": [_uptodate(a, env)],
                "clean": [_clean(a, env)],
                "verbosity": 2,
            })
        push = (target.providers or {}).get("oci_push")
        if push is not None:
            pushes.append(name)
            tasks.append({"basename": name, "name": "push", "doc": f"push to {push['repository']}",
                          "actions": [push_task(push, env)], "task_dep": [push["image"]],
                          "uptodate": [False], "verbosity": 2})
        elif not actions:
            # a target whose rule declared nothing (e.g. only forwards files) still has a task
            tasks.append({"basename": name, "name": "noop", "actions": [], "uptodate": [True]})
    tasks.append({"basename": "build", "doc": "build every default target",
                  "actions": None, "task_dep": defaults, "uptodate": [True]})
    tasks.append({"basename": "push", "doc": "push every occlum_oci_push target (not in build)",
                  "actions": None, "task_dep": pushes})
    return tasks


class BuildReporter(ConsoleReporter):
    """doit's console reporter plus our summary line and build-report.json."""

    desc = "occlum-rules reporter"

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.started = time.monotonic()
        self.skipped: list[str] = []
        self.seen = False
        self.failed = False

    def execute_task(self, task):
        if task.actions and task.name in _STATE.get("actions", {}):
            self.seen = True
            self.write(f".  {task.name}\n")

    def skip_uptodate(self, task):
        if task.name in _STATE.get("actions", {}):
            self.seen = True
            self.skipped.append(task.name)

    def add_failure(self, task, fail_info):
        self.failed = True
        if isinstance(fail_info, TaskFailed):
            # our own failures are one clear line; doit's frame dump would only add noise
            self.write(f"error: {fail_info.message}\n")
        else:
            super().add_failure(task, fail_info)

    def complete_run(self):
        env = _STATE.get("env")
        if env is not None:  # digests the up-to-date checks computed in this process
            digest_cache(env).save()
        if self.seen:
            try:
                self._write_report()
            except OSError as exc:
                self.write(f"warning: could not write build report: {exc}\n")
        super().complete_run()

    def _write_report(self) -> None:
        env: BuildEnv = _STATE["env"]
        actions: dict[str, Action] = _STATE["actions"]
        records = read_journal(env)
        for task_name in self.skipped:
            if task_name not in records:
                state = read_state_summary(env, task_name) or {}
                a = actions[task_name]
                records[task_name] = {"id": task_name, "label": a.label, "stage": a.kind,
                                      "outcome": "up_to_date", "seconds": 0.0,
                                      "action_key": state.get("key")}
        counts = {"actions_run": 0, "actions_run_remote": 0, "cache_hits_local": 0,
                  "cache_hits_remote": 0, "up_to_date": 0}
        names = {"run": "actions_run", "run_remote": "actions_run_remote",
                 "cache_hit_local": "cache_hits_local",
                 "cache_hit_remote": "cache_hits_remote", "up_to_date": "up_to_date"}
        for rec in records.values():
            counts[names[rec["outcome"]]] += 1
        elapsed = time.monotonic() - self.started
        report = {**counts, "failed": self.failed, "seconds": round(elapsed, 3),
                  "notes": _STATE.get("notes", []),
                  "actions": sorted(records.values(), key=lambda r: r["id"])}
        # the workspace lock makes this process its only writer: a fixed temporary name, so
        # a build killed while writing it leaves nothing the next build does not replace
        write_atomic(Path(env.out) / "build-report.json",
                     (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
                     sole_writer=True)
        drop_journal(env)
        remote = (f"{counts['actions_run_remote']} run remotely, "
                  if counts["actions_run_remote"] else "")
        self.write(f"occlum-rules: {counts['actions_run']} actions run, {remote}"
                   f"{counts['cache_hits_local']} cache hits (local), "
                   f"{counts['cache_hits_remote']} cache hits (remote), "
                   f"{counts['up_to_date']} up to date in {elapsed:.2f}s"
                   f"{' (FAILED)' if self.failed else ''}\n")


def load(dodo_globals: dict[str, Any], start: Path | None = None) -> None:
    """What dodo.py calls: fill its globals with DOIT_CONFIG and task generators."""
    os.umask(0o022)  # build outputs must not depend on the user's umask
    try:
        ws, graph = load_graph(start)
        env = build_env(ws, os.environ.get("OCCLUM_RULES_RUN_ID"))
        if _doit_command(sys.argv) in _RUN_COMMANDS:
            _take_lock(ws)
            remove_legacy_state(ws.state_dir)
            heap.freeze_survivors()
        tasks = make_tasks(ws, graph, env)
        for note in graph.toolchains.notes:
            print(note, file=sys.stderr)
    except UserError as exc:
        if _debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    _STATE["env"] = env
    _STATE["actions"] = {a.id: a for a in graph.actions}
    ws.state_dir.mkdir(parents=True, exist_ok=True)

    def task_occlum_rules():
        yield from tasks

    dodo_globals["task_occlum_rules"] = task_occlum_rules
    dodo_globals["DOIT_CONFIG"] = {
        "default_tasks": ["build"],
        "reporter": BuildReporter,
        "dep_file": str(ws.state_dir / "doit.db"),
        "backend": "sqlite3",
        "verbosity": 1,
    }
