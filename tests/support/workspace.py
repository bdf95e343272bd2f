"""Build real workspaces in temporary directories and run doit on them as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def make_workspace(root: Path, files: dict[str, str | bytes], workspace_yaml: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "WORKSPACE.yaml").write_text(workspace_yaml if workspace_yaml is not None else
                                         "source_date_epoch: 1704067200\n")
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    write_tree(root, files)
    return root


def copy_examples(dest: Path, names: list[str]) -> Path:
    """A workspace holding some of the repository's examples (as a second checkout would)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "WORKSPACE.yaml", dest / "WORKSPACE.yaml")
    shutil.copy(REPO / "dodo.py", dest / "dodo.py")
    for name in names:
        shutil.copytree(REPO / "examples" / name, dest / "examples" / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run_doit(root: Path, *args: str, cache: Path, env: dict[str, str] | None = None,
             timeout: float = 600) -> Result:
    environ = dict(os.environ)
    environ["OCCLUM_RULES_CACHE"] = str(cache)
    environ.pop("OCCLUM_RULES_RUN_ID", None)
    environ.pop("OCCLUM_RULES_REMOTE_CACHE", None)
    environ.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env=environ,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            input: bytes | None = None, timeout: float = 600) -> Result:
    environ = dict(os.environ)
    environ.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "occlum_rules", *args], cwd=cwd, env=environ,
                          capture_output=True, timeout=timeout, input=input)
    return Result(proc.returncode, proc.stdout.decode(errors="replace"),
                  proc.stderr.decode(errors="replace"))


def report(root: Path, output_dir: str = "out") -> dict:
    return json.loads((root / output_dir / "build-report.json").read_text())


def outcomes(root: Path, output_dir: str = "out") -> dict[str, str]:
    return {a["id"]: a["outcome"] for a in report(root, output_dir)["actions"]}
