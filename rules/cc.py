"""C rules: ``occlum_cc_binary`` and ``occlum_cc_library``.

Each source compiles in its own action (so changing one file recompiles one object); a
library is a deterministic ``ar`` archive; a binary links in a Python stage that checks the
result is PIE. Paths are relative to the workspace root and the root is mapped to ``.`` in
debug info, so two checkouts produce identical bytes.
"""

from __future__ import annotations

from typing import Any

from occlum_rules.core.analysis import source_files
from occlum_rules.core.rule import (
    SOURCE_LIST,
    STRING_LIST,
    Attr,
    File,
    Rule,
    RuleContext,
    Target,
)
from occlum_rules.toolchains.resolve import Tool

_C_EXT = (".c", ".cc", ".cpp", ".cxx", ".S", ".s")

COMMON_ATTRS = {
    "srcs": Attr(SOURCE_LIST, default=list, doc="C/C++ sources"),
    "hdrs": Attr(SOURCE_LIST, default=list, doc="headers (public for libraries)"),
    "copts": Attr(STRING_LIST, default=list, doc="extra compiler flags"),
    "deps": Attr(SOURCE_LIST, default=list, doc="occlum_cc_library targets"),
    "toolchain": Attr(STRING_LIST, default=None,
                      doc="compiler chain for this target, e.g. ['musl-gcc', 'gcc']"),
}


def _dep_info(ctx: RuleContext) -> tuple[list[File], list[File], list[str]]:
    """Headers, static libraries and include dirs from deps (transitively)."""
    hdrs: list[File] = []
    libs: list[File] = []
    includes: list[str] = []
    for dep in ctx.attr["deps"]:
        providers = (dep.providers if isinstance(dep, Target) else None) or {}
        if "cc" not in providers:
            name = dep.label if isinstance(dep, Target) else dep
            raise ctx.error(f"deps: {name} is not an occlum_cc_library")
        cc = providers["cc"]
        hdrs += cc["hdrs"]
        libs += cc["libs"]
        includes += cc["includes"]
    return hdrs, libs, sorted(set(includes))


def _compile_all(ctx: RuleContext, tool: Tool) -> tuple[list[File], list[File], list[str]]:
    srcs = [f for f in source_files(ctx.attr["srcs"]) if f.path.endswith(_C_EXT)]
    if not srcs:
        raise ctx.error("srcs: no C/C++ source files")
    own_hdrs = source_files(ctx.attr["hdrs"]) + [
        f for f in source_files(ctx.attr["srcs"]) if not f.path.endswith(_C_EXT)]
    dep_hdrs, dep_libs, includes = _dep_info(ctx)
    pkg = ctx.label.package or "."
    include_dirs = sorted(set([pkg, *includes]))
    objects: list[File] = []
    for src in srcs:
        stem = src.path[len(ctx.label.package) + 1:] if ctx.label.package else src.path
        action = f"compile-{stem}"
        obj = ctx.declare_file(f"_objs/{stem}.o", action=action)
        argv: list[str | File] = [tool.path, "-c", src.path, "-o", obj, "-fPIE", "-O2",
                "-ffile-prefix-map=${WORKSPACE}=.", f"-frandom-seed={src.path}"]
        argv += [f"-I{d}" for d in include_dirs] + ["-I."] + list(ctx.attr["copts"])
        ctx.actions.run(name=action, kind="cc.compile", argv=argv,
                        inputs=[src, *own_hdrs, *dep_hdrs], outputs=[obj],
                        toolchains=[tool.fingerprint], description=f"compile {src.path}")
        objects.append(obj)
    return objects, own_hdrs + dep_hdrs, include_dirs


def _tool(ctx: RuleContext) -> Tool:
    return ctx.toolchains.cc(ctx.attr.get("toolchain"))


def cc_library_impl(ctx: RuleContext) -> dict[str, Any]:
    tool = _tool(ctx)
    objects, hdrs, include_dirs = _compile_all(ctx, tool)
    ar = ctx.toolchains.ar()
    lib = ctx.declare_file(f"lib{ctx.label.name}.a", action="archive")
    ctx.actions.run(name="archive", kind="cc.archive", argv=[ar.path, "rcsD", lib, *objects],
                    inputs=objects, outputs=[lib], toolchains=[ar.fingerprint],
                    description=f"archive {lib.path}")
    _, dep_libs, _ = _dep_info(ctx)
    return {"files": [lib],
            "cc": {"hdrs": hdrs, "libs": [lib, *dep_libs], "includes": include_dirs}}


def cc_binary_impl(ctx: RuleContext) -> dict[str, Any]:
    tool = _tool(ctx)
    objects, _, _ = _compile_all(ctx, tool)
    _, dep_libs, _ = _dep_info(ctx)
    binary = ctx.declare_file(ctx.label.name, action="link")
    argv = [tool.path, "-o", "${OUT:0}", "-pie", *[o.path for o in objects],
            *[lib.path for lib in dep_libs], *ctx.attr["linkopts"]]
    ctx.actions.stage(name="link", kind="cc.link", func="occlum_rules.actions.cc:link",
                      inputs=[*objects, *dep_libs], outputs=[binary],
                      params={"argv": argv}, toolchains=[tool.fingerprint],
                      description=f"link {binary.path}")
    return {"files": [binary], "executable": binary, "toolchain": _describe(tool)}


def _describe(tool: Tool) -> str:
    """How a target was built, for messages: 'musl-gcc', 'gcc, host toolchain'."""
    return f"{tool.name}, host toolchain" if tool.name in ("gcc", "cc", "clang") else tool.name


occlum_cc_library = Rule(
    name="occlum_cc_library",
    attrs=dict(COMMON_ATTRS),
    impl=cc_library_impl,
    doc="A static C/C++ library for Occlum programs.",
)

occlum_cc_binary = Rule(
    name="occlum_cc_binary",
    attrs={**COMMON_ATTRS, "linkopts": Attr(STRING_LIST, default=list, doc="extra linker flags")},
    impl=cc_binary_impl,
    doc="A position-independent C/C++ executable for Occlum.",
)

RULES = [occlum_cc_library, occlum_cc_binary]
