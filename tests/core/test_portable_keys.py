"""Cache entries travel: two checkouts at different paths, each with occlum-rules installed in
its own virtualenv at a different path, share one store, and the second builds nothing.

Files this package provides (stand-in LibOS sources, templates, the development key) must
enter action keys by a package-relative name and their content, never by where the package
happens to be installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.workspace import REPO, Result, copy_examples, outcomes


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # setuptools writes build/ into the source tree: build from a copy of it
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "out", "build", "__pycache__", "*.egg-info", "tests", "examples", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(src)],
                   check=True, capture_output=True)
    (found,) = out.glob("occlum_rules-*.whl")
    return found


def _venv(where: Path, wheel: Path) -> Path:
    """A virtualenv holding an installed (not editable) copy; third-party packages come
    from the test's own environment through a .pth line."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", site, str(wheel)], check=True, capture_output=True)
    return python


def _doit(python: Path, root: Path, cache: Path) -> Result:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "OCCLUM_RULES_RUN_ID", "OCCLUM_RULES_REMOTE_CACHE")}
    env["OCCLUM_RULES_CACHE"] = str(cache)
    proc = subprocess.run([str(python), "-m", "doit", "build"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _where_installed(python: Path, root: Path) -> str:
    return subprocess.run([str(python), "-c", "import occlum_rules; print(occlum_rules.__file__)"],
                          cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def test_two_checkouts_in_two_virtualenvs_share_the_store(tmp_path, wheel):
    cache = tmp_path / "store"
    py_a = _venv(tmp_path / "envs" / "a", wheel)
    py_b = _venv(tmp_path / "elsewhere" / "venv-b", wheel)
    ws_a = copy_examples(tmp_path / "one" / "checkout", ["hello_c"])
    ws_b = copy_examples(tmp_path / "two" / "deeper" / "checkout", ["hello_c"])
    assert _where_installed(py_a, ws_a) != _where_installed(py_b, ws_b)
    assert str(tmp_path / "envs" / "a") in _where_installed(py_a, ws_a)

    first = _doit(py_a, ws_a, cache)
    assert first.returncode == 0, first.output
    assert "run" in outcomes(ws_a).values()

    second = _doit(py_b, ws_b, cache)
    assert second.returncode == 0, second.output
    ran = sorted(a for a, outcome in outcomes(ws_b).items() if outcome == "run")
    assert ran == [], f"actions the second checkout ran again: {ran}"
