"""The run journal: one record per action and run (outcome, seconds, key), which the build
report sums up. It lives beside the action state, independent of any cache store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from occlum_rules.core.action import Action
from occlum_rules.core.action_state import id_name, write_json_atomic
from occlum_rules.core.build_env import BuildEnv


def journal(env: BuildEnv, action: Action, outcome: str, seconds: float, key: str) -> None:
    record = {"id": action.id, "label": action.label, "stage": action.kind,
              "outcome": outcome, "seconds": round(seconds, 4), "action_key": key}
    write_json_atomic(_run_dir(env) / f"{id_name(action.id)}.json", record)


def _run_dir(env: BuildEnv) -> Path:
    return Path(env.state_dir) / "runs" / env.run_id


def read_journal(env: BuildEnv) -> dict[str, dict]:
    """This run's records by action id (what the build report sums up)."""
    records: dict[str, dict] = {}
    run_dir = _run_dir(env)
    if run_dir.is_dir():
        for f in sorted(run_dir.iterdir()):
            try:
                rec = json.loads(f.read_text())
                records[rec["id"]] = rec
            except (OSError, ValueError, KeyError):
                continue
    return records


def drop_journal(env: BuildEnv) -> None:
    """Forget this run's records once the report holds them."""
    shutil.rmtree(_run_dir(env), ignore_errors=True)
