"""The host-runtime example BOMs assemble images that actually run.

The python image is run with its own loader and ``--inhibit-cache``/``--library-path`` into the
image, and the test checks that every shared object mapped into the process comes from the
image: a library our dependency discovery missed would be loaded from the host's default
dirs and show up here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from occlum_rules.stages.bom import apply_plan, plan_bom

from .helpers import REPO, require_host_setup

CHECK = ("import json, sys; assert json.loads(json.dumps({'a': [1]})) == {'a': [1]}; "
         "print(json.__file__); print(sys.modules['_json'].__file__); "
         "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if '.so' in l})))")


def _lib_dirs(root: Path) -> list[str]:
    return sorted({str(p.parent) for p in root.rglob("*.so*") if "python3" not in str(p)})


def _host_python_env() -> dict[str, str]:
    """What BUILD's $(PYTHON3_VERSION) and $(PYTHON3_EXT_SUFFIX) give on this host."""
    facts = subprocess.run(["/usr/bin/python3", "-c", "import sys, sysconfig; print('%d.%d' % "
                            "sys.version_info[:2], sysconfig.get_config_var('EXT_SUFFIX'))"],
                           capture_output=True, text=True, check=True).stdout.split()
    return {"PYTHON": f"python{facts[0]}", "EXT": facts[1]}


def test_python_host_image_imports_json(tmp_path: Path) -> None:
    require_host_setup()
    root = tmp_path / "image"
    env_vars = _host_python_env()
    stdlib = f"usr/lib/{env_vars['PYTHON']}"
    plan = plan_bom(REPO / "examples/python_host/python.yaml", env=env_vars)
    assert "/usr/bin/python3" in plan.host_inputs
    apply_plan(plan, root)
    python = root / "usr/bin/python3"
    assert python.is_file() and not python.is_symlink()
    env = {"PYTHONHOME": str(root / "usr"), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    loader = root / "lib64/ld-linux-x86-64.so.2"
    libdirs = _lib_dirs(root)
    via_loader = subprocess.run([str(loader), "--inhibit-cache", "--library-path", ":".join(libdirs),
                                 str(python), "-s", "-c", CHECK], capture_output=True, text=True, env=env)
    assert via_loader.returncode == 0, via_loader.stderr
    lines = via_loader.stdout.splitlines()
    assert lines[0] == str(root / stdlib / "json/__init__.py")
    assert lines[1].startswith(str(root / stdlib / "lib-dynload/_json"))
    outside = [so for so in lines[2:] if not so.startswith(str(root) + "/")]
    assert outside == [], f"libraries loaded from the host, not the image: {outside}"
    # the form an Occlum user would try first: the binary itself, LD_LIBRARY_PATH into the image
    direct = subprocess.run([str(python), "-s", "-c", "import json"], capture_output=True, text=True,
                            env={**env, "LD_LIBRARY_PATH": ":".join(libdirs)})
    assert direct.returncode == 0, direct.stderr


def test_redis_host_image_runs(tmp_path: Path) -> None:
    require_host_setup()
    root = tmp_path / "image"
    apply_plan(plan_bom(REPO / "examples/redis_host/redis.yaml", env={}), root)
    assert (root / "opt/occlum/glibc/lib/libjemalloc.so.2").is_file()
    loader = root / "lib64/ld-linux-x86-64.so.2"
    run = subprocess.run([str(loader), "--inhibit-cache", "--library-path", ":".join(_lib_dirs(root)),
                          str(root / "bin/redis-server"), "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and "Redis server" in run.stdout, run.stderr
