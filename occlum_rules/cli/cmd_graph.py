"""``occlum-rules graph``: the target graph as Graphviz DOT (or SVG through `dot`)."""

from __future__ import annotations

import argparse
import shutil
import sys

from occlum_rules.cli.common import load
from occlum_rules.errors import UserError
from occlum_rules.process import run_tool


def to_dot(graph, actions: bool = False) -> str:
    lines = ["digraph occlum_rules {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for label in sorted(graph.targets):
        target = graph.targets[label]
        lines.append(f'  "{label}" [label="{label}\\n{target.rule.name}"];')
    for label in sorted(graph.targets):
        for dep in sorted({d.label for d in graph.deps_of(graph.targets[label])}):
            lines.append(f'  "{label}" -> "{dep}";')
    if actions:
        for a in graph.actions:
            lines.append(f'  "{a.id}" [shape=ellipse, label="{a.name}\\n{a.kind}"];')
            lines.append(f'  "{a.label}" -> "{a.id}" [style=dotted];')
            for p in a.producers:
                lines.append(f'  "{a.id}" -> "{p}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="occlum-rules graph",
                                     description="Print the target graph of the workspace.")
    parser.add_argument("--format", choices=["dot", "svg"], default="dot")
    parser.add_argument("--actions", action="store_true", help="include actions, not only targets")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    _, graph = load()
    dot = to_dot(graph, args.actions)
    if args.format == "svg":
        exe = shutil.which("dot")
        if exe is None:
            raise UserError("--format svg needs Graphviz's `dot` (apt-get install graphviz)")
        data = run_tool([exe, "-Tsvg"], "graph --format svg", input=dot).stdout.encode()
    else:
        data = dot.encode()
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data)
    return 0
