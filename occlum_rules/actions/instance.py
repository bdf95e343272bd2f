"""The actions of an Occlum instance build (what tools/occlum_build.mk does, one action per
recipe): stand-in runtime, initfs, SEFS packs, configuration, config MAC, LibOS patch,
signing and the final layout of links and status files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from occlum_rules.atomic_write import publish, write_atomic
from occlum_rules.core.action import StageContext
from occlum_rules.core.outputs import StampBlob
from occlum_rules.errors import UserError
from occlum_rules.process import run_tool
from occlum_rules.stages.instance_files import assemble_initfs as assemble_initfs_tree
from occlum_rules.stages.instance_files import write_layout
from occlum_rules.stages.instance_layout import cp_mode


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    write_atomic(path, data, mode=mode)


# ----------------------------------------------------------------------------- stand-in

def build_standin(ctx: StageContext) -> None:
    from occlum_rules.standin.build import build_standin as compile_standin

    libos, pal, init, run = ctx.outputs
    with tempfile.TemporaryDirectory(dir=libos.parent.parent) as tmp:
        files = compile_standin(Path(tmp), cc=ctx.params["cc"], sdk_minor=ctx.params["sdk_minor"])
        for src, dst in ((files.libos, libos), (files.pal, pal), (files.init, init),
                         (files.occlum_run, run)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            publish(src, dst)


# ----------------------------------------------------------------------------- initfs

def assemble_initfs(ctx: StageContext) -> None:
    """The initfs ``occlum init`` makes (the plan of stages.instance_layout) plus what
    occlum_build.mk adds at build time (stages.instance_files)."""
    initfs, image_config = ctx.outputs
    p = ctx.params
    host_files = assemble_initfs_tree(
        ctx.root, initfs, image_config, p["entries"], encrypted=p["encrypted"],
        init_ra_conf=p.get("init_ra_conf"),
        image_key=ctx.secrets["image_key"] if p["buildin_image_key"] else None)
    ctx.add_inputs(host_files)


# ----------------------------------------------------------------------------- SEFS

def pack(ctx: StageContext) -> None:
    from occlum_rules.stages.securefs import load_image_key, pack_image

    src = ctx.inputs[0]
    root_dir, mac_file = ctx.outputs
    manifest = None
    if ctx.params.get("manifest"):
        manifest = (ctx.root / ctx.params["manifest"]).read_bytes()
    home = ctx.params.get("occlum_home")
    if home:
        from occlum_rules.actions import occlum_tools

        if root_dir.exists():  # sefs-cli creates the image itself, as `rm -rf build/mount` does
            shutil.rmtree(root_dir)
        root_dir.parent.mkdir(parents=True, exist_ok=True)
        key_path = str(ctx.secrets["image_key"]) if "image_key" in ctx.secrets else None
        occlum_tools.run(occlum_tools.sefs_zip(home, str(src), str(root_dir), str(mac_file), key_path),
                         f"{ctx.label}: pack {ctx.params['what']}", env=occlum_tools.tool_env(home))
        return
    key = load_image_key(ctx.secrets["image_key"]) if "image_key" in ctx.secrets else None
    stamps = StampBlob() if ctx.stamp_cut is not None else None
    result = pack_image(src, root_dir, key=key, state_path=ctx.state_dir / "pack.state", manifest=manifest,
                        label=f"{ctx.label}: pack {ctx.params['what']}", digest_cache=ctx.digests,
                        stamps=stamps, stamp_cut=ctx.stamp_cut or 0)
    if result.tree is not None and stamps is not None:
        ctx.describe_tree(root_dir, result.tree, stamps.encoded())
    _write(mac_file, result.mac_text.encode())
    how = "incrementally" if result.incremental else f"in full ({result.reason})"
    ctx.log(f"{ctx.params['what']}: packed {how}: {result.rewritten} inodes written, "
            f"{result.reused} reused")


# ----------------------------------------------------------------------------- configuration

def occlum_json(ctx: StageContext) -> None:
    from occlum_rules.stages.config import render_occlum_json
    from occlum_rules.stages.config.profiles import profile_for_version

    p = ctx.params
    template = ctx.root / p["template"] if p.get("template") else None
    base = ctx.root / p["base"] if p.get("base") else None  # the install's template
    profile = profile_for_version(p.get("occlum_version"), "the Occlum install's version")
    data = render_occlum_json(template, p.get("variables") or {}, p.get("attrs") or None,
                              base_path=base, profile=profile)
    _write(ctx.outputs[0], data)


def gen_config(ctx: StageContext) -> None:
    from occlum_rules.stages.config import generate_config
    from occlum_rules.stages.config.profiles import profile_for_version

    occlum_json_path, image_mac, init_mac = ctx.inputs[:3]
    enclave_xml, sys_json = ctx.outputs
    home = ctx.params.get("occlum_home")
    if home:
        from occlum_rules.actions import occlum_tools

        argv = occlum_tools.gen_internal_conf(home, str(occlum_json_path),
                                              image_mac.read_text().strip(),
                                              init_mac.read_text().strip(), str(enclave_xml),
                                              str(sys_json))
        edmm = "YES" if ctx.params["edmm"] else "NO"
        occlum_tools.run(argv, f"{ctx.label}: gen_internal_conf",
                         env=occlum_tools.tool_env(home, {"INSTANCE_IS_FOR_EDMM_PLATFORM": edmm}))
        return
    generated = generate_config(occlum_json_path.read_bytes(), image_mac.read_text().strip(),
                                init_mac.read_text().strip(), edmm=ctx.params["edmm"],
                                sgx_mode=ctx.params["sgx_mode"], source=ctx.params["source"],
                                profile=profile_for_version(ctx.params.get("occlum_version"),
                                                            "the Occlum install's version"))
    for warning in generated.warnings:
        ctx.log(f"warning: {warning}")
    _write(enclave_xml, generated.enclave_xml)
    _write(sys_json, generated.sys_json)


def protect(ctx: StageContext) -> None:
    from occlum_rules.stages.securefs import protect_integrity

    home = ctx.params.get("occlum_home")
    if home:
        from occlum_rules.actions import occlum_tools

        work = ctx.outputs[0].parent
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ctx.inputs[0], work / ".Occlum_sys.json")
        occlum_tools.run(occlum_tools.protect(home), f"{ctx.label}: occlum-protect-integrity",
                         cwd=work, env=occlum_tools.tool_env(home))
        os.unlink(work / ".Occlum_sys.json")
        return
    protect_integrity(ctx.inputs[0], ctx.outputs[0])


def patch_libos(ctx: StageContext) -> None:
    from occlum_rules.stages.securefs import read_protected_mac, show_mac_line
    from occlum_rules.stages.securefs.builtin_config import patch_builtin_config_bytes

    libos, protected = ctx.inputs[:2]
    home = ctx.params.get("occlum_home")
    if home:
        from occlum_rules.actions import occlum_tools

        out = ctx.outputs[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(libos, out)
        os.chmod(out, cp_mode(os.stat(libos).st_mode))
        mac_file = out.parent / "tmp_mac"
        env = occlum_tools.tool_env(home)
        occlum_tools.run(occlum_tools.show_mac(home, str(protected), str(mac_file)),
                         f"{ctx.label}: show-mac", env=env)
        occlum_tools.run(occlum_tools.update_builtin_config(str(mac_file), str(out)),
                         f"{ctx.label}: objcopy --update-section", env=env)
        os.unlink(mac_file)
        return
    mac_line = show_mac_line(read_protected_mac(protected)).encode()
    patched = patch_builtin_config_bytes(libos.read_bytes(), mac_line, where=str(libos))
    _write(ctx.outputs[0], patched, cp_mode(os.stat(libos).st_mode))


# ----------------------------------------------------------------------------- signing

def _measurements(ctx: StageContext, signed: Path, libos: Path) -> dict:
    from occlum_rules.core.digests import sha256_file
    from occlum_rules.stages.securefs import mac_text, read_protected_mac
    from occlum_rules.stages.sign import read_signed_info

    info = read_signed_info(signed)
    p = ctx.params
    root_mac = (ctx.root / p["image_mac"]).read_text().strip()
    init_mac = (ctx.root / p["init_mac"]).read_text().strip()
    config_mac = mac_text(read_protected_mac(ctx.root / p["protected"]))
    return {
        "mrenclave": info["mrenclave"],
        "mrsigner": info["mrsigner"],
        "isv_prod_id": info["isv_prod_id"],
        "isv_svn": info["isv_svn"],
        "attributes": info["attributes"],
        "debuggable": info.get("debug_allowed"),
        "sgx_mode": p["sgx_mode"],
        "edmm": p["edmm"],
        "libos": p["libos_desc"],
        "occlum_version": p["occlum_version"],
        "glibc": p.get("glibc_desc"),
        "root_fs_mac": root_mac,
        "init_fs_mac": init_mac,
        "config_mac": config_mac,
        "inputs": {"root_fs_mac": root_mac, "init_fs_mac": init_mac, "config_mac": config_mac,
                   "libos_unpatched_sha256": sha256_file(
                       p["libos_path"] if os.path.isabs(p["libos_path"]) else ctx.root / p["libos_path"]),
                   "enclave_xml_sha256": sha256_file(ctx.root / p["enclave_xml"]),
                   "mrsigner": info["mrsigner"]},
    }


_CAUSES = [
    ("root_fs_mac", "the image changed (root FS MAC)"),
    ("init_fs_mac", "the initfs changed (init FS MAC)"),
    ("enclave_xml_sha256", "enclave resources changed (Enclave.xml from Occlum.json)"),
    ("config_mac", "the configuration changed (Occlum.json → .Occlum_sys.json)"),
    ("libos_unpatched_sha256", "the LibOS changed"),
]


def _say_what_changed(ctx: StageContext, new: dict) -> None:
    previous = ctx.root / ctx.params["final_measurements"]
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return
    if old.get("mrenclave") != new["mrenclave"]:
        causes = [text for key, text in _CAUSES
                  if old.get("inputs", {}).get(key) != new["inputs"][key]]
        ctx.log(f"MRENCLAVE changed {old.get('mrenclave', '?')[:16]}… → {new['mrenclave'][:16]}…: "
                + ("; ".join(causes) if causes else "no recorded input changed"))
    if old.get("mrsigner") != new["mrsigner"]:
        ctx.log(f"MRSIGNER changed: signed with a different key ({new['mrsigner'][:16]}…)")


def sign(ctx: StageContext) -> None:
    from occlum_rules.stages.sign import sign_enclave

    libos, enclave_xml = ctx.inputs[:2]
    signed, measurements = ctx.outputs
    tool = ctx.params.get("sign_tool")
    if tool:
        from occlum_rules.actions import occlum_tools
        from occlum_rules.stages.sign import read_signed_info

        signed.parent.mkdir(parents=True, exist_ok=True)
        occlum_tools.run(occlum_tools.sgx_sign(tool, str(ctx.secrets["key"]), str(enclave_xml),
                                               str(libos), str(signed)),
                         f"{ctx.label}: sgx_sign", env=occlum_tools.tool_env(ctx.params["occlum_home"]))
        _finish_signing(ctx, signed, libos, measurements, read_signed_info(signed)["mrenclave"])
        return
    result = sign_enclave(libos, enclave_xml, ctx.secrets["key"], signed,
                          date=ctx.source_date_epoch)
    _finish_signing(ctx, signed, libos, measurements, result.mrenclave_hex)


def _finish_signing(ctx: StageContext, signed: Path, libos: Path, measurements: Path,
                    mrenclave: str) -> None:
    data = _measurements(ctx, signed, libos)
    if data["mrenclave"] != mrenclave:
        raise UserError(f"{ctx.label}: the signed enclave's MRENCLAVE does not match the "
                        "measurement (internal error)")
    _say_what_changed(ctx, data)
    _write(measurements, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def gendata(ctx: StageContext) -> None:
    from occlum_rules.stages.sign import gendata as make_material

    libos, enclave_xml = ctx.inputs[:2]
    make_material(libos, enclave_xml, ctx.outputs[0], date=ctx.source_date_epoch)


def catsig(ctx: StageContext) -> None:
    """Second half of two-step signing: attach the signature made outside the build."""
    from occlum_rules.stages.sign import catsig as attach

    libos, enclave_xml, material, public_key = ctx.inputs[:4]
    signature = ctx.root / ctx.params["signature"]
    command = ctx.params.get("command")
    if command and not signature.exists():
        argv = [a.replace("{material}", str(material)).replace("{signature}", str(signature))
                for a in command]
        run_tool(argv, f"{ctx.label}: the external signer", cwd=ctx.root, one_line=True,
                 max_chars=400)
    if not signature.exists():
        raise UserError(
            f"{ctx.label}: waiting for the enclave signature. Sign "
            f"{os.path.relpath(material, ctx.root)} (256 bytes; RSA-3072, e=3, PKCS#1 v1.5 "
            f"SHA-256, e.g. `openssl dgst -sha256 -sign KEY.pem -out {ctx.params['signature']} "
            f"{os.path.relpath(material, ctx.root)}`) and save the 384-byte signature as "
            f"{ctx.params['signature']}; then run `doit build` again")
    ctx.add_inputs([signature])
    signed, measurements = ctx.outputs
    result = attach(libos, enclave_xml, public_key, signature, material, signed)
    _finish_signing(ctx, signed, libos, measurements, result.mrenclave_hex)


# ----------------------------------------------------------------------------- layout

def layout(ctx: StageContext) -> None:
    """Links, copies and status files that make the directory an Occlum instance."""
    p = ctx.params
    write_layout(ctx.root, ctx.root / p["instance_dir"], p["entries"],
                 dict(zip(p["names"], ctx.outputs)))
