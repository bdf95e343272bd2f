"""``occlum_k8s_manifest``: a Kubernetes Deployment (and Service) for an Occlum OCI image.

The manifest names the image by digest (``repository@sha256:…``, the built image's
``image.digest``), so what runs is exactly what was built, and asks Intel's SGX device
plugin for what the signed enclave needs: ``sgx.intel.com/epc`` from the enclave size in
the signed enclave's metadata (measured into MRENCLAVE), ``sgx.intel.com/enclave``, and
``sgx.intel.com/provision`` when the instance uses remote attestation (``init_ra``).
``SGX_MODE`` comes from the instance. Everything is checked here, at analysis, so a bad
attribute is one error naming the BUILD.py line; the action only reads and formats.
"""

from __future__ import annotations

import re
from typing import Any

from occlum_rules.core.analysis import source_files
from occlum_rules.core.rule import (
    BOOL,
    INT,
    LABEL,
    SOURCE,
    STRING,
    STRING_DICT,
    STRING_LIST,
    Attr,
    Rule,
    RuleContext,
)

# Docker reference grammar, without tag or digest: [host[:port]/]path-component(/…)*
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]+)?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"([0-9]{1,5})(?:/(tcp|udp|sctp))?", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_QUANTITY = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_RESOURCE_NAME = re.compile(r"(?:[a-z0-9.-]+/)?[A-Za-z0-9][A-Za-z0-9_.-]*")


def _repository(ctx: RuleContext) -> str:
    repo = ctx.attr["repository"]
    why = None
    if "@" in repo:
        why = "has a digest (the manifest adds the image's own)"
    elif ":" in repo.rsplit("/", 1)[-1]:
        why = "has a tag (the manifest names the image by digest)"
    else:
        parts = repo.split("/")
        if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
            if not _HOST.fullmatch(parts[0]):
                why = f"has a bad registry host {parts[0]!r}"
            parts = parts[1:]
        if why is None and not all(_COMPONENT.fullmatch(x) for x in parts):
            why = "is not a repository name (lowercase letters, digits, '.', '_', '-', '/')"
    if why is not None:
        raise ctx.error(f"repository: {repo!r} {why}; give REGISTRY/REPOSITORY such as "
                        "'registry.example.com/team/app'")
    return repo


def _ports(ctx: RuleContext) -> list[list[Any]]:
    out: list[list[Any]] = []
    for spec in ctx.attr["ports"]:
        m = _PORT.fullmatch(spec)
        if m is None or not 1 <= int(m.group(1)) <= 65535:
            raise ctx.error(f"ports: {spec!r} is not a port (1..65535, optionally /tcp, /udp or "
                            "/sctp, such as '8080' or '53/udp')")
        port = [int(m.group(1)), (m.group(2) or "tcp").upper()]
        if port in out:
            raise ctx.error(f"ports: {spec!r} is given twice")
        out.append(port)
    return out


def _name(ctx: RuleContext) -> str:
    name = ctx.attr["app"] or ctx.label.name.lower().replace("_", "-")
    if not _DNS_LABEL.fullmatch(name):
        raise ctx.error(f"app: {name!r} is not a Kubernetes name (lowercase letters, digits and "
                        "'-', at most 63; set app = '…')")
    return name


def _quantities(ctx: RuleContext, attr: str) -> dict[str, str]:
    found = dict(ctx.attr[attr])
    for key, value in found.items():
        if key.startswith("sgx.intel.com/"):
            raise ctx.error(f"{attr}: {key!r} is computed from the signed enclave; leave it out")
        if not _RESOURCE_NAME.fullmatch(key) or not _QUANTITY.fullmatch(value):
            raise ctx.error(f"{attr}: {key!r}: {value!r} is not a resource quantity (such as "
                            "cpu: '500m', memory: '1Gi')")
    return found


def manifest_impl(ctx: RuleContext) -> dict[str, Any]:
    target = ctx.attr["image"]
    image = (target.providers or {}).get("oci_image")
    if image is None or "instance" not in image:
        raise ctx.error(f"image: {target.label} is not an occlum_oci_image target")
    instance = image["instance"]
    repository = _repository(ctx)
    if ctx.attr["replicas"] < 1:
        raise ctx.error(f"replicas: must be at least 1, got {ctx.attr['replicas']}")
    namespace = ctx.attr["namespace"]
    if namespace is not None and not _DNS_LABEL.fullmatch(namespace):
        raise ctx.error(f"namespace: {namespace!r} is not a Kubernetes namespace name")
    env = dict(ctx.attr["env"])
    for key in env:
        if not _ENV_NAME.fullmatch(key):
            raise ctx.error(f"env: {key!r} is not a variable name")
    if "SGX_MODE" in env:
        raise ctx.error("env: SGX_MODE comes from the instance's sgx_mode; leave it out")
    template = None
    if ctx.attr["template"] is not None:
        found = source_files(ctx.attr["template"])
        if len(found) != 1:
            raise ctx.error("template: must name one file")
        template = found[0]
    out = ctx.declare_file("deployment.yaml", action="manifest")
    ctx.actions.stage(
        name="manifest", kind="k8s.manifest", func="occlum_rules.actions.k8s:manifest",
        inputs=[image["digest"], instance["signed"], instance["measurements"],
                *([template] if template else [])],
        outputs=[out],
        params={"name": _name(ctx), "namespace": namespace, "repository": repository,
                "replicas": ctx.attr["replicas"], "ports": _ports(ctx), "env": env,
                "sgx_mode": instance["sgx_mode"],
                "remote_attestation": bool(instance.get("init_ra")),
                "digest": image["digest"].path, "signed": instance["signed"].path,
                "measurements": instance["measurements"].path,
                "template": template.path if template else None,
                "service": ctx.attr["service"], "limits": _quantities(ctx, "limits"),
                "requests": _quantities(ctx, "requests")},
        description=f"Kubernetes manifest for {repository}@<digest of {target.label}>")
    return {"files": [out], "k8s_manifest": {"yaml": out}}


occlum_k8s_manifest = Rule(
    name="occlum_k8s_manifest",
    attrs={
        "image": Attr(LABEL, mandatory=True, doc="the occlum_oci_image to deploy"),
        "repository": Attr(STRING, mandatory=True,
                           doc="REGISTRY/REPOSITORY it is pulled from, without tag or digest"),
        "replicas": Attr(INT, default=1, doc="Deployment replicas (at least 1)"),
        "ports": Attr(STRING_LIST, default=list,
                      doc="container ports, e.g. ['8080', '53/udp']; a Service exposes them"),
        "env": Attr(STRING_DICT, default=dict, doc="container env; SGX_MODE is added"),
        "template": Attr(SOURCE, default=None,
                         doc="a jinja2 file rendered instead of the built-in layout"),
        "namespace": Attr(STRING, default=None, doc="metadata.namespace (default: none)"),
        "app": Attr(STRING, default=None,
                    doc="Kubernetes name (default: the target name, '_' as '-')"),
        "service": Attr(BOOL, default=True, doc="add a ClusterIP Service when ports are given"),
        "limits": Attr(STRING_DICT, default=dict, doc="more limits, e.g. {'cpu': '1'}"),
        "requests": Attr(STRING_DICT, default=dict, doc="requests, e.g. {'memory': '1Gi'}"),
    },
    impl=manifest_impl,
    doc="A Kubernetes Deployment (and Service) running an Occlum image by digest.",
)

RULES = [occlum_k8s_manifest]
