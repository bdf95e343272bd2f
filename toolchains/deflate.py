"""Which deflate implementation this machine compresses packages with.

The compressed bytes of a package depend on it, so its identity enters the package
action's key (and the release manifest): installing another zlib-ng wheel re-packages.
``OCCLUM_RULES_DEFLATE`` (``zlib-ng`` or ``zlib``) picks one explicitly, for instance to
reproduce a release's exact bytes on a machine that has both.
"""

from __future__ import annotations

import os

from occlum_rules.stages.deflate import Deflater, preferred

ENV = "OCCLUM_RULES_DEFLATE"


def package_deflater() -> Deflater:
    """The requested implementation (a UserError when it is unknown or missing), else the
    default when installed, else the standard zlib."""
    return preferred(os.environ.get(ENV, "").strip() or None)
