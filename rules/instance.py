"""``occlum_instance``: a signed Occlum instance, one cached action per build stage.

The actions mirror the recipes of Occlum's ``tools/occlum_build.mk`` (image pack, initfs
pack, gen_internal_conf, protect, .builtin_config patch, sign, links), so each stage re-runs
only when its own inputs change: a new signing key re-signs, a new image key re-packs the
image, an ``env`` change in Occlum.json re-runs config → protect → patch → sign, and one
changed image file re-packs incrementally. The instance directory has the layout
``occlum init`` + ``occlum build`` leave, so a real Occlum install can ``occlum run`` it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from occlum_rules.core.analysis import source_files
from occlum_rules.core.fileview import dev_signing_key
from occlum_rules.core.rule import (
    BOOL,
    JSON,
    LABEL,
    SOURCE,
    STRING,
    Attr,
    File,
    Rule,
    RuleContext,
)
from occlum_rules.errors import UserError
from occlum_rules.toolchains import occlum_layout as layout
from occlum_rules.toolchains.occlum import OcclumInstall

STANDIN_VERSION = "0.31.0"

_MODE_SUFFIX = {"HW": "", "SIM": "_sim", "HYPER": "_hyper"}
_CONFIG_ATTRS = ("resource_limits", "process", "entry_points", "env", "metadata", "mount", "feature")
_MUSL_LIBS = ("libc.so", "libstdc++.so.6", "libgcc_s.so.1", "libgomp.so.1")


@dataclass(frozen=True)
class Runtime:
    """The LibOS side of an instance: from an Occlum install (``real``) or the stand-in."""

    libos: File                     # the LibOS library the patch stage copies
    pal: File
    init: str | None                # host path (install) or workspace path (stand-in)
    bins: dict[str, str | File]     # build/bin name -> install path (real) or stand-in file
    version: str                    # Occlum version the instance is laid out for
    desc: str                       # what the build says it used
    real: bool
    fingerprint: str
    init_input: list[File] = field(default_factory=list)  # files the initfs action reads


def _file(path: str) -> File:
    return File(path=path)


def _signing_key(ctx: RuleContext, install: OcclumInstall | None) -> tuple[str, str]:
    """(path, where it came from) of the signing key."""
    if ctx.attr["sign_key"] is not None:
        return source_files(ctx.attr["sign_key"])[0].path, "the rule's sign_key"
    configured = ctx.workspace.signing.get("key")
    if configured:
        return configured, "WORKSPACE.yaml signing.key"
    if install is not None and install.templates.get("Enclave.pem"):
        return str(install.templates["Enclave.pem"]), "the Occlum install's template Enclave.pem"
    ctx.toolchains.note("occlum-rules: signing with the built-in development key (public; set "
                        "signing.key in WORKSPACE.yaml for anything you ship)")
    return dev_signing_key(), "the built-in development key"


def _key_check(ctx: RuleContext, path: str) -> str:
    try:
        return ctx.fs.signing_key_fingerprint(path)
    except UserError as exc:
        raise ctx.error(exc.message) from None


def _runtime(ctx: RuleContext, install: OcclumInstall | None, mode: str) -> Runtime:
    """LibOS, PAL, init, occlum-run and musl libs: from the Occlum install, or the stand-in."""
    if install is not None:
        version = install.version
        libos = _file(str(install.libos_lib(mode)))
        pal = _file(str(install.pal_lib(mode)))
        ctx.toolchains.note(f"occlum-rules: LibOS: Occlum {version} from {install.home}")
        real_bins: dict[str, str | File] = {
            n: str(install.bin_dir / n)
            for n in ("occlum_exec_client", "occlum_exec_server", "occlum-run")}
        return Runtime(libos=libos, pal=pal, init=str(install.init) if install.init else None,
                       bins=real_bins, version=version, desc=f"Occlum {version} ({install.home})",
                       init_input=[], real=True,  # the initfs action records what it copies
                       fingerprint=install.fingerprint)
    gcc = ctx.toolchains.find("cc", ["gcc", "cc"], why="stand-in LibOS compiler")
    outs = [ctx.declare_file(f"runtime/{n}", action="standin", private=True)
            for n in ("libocclum-libos.so", "libocclum-pal.so", "init", "occlum-run")]
    ctx.actions.stage(
        name="standin", kind="standin", func="occlum_rules.actions.instance:build_standin",
        inputs=layout.standin_sources(), outputs=outs,
        params={"cc": gcc.path, "sdk_minor": 20},
        toolchains=[gcc.fingerprint, ctx.toolchains.find("ld", ["ld"], why="links the stand-in").fingerprint],
        description="build the stand-in LibOS (cannot run on SGX)")
    ctx.toolchains.note("occlum-rules: LibOS: the stand-in built from occlum_rules/standin (no "
                        "Occlum install): instances build, sign and package, but cannot run on SGX")
    libos, pal, init, run = outs
    return Runtime(libos=libos, pal=pal, init=init.path,
                   bins={"occlum_exec_client": run, "occlum_exec_server": run, "occlum-run": run},
                   version=STANDIN_VERSION, desc="stand-in LibOS",
                   init_input=[init], real=False, fingerprint=gcc.fingerprint)


def _config_version(ctx: RuleContext, install: OcclumInstall | None, rt: Runtime) -> str | None:
    """The Occlum version whose gen_internal_conf the config actions reproduce (None: the
    newest, as with the stand-in). An install whose release has no config profile stops
    the build here, naming its version header."""
    if install is None or not rt.real:
        return None
    try:
        layout.check_config_profile(rt.version, str(install.version_header))
    except UserError as exc:
        raise ctx.error(str(exc)) from None
    return rt.version


def _initfs_plan(ctx: RuleContext, rt: Runtime,
                 variant: str | None) -> tuple[list[dict[str, Any]], str]:
    try:
        return layout.initfs_entries(ctx.toolchains, rt.init, variant, listdir=ctx.fs.listdir,
                                     exists=ctx.fs.exists, is_file=ctx.fs.is_file)
    except UserError as exc:
        raise ctx.error(str(exc)) from None


def instance_impl(ctx: RuleContext) -> dict[str, Any]:
    ws = ctx.workspace
    attr = ctx.attr
    mode = attr["sgx_mode"] or ws.sgx_mode
    edmm = ws.edmm if attr["edmm"] is None else attr["edmm"]
    if mode != "HW":
        edmm = False  # occlum build: INSTANCE_IS_FOR_EDMM_PLATFORM is NO outside HW mode
    bom = attr["bom"]
    if "image" not in (bom.providers or {}):
        raise ctx.error(f"bom: {bom.label} is not an occlum_bom target")
    image: File = bom.providers["image"]
    image_manifest: File = bom.providers["image_manifest"]
    install = ctx.toolchains.occlum()
    rt = _runtime(ctx, install, mode)
    suffix = _MODE_SUFFIX[mode]
    inst = f"{ctx.package_out}/{ctx.label.name}"
    tools: dict[str, str] = {}
    if ws.stages == "occlum":
        if install is None:
            raise ctx.error("WORKSPACE.yaml stages: occlum needs an Occlum install, and none was "
                            "found (see `occlum-rules toolchains`)")
        tools = {"occlum_home": str(install.home)}

    image_key = source_files(attr["image_key"])[0].path if attr["image_key"] is not None else None
    image_key_fp = None
    if image_key is not None:
        try:
            image_key_fp = ctx.fs.image_key_fingerprint(image_key)
        except UserError as exc:
            raise ctx.error(exc.message) from None
    if attr["buildin_image_key"] and image_key is None:
        raise ctx.error("buildin_image_key = True needs an image_key")
    if attr["init_ra"] and not rt.real:
        raise ctx.error(f"init_ra = {attr['init_ra']!r} needs an Occlum install (its init-ra "
                        "binaries); none was found")

    # initfs (+ build/image_config.json)
    initfs = ctx.declare_file("initfs", action="initfs", is_dir=True)
    image_config = ctx.declare_file("build/image_config.json", action="initfs")
    initfs_entries, ra_template = _initfs_plan(ctx, rt, attr["init_ra"])
    init_ra_conf = source_files(attr["init_ra_conf"])[0] if attr["init_ra_conf"] else (
        _file(ra_template) if ra_template else None)
    secrets = {"image_key": image_key} if (attr["buildin_image_key"] and image_key) else {}
    ctx.actions.stage(
        name="initfs", kind="initfs", func="occlum_rules.actions.instance:assemble_initfs",
        inputs=[*rt.init_input, *([init_ra_conf] if init_ra_conf else [])],
        outputs=[initfs, image_config],
        params={"entries": initfs_entries, "encrypted": image_key is not None,
                "buildin_image_key": bool(attr["buildin_image_key"]),
                "image_key_fp": image_key_fp if attr["buildin_image_key"] else None,
                "init_ra_conf": init_ra_conf.path if init_ra_conf else None},
        secrets=secrets, cacheable=not secrets,
        description="assemble the initfs")

    # SEFS packs
    mount_root = ctx.declare_file("build/mount/__ROOT", action="pack-image", is_dir=True)
    mount_mac = ctx.declare_file("build/mount/.ROOT_MAC", action="pack-image")
    ctx.actions.stage(
        name="pack-image", kind="sefs.pack", func="occlum_rules.actions.instance:pack",
        inputs=[image, image_manifest], outputs=[mount_root, mount_mac],
        params={"what": "image", "manifest": image_manifest.path,
                "image_key_fp": image_key_fp, **tools},
        secrets={"image_key": image_key} if image_key else {}, in_place=True,
        description="pack the image into build/mount (SEFS)")
    initfs_root = ctx.declare_file("build/initfs/__ROOT", action="pack-initfs", is_dir=True)
    initfs_mac = ctx.declare_file("build/initfs/.ROOT_MAC", action="pack-initfs")
    ctx.actions.stage(
        name="pack-initfs", kind="sefs.pack", func="occlum_rules.actions.instance:pack",
        inputs=[initfs], outputs=[initfs_root, initfs_mac],
        params={"what": "initfs", **tools},
        in_place=True, cacheable=not secrets, description="pack the initfs into build/initfs (SEFS)")

    # Occlum.json
    occlum_json = ctx.declare_file("Occlum.json", action="occlum-json")
    template = source_files(attr["occlum_json"])[0] if attr["occlum_json"] else None
    attrs = {k: attr[k] for k in _CONFIG_ATTRS if attr[k] is not None}
    variables = {**ws.vars, **(attr["vars"] or {}), "name": ctx.label.name, "sgx_mode": mode}
    config_version = _config_version(ctx, install, rt)
    # Without a user template, start from the install's own template (keys differ by release).
    base = (_file(str(install.templates["Occlum.json"]))
            if template is None and install is not None and "Occlum.json" in install.templates
            else None)
    ctx.actions.stage(
        name="occlum-json", kind="occlum.json", func="occlum_rules.actions.instance:occlum_json",
        inputs=[x for x in (template, base) if x], outputs=[occlum_json],
        params={"template": template.path if template else None, "variables": variables,
                "attrs": attrs, "base": base.path if base else None,
                "occlum_version": config_version},
        description="render Occlum.json")

    # gen_internal_conf
    enclave_xml = ctx.declare_file("build/Enclave.xml", action="config")
    sys_json = ctx.declare_file("build/.Occlum_sys.json", action="config")
    ctx.actions.stage(
        name="config", kind="config", func="occlum_rules.actions.instance:gen_config",
        inputs=[occlum_json, mount_mac, initfs_mac], outputs=[enclave_xml, sys_json],
        params={"edmm": bool(edmm), "sgx_mode": mode, "source": f"{inst}/Occlum.json",
                "occlum_version": config_version, **tools},
        description="generate Enclave.xml and .Occlum_sys.json")

    protected = ctx.declare_file("build/.Occlum_sys.json.protected", action="protect")
    ctx.actions.stage(
        name="protect", kind="protect", func="occlum_rules.actions.instance:protect",
        inputs=[sys_json], outputs=[protected], params=dict(tools),
        description="protect .Occlum_sys.json")

    libos_file = f"libocclum-libos{suffix}.so.{rt.version}"
    patched = ctx.declare_file(f"build/lib/{libos_file}", action="patch")
    ctx.actions.stage(
        name="patch", kind="patch.builtin_config", func="occlum_rules.actions.instance:patch_libos",
        inputs=[rt.libos, protected], outputs=[patched], params=dict(tools),
        description="patch the config MAC into .builtin_config")

    # signing
    signed = ctx.declare_file("build/lib/libocclum-libos.signed.so", action="sign")
    measurements = ctx.declare_file("build/measurements.json", action="sign")
    sign_params: dict[str, Any] = {
        "sgx_mode": mode, "edmm": bool(edmm), "libos_desc": rt.desc,
        "glibc_desc": bom.providers.get("glibc"),
        "occlum_version": rt.version if rt.real else None,
        "image_mac": mount_mac.path, "init_mac": initfs_mac.path,
        "protected": protected.path, "enclave_xml": enclave_xml.path,
        "libos_path": rt.libos.path, "final_measurements": measurements.path}
    sign_inputs = [patched, enclave_xml, mount_mac, initfs_mac, protected, rt.libos]
    signing_mode = ws.signing.get("mode", "online")
    if signing_mode == "offline" or ws.signing.get("command"):
        public = ws.signing.get("public_key")
        if not public:
            raise ctx.error("two-step signing needs signing.public_key in WORKSPACE.yaml (the "
                            "PEM public key of the offline signer)")
        material = ctx.declare_file("signing-material.bin", action="gendata", private=True)
        ctx.actions.stage(
            name="gendata", kind="sign.gendata", func="occlum_rules.actions.instance:gendata",
            inputs=[patched, enclave_xml], outputs=[material],
            description="make the signing material (two-step signing)")
        sig_dir = ws.signing.get("signatures_dir")
        sig_name = f"{ctx.label.name}.enclave.sig"
        signature = f"{sig_dir}/{ctx.label.package}/{sig_name}" if sig_dir else (
            f"{ctx.label.package}/{sig_name}" if ctx.label.package else sig_name)
        sign_params.update({"signature": signature, "command": ws.signing.get("command"),
                            "mrsigner": _key_check(ctx, public)})
        ctx.actions.stage(
            name="sign", kind="sign.catsig", func="occlum_rules.actions.instance:catsig",
            inputs=[patched, enclave_xml, material, _file(public), *sign_inputs[2:]],
            outputs=[signed, measurements], params=sign_params,
            description="attach the offline signature (catsig)")
    else:
        key_path, _why = _signing_key(ctx, install)
        sign_params["mrsigner"] = _key_check(ctx, key_path)
        if tools and install is not None:
            tool = install.sign_tool(mode)
            if tool is None:
                raise ctx.error(f"stages: occlum: the Occlum install has no sgx_sign for mode {mode}")
            sign_params.update({"sign_tool": str(tool), **tools})
        ctx.actions.stage(
            name="sign", kind="sign", func="occlum_rules.actions.instance:sign",
            inputs=sign_inputs, outputs=[signed, measurements], params=sign_params,
            secrets={"key": key_path}, description="sign the enclave")

    # links, copies and status files
    entries, lib_names = layout.build_lib_layout(rt.version, mode, rt.pal.path)
    entries.update({
        ".__occlum_status": {"kind": "text", "text": "built\n"},
        ".sgx_mode": {"kind": "text", "text": f"{mode}\n"},
        "image": {"kind": "symlink", "target": os.path.relpath(image.path, inst)},
    })
    layout_inputs = [rt.pal]  # build/lib only receives atomic renames: pruning is safe
    if attr["init_ra"] and init_ra_conf is not None:  # occlum init --init-ra leaves it there
        entries["init_ra_conf.json"] = {"kind": "copy", "src": init_ra_conf.path}
        layout_inputs.append(init_ra_conf)
    for name, src in rt.bins.items():
        if isinstance(src, File):  # the stand-in's, built here
            entries[f"build/bin/{name}"] = {"kind": "copy", "src": src.path}
            layout_inputs.append(src)
        else:
            entries[f"build/bin/{name}"] = {"kind": "symlink", "target": src}
    names = sorted(entries)
    outs = [ctx.declare_file(n, action="layout") for n in names]
    ctx.actions.stage(
        name="layout", kind="instance.layout", func="occlum_rules.actions.instance:layout",
        inputs=layout_inputs, outputs=outs,
        params={"names": names, "entries": entries, "instance_dir": inst},
        ensure_dirs=[f"{inst}/run/mount/__ROOT", f"{inst}/run/initfs/__ROOT"],
        # only this mode's LibOS/PAL: `occlum build` empties build/ when the SGX mode changes
        prune_dirs={f"{inst}/build/lib": list(lib_names)},
        description="links and status files of the instance")
    return {
        "files": [signed, measurements, *outs],
        "instance": {"dir": inst, "sgx_mode": mode, "signed": signed, "measurements": measurements,
                     "occlum_json": occlum_json, "image": image, "image_manifest": image_manifest,
                     "libos_desc": rt.desc, "version": rt.version, "real": rt.real,
                     "init_ra": attr["init_ra"],
                     "all_outputs": [occlum_json, initfs, image_config, mount_root, mount_mac,
                                     initfs_root, initfs_mac, enclave_xml, sys_json, protected,
                                     patched, signed, measurements, *outs]},
    }


occlum_instance = Rule(
    name="occlum_instance",
    attrs={
        "bom": Attr(LABEL, mandatory=True, doc="the occlum_bom target giving the image"),
        "occlum_json": Attr(SOURCE, default=None,
                            doc="Occlum.json, or Occlum.json.j2 rendered with vars (StrictUndefined)"),
        "vars": Attr(JSON, default=None, doc="variables for an Occlum.json.j2 template"),
        **{k: Attr(JSON, default=None, doc=f"Occlum.json '{k}', merged over the template")
           for k in _CONFIG_ATTRS},
        "sgx_mode": Attr(STRING, default=None, values=("HW", "SIM", "HYPER"),
                         doc="SGX mode (default: WORKSPACE.yaml sgx_mode)"),
        "edmm": Attr(BOOL, default=None, doc="build for EDMM platforms (HW mode only)"),
        "sign_key": Attr(SOURCE, default=None, doc="PEM signing key (RSA-3072, e=3)"),
        "image_key": Attr(SOURCE, default=None, doc="image key: encrypts the image SEFS"),
        "buildin_image_key": Attr(BOOL, default=False, doc="put the image key into the initfs"),
        "init_ra": Attr(STRING, default=None, values=("grpc_ratls", "aecs"),
                        doc="init-ra variant: the initfs of `occlum init --init-ra` (needs the "
                            "install's RA toolchain)"),
        "init_ra_conf": Attr(SOURCE, default=None, doc="init_ra_conf.json for init-ra"),
    },
    impl=instance_impl,
    doc="A signed Occlum instance built from an occlum_bom image.",
)

RULES = [occlum_instance]
