"""Kubernetes manifests of an Occlum image: pure formatting, no file system access.

The adapter (``occlum_rules.actions.k8s``) reads the image digest, the signed enclave and the
measurements and hands this module plain values; everything here is a function of them, so
two builds of the same inputs give the same bytes (sorted keys, no timestamps, no paths).

The SGX figures follow Intel's SGX device plugin: ``sgx.intel.com/epc`` is the enclave's
size as the signed enclave's metadata records it (``metadata_t.enclave_size``: the ELRANGE
that ECREATE puts in SECS.SIZE, so it is part of MRENCLAVE) rounded up to whole MiB;
``sgx.intel.com/enclave: 1`` gives the container ``/dev/sgx_enclave``, and
``sgx.intel.com/provision: 1`` (``/dev/sgx_provision``) is added when the instance uses
remote attestation. Outside HW mode there is no SGX device to ask for, so no SGX resource.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jinja2
import jinja2.sandbox
import yaml

from occlum_rules.errors import UserError
from occlum_rules.stages.template_errors import template_line

MIB = 1 << 20
EPC = "sgx.intel.com/epc"
ENCLAVE = "sgx.intel.com/enclave"
PROVISION = "sgx.intel.com/provision"


def epc_quantity(enclave_size: int) -> str:
    """The enclave size as a Kubernetes quantity, rounded up to whole MiB (``"512Mi"``)."""
    if enclave_size <= 0:
        raise UserError(f"the signed enclave records an enclave size of {enclave_size}")
    return f"{-(-enclave_size // MIB)}Mi"


@dataclass(frozen=True)
class Port:
    """A container port; ``name`` is what the Service's targetPort refers to."""

    number: int
    protocol: str  # "TCP" | "UDP" | "SCTP"

    @property
    def name(self) -> str:
        return f"{self.protocol.lower()}-{self.number}"

    def to_values(self) -> dict[str, Any]:
        return {"number": self.number, "protocol": self.protocol, "name": self.name}


@dataclass(frozen=True)
class ManifestValues:
    """What a manifest says, computed before any layout (built-in or a user template)."""

    name: str
    namespace: str | None
    image: str            # repository@sha256:…
    repository: str
    digest: str
    replicas: int
    ports: list[Port]
    env: dict[str, str]   # user env plus SGX_MODE
    sgx_mode: str
    enclave_size: int
    remote_attestation: bool
    mrenclave: str
    mrsigner: str
    service: bool
    limits: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)

    @property
    def epc(self) -> str:
        return epc_quantity(self.enclave_size)

    def sgx_resources(self) -> dict[str, Any]:
        """The device-plugin resources (extended resources: limits only, request = limit)."""
        if self.sgx_mode != "HW":
            return {}
        found: dict[str, Any] = {EPC: self.epc, ENCLAVE: 1}
        if self.remote_attestation:
            found[PROVISION] = 1
        return found

    def resources(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        limits = {**self.limits, **self.sgx_resources()}
        if limits:
            out["limits"] = limits
        if self.requests:
            out["requests"] = dict(self.requests)
        return out

    def to_template(self) -> dict[str, Any]:
        """The variables a user template sees (documented in the README)."""
        return {
            "name": self.name, "namespace": self.namespace, "image": self.image,
            "repository": self.repository, "digest": self.digest, "replicas": self.replicas,
            "ports": [p.to_values() for p in self.ports],
            "env": [{"name": k, "value": v} for k, v in sorted(self.env.items())],
            "sgx_mode": self.sgx_mode, "enclave_size": self.enclave_size,
            "epc": self.epc if self.sgx_mode == "HW" else None,
            "remote_attestation": self.remote_attestation,
            "sgx_resources": self.sgx_resources(), "resources": self.resources(),
            "mrenclave": self.mrenclave, "mrsigner": self.mrsigner, "service": self.service,
            "labels": {"app.kubernetes.io/name": self.name},
        }


def _metadata(values: ManifestValues) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": values.name, "labels": {"app.kubernetes.io/name": values.name}}
    if values.namespace:
        meta["namespace"] = values.namespace
    return meta


def deployment(values: ManifestValues) -> dict[str, Any]:
    """The Deployment: one container running the image by digest."""
    container: dict[str, Any] = {
        "name": values.name,
        "image": values.image,
        "env": [{"name": k, "value": v} for k, v in sorted(values.env.items())],
    }
    if values.ports:
        container["ports"] = [{"containerPort": p.number, "protocol": p.protocol, "name": p.name}
                              for p in values.ports]
    resources = values.resources()
    if resources:
        container["resources"] = resources
    selector = {"app.kubernetes.io/name": values.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(values),
        "spec": {
            "replicas": values.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": dict(selector),
                    "annotations": {"occlum.io/mrenclave": values.mrenclave,
                                    "occlum.io/mrsigner": values.mrsigner,
                                    "occlum.io/sgx-mode": values.sgx_mode},
                },
                "spec": {"containers": [container]},
            },
        },
    }


def service(values: ManifestValues) -> dict[str, Any]:
    """A ClusterIP Service exposing every port under its own number."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(values),
        "spec": {
            "selector": {"app.kubernetes.io/name": values.name},
            "ports": [{"name": p.name, "port": p.number, "targetPort": p.name,
                       "protocol": p.protocol} for p in values.ports],
        },
    }


def dump(documents: list[dict[str, Any]]) -> str:
    """YAML documents, each opened with ``---``, keys sorted, no line folding."""
    return yaml.safe_dump_all(documents, sort_keys=True, default_flow_style=False,
                              explicit_start=True, width=1 << 16, allow_unicode=True)


def built_in(values: ManifestValues) -> str:
    """The built-in layout: the Deployment, then a Service when there are ports."""
    docs = [deployment(values)]
    if values.ports and values.service:
        docs.append(service(values))
    return dump(docs)



def render_template(source: str, where: str, values: ManifestValues) -> str:
    """Render a user's jinja2 template (sandboxed, StrictUndefined) with the values, and
    check that the result is YAML; any mistake is one UserError naming ``where:line``.

    ``source`` is the template text, ``where`` the workspace path shown in errors."""
    # a loader that gives the template its workspace path as file name: jinja2 rewrites
    # tracebacks to point at that file, which is how an undefined name gets its line
    env = jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FunctionLoader(lambda _: (source, where, lambda: True)),
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters["to_yaml"] = lambda v: yaml.safe_dump(
        v, sort_keys=True, default_flow_style=True, width=1 << 16).rstrip("\n").removesuffix(
            "\n...")
    try:
        text = env.get_template(where).render(**values.to_template())
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"template syntax error: {exc.message}", f"{where}:{exc.lineno}") from None
    except jinja2.TemplateError as exc:
        line = template_line(exc, where)
        kind = "undefined template variable" if isinstance(exc, jinja2.UndefinedError) else \
            "template error"
        raise UserError(f"{kind}: {exc.message or exc}",
                        f"{where}:{line}" if line else where) from None
    try:
        list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (rendered line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"the rendered template is not YAML{at}: "
                        f"{getattr(exc, 'problem', None) or exc}", where) from None
    return text


def manifest(values: ManifestValues, template: tuple[str, str] | None = None) -> str:
    """The manifest text: the built-in layout, or ``template`` = (text, where) rendered."""
    if template is None:
        return built_in(values)
    return render_template(template[0], template[1], values)

