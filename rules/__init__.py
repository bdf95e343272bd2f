"""The rules BUILD files can call. Each family lives in its own module."""

from __future__ import annotations

from occlum_rules.core.rule import Rule


def all_rules() -> dict[str, Rule]:
    """Every rule by the name BUILD files use; families import lazily to keep loading fast."""
    from occlum_rules.rules import cc

    rules: dict[str, Rule] = {}
    for module in (cc,):
        for rule in module.RULES:
            rules[rule.name] = rule
    for optional in ("cargo", "go", "bom", "instance", "package", "oci", "provenance", "k8s"):
        try:
            module = __import__(f"occlum_rules.rules.{optional}", fromlist=["RULES"])
        except ModuleNotFoundError as exc:
            if exc.name == f"occlum_rules.rules.{optional}":
                continue
            raise
        for rule in module.RULES:
            rules[rule.name] = rule
    return rules
