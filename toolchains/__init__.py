"""Toolchains: which compiler or tool a rule uses, and its fingerprint.

A fingerprint (resolved path, version output, binary digest) enters the key of every action
that uses the tool, so upgrading a compiler re-runs exactly the actions it touches.
"""

from occlum_rules.toolchains.resolve import Tool, Toolchains

__all__ = ["Tool", "Toolchains"]
