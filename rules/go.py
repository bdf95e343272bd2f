"""Go rule: ``go_binary``.

The go command is its own build system; the rule makes one action of it. Inputs are every
file of the module (found at analysis time, so go:embed files and new sources count), the
key holds the go toolchain's fingerprint, and the stage builds a PIE with no network, no
VCS stamping and an empty build id, so the bytes depend on the sources alone.
"""

from __future__ import annotations

import os
from typing import Any

from occlum_rules.core.analysis import source_files
from occlum_rules.core.rule import (
    BOOL,
    SOURCE_LIST,
    STRING,
    STRING_LIST,
    Attr,
    File,
    Rule,
    RuleContext,
)
from occlum_rules.errors import UserError


def _toolchain(ctx: RuleContext) -> tuple[list[str], dict[str, Any]]:
    try:
        tool = ctx.toolchains.go()
    except UserError as exc:
        return ["go:missing"], {"missing": exc.message}
    return [tool.fingerprint], {"go": tool.path, "tool_name": tool.name}


def go_binary_impl(ctx: RuleContext) -> dict[str, Any]:
    package = ctx.label.package
    srcs = source_files(ctx.attr["srcs"])
    pkg = ctx.attr["pkg"]
    if srcs and pkg is not None:
        raise ctx.error("go_binary takes srcs or pkg, not both")
    if pkg is not None and (pkg.startswith("/") or ".." in pkg.split("/")):
        raise ctx.error(f"pkg: {pkg!r} must be a directory inside the package, e.g. '.' or 'cmd/app'")
    for f in srcs:
        if f.producer or not f.path.endswith(".go") or os.path.dirname(f.path) != package:
            raise ctx.error(f"srcs: '{f.path}' is not a .go file of this package (go builds "
                            "the files of one directory; use pkg for a package elsewhere)")
    pkg = pkg if pkg is not None or srcs else "."
    pkg_dir = os.path.normpath(os.path.join(package, pkg)).replace(os.sep, "/") if pkg else package
    pkg_dir = "" if pkg_dir == "." else pkg_dir
    module = ctx.fs.nearest_with(pkg_dir, "go.mod")  # the module root
    if pkg is not None and module is None:
        raise ctx.error(f"pkg: no go.mod in {pkg_dir or '.'} or above it; add one "
                        "(`go mod init`) or list the files in srcs")
    if module is not None:
        inputs: list[File] = ctx.fs.tree(module)
        inputs += [f for f in srcs if f not in inputs]
    else:
        inputs = list(srcs)
    if pkg is not None:
        rel = os.path.relpath(pkg_dir or ".", module or ".").replace(os.sep, "/")
        cwd, args = module, ["./" + rel if rel != "." else "."]
    else:
        cwd, args = package, [os.path.basename(f.path) for f in srcs]
    vendored = module is not None and ctx.fs.is_file(
        f"{module}/vendor/modules.txt" if module else "vendor/modules.txt")
    fingerprints, tool_params = _toolchain(ctx)
    cgo = ctx.attr["cgo"]
    if cgo is None:
        cgo = tool_params.get("tool_name") == "occlum-go"
    binary = ctx.declare_file(ctx.label.name, action="go-build")
    params = {"cwd": cwd or "", "args": args, "ldflags": list(ctx.attr["ldflags"]),
              "tags": sorted(set(ctx.attr["tags"])), "cgo": bool(cgo), "vendor": vendored,
              "module": module is not None, **tool_params}
    ctx.actions.stage(name="go-build", kind="go.build", func="occlum_rules.actions.go:build",
                      inputs=inputs, outputs=[binary], params=params, toolchains=fingerprints,
                      description=f"go build {' '.join(args)} ({cwd or '.'})")
    return {"files": [binary], "executable": binary}


go_binary = Rule(
    name="go_binary",
    attrs={
        "srcs": Attr(SOURCE_LIST, default=list,
                     doc=".go files of this package's directory (instead of pkg)"),
        "pkg": Attr(STRING, default=None,
                    doc="package directory relative to the BUILD package, inside a module "
                        "(default '.' when srcs is empty)"),
        "ldflags": Attr(STRING_LIST, default=list, doc="extra -ldflags (after -buildid=)"),
        "tags": Attr(STRING_LIST, default=list, doc="build tags"),
        "cgo": Attr(BOOL, default=None,
                    doc="CGO_ENABLED; default on with occlum-go, off with the host go"),
    },
    impl=go_binary_impl,
    doc="A position-independent Go executable (occlum-go when the Occlum toolchain has it). "
        "Standard library or vendored code only: the build never touches the network.",
)

RULES = [go_binary]
