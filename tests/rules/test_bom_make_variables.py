"""``$(NAME)`` in an occlum_bom's env: values the toolchain layer knows, one error otherwise.

The python_host example names the host's stdlib directory through $(PYTHON3_VERSION), so one
BOM works whatever Python 3 the distribution ships (3.10 on Ubuntu 22.04, 3.11 on Debian 12,
3.12 on Ubuntu 24.04).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from occlum_rules.core.doit_bridge import load_graph
from occlum_rules.errors import UserError
from tests.support.workspace import make_workspace

BOM = "targets:\n  - target: /bin\n"


def _build(tmp_path, env: str):
    files = {"app/BUILD.py": f'occlum_bom(name = "image", src = "bom.yaml", env = {env})\n',
             "app/bom.yaml": BOM}
    _, graph = load_graph(make_workspace(tmp_path / "ws", files))
    return next(a for a in graph.actions if a.id == "//app:image:image")


def test_python3_variables_are_the_host_pythons(tmp_path):
    python3 = shutil.which("python3")
    if python3 is None:
        pytest.skip("no python3 on PATH")
    facts = subprocess.run([python3, "-c", "import sys, sysconfig; print('%d.%d' % "
                            "sys.version_info[:2], sysconfig.get_config_var('EXT_SUFFIX'))"],
                           capture_output=True, text=True, check=True).stdout.split()
    action = _build(tmp_path, '{"PY": "python$(PYTHON3_VERSION)", "EXT": "x$(PYTHON3_EXT_SUFFIX)", '
                              '"PLAIN": "$HOME"}')
    assert action.params["env"] == {"PY": f"python{facts[0]}", "EXT": f"x{facts[1]}",
                                    "PLAIN": "$HOME"}


def test_an_unknown_variable_is_one_error_naming_the_known_ones(tmp_path):
    with pytest.raises(UserError) as info:
        _build(tmp_path, '{"PY": "$(PYTHON_VERSION)"}')
    message = str(info.value)
    assert "unknown variable $(PYTHON_VERSION)" in message
    assert "$(PYTHON3_VERSION)" in message and "app/BUILD.py:1" in message

