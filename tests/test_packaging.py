"""The distribution installs every engine module and no generic top-level names."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_engine_package_is_listed_for_installation():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "occlum_rules").rglob("__init__.py")}
    assert on_disk - listed == set(), "packages missing from pyproject.toml"
    mapped = config["package-dir"]
    assert mapped == {"occlum_rules.rules": "rules", "occlum_rules.toolchains": "toolchains"}
    # rules/ and toolchains/ install under the engine package, never as top-level names
    assert not any(name.split(".")[0] in ("rules", "toolchains") for name in listed)
