"""actions/package.py: what a release package refuses, and its segment state in the
engine-given directory."""

from __future__ import annotations

from occlum_rules.actions.package import refusal


def test_release_refuses_debuggable_and_sim_but_debug_packages_anything():
    assert "debuggable" in refusal("//p:pkg", {"metadata": {"debuggable": True}}, {}, "HW", False)
    assert "debuggable" in refusal("//p:pkg", {}, {"debuggable": True}, "HW", False)
    assert "simulation-mode" in refusal("//p:pkg", {}, {}, "SIM", False)
    assert refusal("//p:pkg", {"metadata": {"debuggable": True}}, {}, "SIM", True) is None
    assert refusal("//p:pkg", {"metadata": {"debuggable": False}}, {}, "HW", False) is None
