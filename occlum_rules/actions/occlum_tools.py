"""``stages: occlum``: the same actions, run by the installed Occlum tools.

The argument lists are those of Occlum's ``tools/occlum_build.mk`` recipes, so an
instance built this way is what ``occlum build`` would make from the same inputs (and, for
integrity-only images, byte-identical to the built-in Python stages).
"""

from __future__ import annotations

import os
from pathlib import Path

from occlum_rules.process import deterministic_env, run_tool


def sefs_zip(home: str, src: str, dst_root: str, mac_file: str, key: str | None = None) -> list[str]:
    argv = [f"{home}/build/bin/sefs-cli_sim", "--enclave", f"{home}/build/lib/libsefs-cli.signed.so",
            "zip"]
    if key is not None:
        argv += ["--key", key]
    return argv + [src, dst_root, mac_file]


def gen_internal_conf(home: str, user_json: str, user_fs_mac: str, init_fs_mac: str,
                      sdk_xml: str, output_json: str) -> list[str]:
    return [f"{home}/build/bin/gen_internal_conf", "--user_json", user_json, "gen_conf",
            "--user_fs_mac", user_fs_mac, "--sdk_xml", sdk_xml, "--init_fs_mac", init_fs_mac,
            "--output_json", output_json]


def protect(home: str) -> list[str]:
    """Run inside ``build/``: writes ``.Occlum_sys.json.protected`` beside its input."""
    return [f"{home}/build/bin/occlum-protect-integrity", "protect", ".Occlum_sys.json"]


def show_mac(home: str, protected: str, mac_file: str) -> list[str]:
    return [f"{home}/build/bin/occlum-protect-integrity", "show-mac", protected, mac_file]


def update_builtin_config(mac_file: str, libos: str) -> list[str]:
    return ["objcopy", "--update-section", f".builtin_config={mac_file}", libos]


def sgx_sign(tool: str, key: str, enclave_xml: str, enclave: str, out: str) -> list[str]:
    return [tool, "sign", "-key", key, "-config", enclave_xml, "-enclave", enclave, "-out", out]


def tool_env(home: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The Occlum tools find their SGX SDK libraries (and parts of their own) through the
    caller's environment, so it is inherited, with the deterministic settings on top."""
    sdk = os.environ.get("SGX_SDK") or (f"{home}/sgxsdk-tools" if os.path.isdir(f"{home}/sgxsdk-tools")
                                         else "/opt/intel/sgxsdk")
    # the real sgx_sign dates SIGSTRUCT "today"; drop-in replacements honour SOURCE_DATE_EPOCH
    return deterministic_env(os.environ.get("SOURCE_DATE_EPOCH", "0"), inherit=True,
                             extra={"LD_LIBRARY_PATH": f"{sdk}/sdk_libs", **(extra or {})})


def run(argv: list[str], what: str, cwd: str | Path | None = None,
        env: dict[str, str] | None = None) -> None:
    run_tool(argv, f"{what}: {Path(argv[0]).name}", cwd=cwd, env=env, lines=10, tail=True,
             one_line=True, not_found=f"{what}: the Occlum tool {argv[0]} is missing")
