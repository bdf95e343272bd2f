"""doit entry point: load WORKSPACE.yaml and the BUILD files, yield one task per action."""

from occlum_rules.core.doit_bridge import load

load(globals())
