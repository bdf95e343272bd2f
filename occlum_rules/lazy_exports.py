"""A package's public names, imported from its submodules on first use (PEP 562).

Every build loads its BUILD files in a fresh interpreter, and the rules import a small
submodule of a package (a profile table, a list of source files) whose ``__init__`` re-exported
everything else: the configuration pipeline with jinja2, the stand-in builder with pyelftools.
A null build paid for those imports and used none of them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` for ``package``: ``exports`` maps each public name to the submodule
    that defines it; a name is imported the first time it is asked for, then kept."""
    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
