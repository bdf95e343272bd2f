"""Packages whose submodules the rules import while BUILD files load keep their other
names (and those names' heavy imports) until they are asked for."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

from occlum_rules.lazy_exports import lazy_exports

_PROBE = """
import json, sys
import occlum_rules.stages.config.profiles
import occlum_rules.standin.build
import occlum_rules.stages.sign.sigstruct
before = {m: m in sys.modules for m in ("jinja2", "elftools", "occlum_rules.stages.sign.signer")}
from occlum_rules.stages.config import generate_config
from occlum_rules.stages.sign import sign_enclave
from occlum_rules.standin import check_libos_shape
after = {m: m in sys.modules for m in ("jinja2", "elftools", "occlum_rules.stages.sign.signer")}
print(json.dumps([before, after, callable(generate_config) and callable(sign_enclave)
                  and callable(check_libos_shape)]))
"""


def test_the_modules_the_rules_load_leave_the_heavy_ones_unimported() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    before, after, callable_ = json.loads(out.stdout)
    assert before == {"jinja2": False, "elftools": False, "occlum_rules.stages.sign.signer": False}
    assert after == {"jinja2": True, "elftools": True, "occlum_rules.stages.sign.signer": True}
    assert callable_


def test_a_name_not_exported_is_an_attribute_error() -> None:
    getattr_ = lazy_exports("occlum_rules.stages.config", {"parse_size": "sizes"})
    assert getattr_("parse_size")("1MB") == 1024 * 1024
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        getattr_("nothing_here")


@pytest.mark.parametrize("package", ["occlum_rules.stages.config", "occlum_rules.stages.sign",
                                     "occlum_rules.standin"])
def test_no_exported_name_is_also_a_submodule(package: str) -> None:
    """Importing a submodule sets the package attribute of its name, so a lazily exported
    name that is also a submodule's would be one or the other depending on import order."""
    module = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(module.__path__)}
    assert submodules and not submodules & set(module.__all__)
