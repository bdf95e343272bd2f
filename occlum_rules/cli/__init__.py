"""The ``occlum-rules`` command: a table of subcommands, each in its own module.

Subcommands are loaded lazily so ``occlum-rules --help`` stays fast and a broken optional
stage cannot break the others. Each module exposes ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import os
import sys

from occlum_rules.errors import UserError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "version": ("occlum_rules.cli.cmd_version", "print the occlum-rules version"),
    "graph": ("occlum_rules.cli.cmd_graph", "print the target graph (Graphviz DOT or SVG)"),
    "toolchains": ("occlum_rules.cli.cmd_toolchains", "show the resolved toolchains and why"),
    "copy-bom": ("occlum_rules.cli.cmd_copy_bom", "drop-in copy_bom: assemble an image from a BOM"),
    "gen-conf": ("occlum_rules.cli.cmd_gen_conf", "drop-in gen_internal_conf"),
    "config": ("occlum_rules.cli.cmd_config", "check or explain an Occlum.json"),
    "protect-integrity": ("occlum_rules.cli.cmd_protect_integrity", "drop-in occlum-protect-integrity"),
    "sefs-cli": ("occlum_rules.cli.cmd_sefs_cli", "drop-in sefs-cli zip/unzip"),
    "patch-builtin-config": ("occlum_rules.cli.cmd_patch_builtin_config", "write a config MAC into .builtin_config"),
    "gen-image-key": ("occlum_rules.cli.cmd_gen_image_key", "generate an image key like occlum gen-image-key"),
    "sgx-sign": ("occlum_rules.cli.cmd_sgx_sign", "drop-in sgx_sign: sign, gendata, catsig, dump"),
    "measure": ("occlum_rules.cli.cmd_measure", "print MRENCLAVE/MRSIGNER of an enclave or instance"),
    "verify": ("occlum_rules.cli.cmd_verify", "verify a package, an instance or a SEFS image"),
    "explain": ("occlum_rules.cli.cmd_explain", "say why an action re-ran"),
    "cache": ("occlum_rules.cli.cmd_cache", "cache stats, gc and verify"),
    "push": ("occlum_rules.cli.cmd_push", "push a built OCI image to a registry"),
    "run-action": ("occlum_rules.cli.cmd_run_action",
                   "run one action inside its remote-execution input root (workers)"),
    "worker": ("occlum_rules.cli.cmd_worker", "run actions for a REAPI scheduler (BuildGrid bots)"),
    "watch": ("occlum_rules.cli.cmd_watch", "watch the output trees so null builds skip the walk"),
}


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [
        "usage: occlum-rules [--debug] COMMAND [ARGS...]",
        "",
        "Build rules for Occlum enclaves. Run `doit build` to build a workspace;",
        "these commands inspect it and stand in for Occlum's own tools.",
        "",
        "commands:",
    ]
    for name, (_, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<{width}}  {text}")
    lines += ["", "Run `occlum-rules COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while args and args[0] in ("--debug", "-v"):
        debug = True
        args.pop(0)
    if debug:
        os.environ["OCCLUM_RULES_DEBUG"] = "1"
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        args[0] = "version"
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"occlum-rules: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"occlum-rules: command '{name}' is not available in this build", file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(rest) or 0)
    except UserError as exc:
        if debug or os.environ.get("OCCLUM_RULES_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
