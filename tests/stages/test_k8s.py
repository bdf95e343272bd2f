"""stages.k8s on its own: the EPC quantity, the built-in Deployment/Service layout, and user
templates (sandboxed, StrictUndefined, errors naming template:line)."""

from __future__ import annotations

import pytest
import yaml

from occlum_rules.errors import UserError
from occlum_rules.stages.k8s import ManifestValues, Port, epc_quantity, manifest

DIGEST = "sha256:" + "ab" * 32


def values(**over) -> ManifestValues:
    base = dict(name="app", namespace=None, image=f"reg.example.com/team/app@{DIGEST}",
                repository="reg.example.com/team/app", digest=DIGEST, replicas=2,
                ports=[Port(8080, "TCP"), Port(53, "UDP")], env={"B": "2", "A": "1", "SGX_MODE": "HW"},
                sgx_mode="HW", enclave_size=(512 << 20) + 1, remote_attestation=False,
                mrenclave="e" * 64, mrsigner="f" * 64, service=True)
    base.update(over)
    return ManifestValues(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("size, quantity", [
    (1, "1Mi"), (1 << 20, "1Mi"), ((1 << 20) + 1, "2Mi"), (8 << 30, "8192Mi"),
])
def test_epc_is_the_enclave_size_rounded_up_to_mib(size, quantity):
    assert epc_quantity(size) == quantity


def test_a_zero_enclave_size_is_an_error():
    with pytest.raises(UserError, match="enclave size of 0"):
        epc_quantity(0)


def _docs(text: str) -> list[dict]:
    return list(yaml.safe_load_all(text))


def test_the_built_in_layout_is_a_deployment_and_a_service():
    deployment, service = _docs(manifest(values()))
    assert deployment["kind"] == "Deployment" and deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"reg.example.com/team/app@{DIGEST}"
    assert container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"},
                                {"name": "SGX_MODE", "value": "HW"}]
    assert container["resources"] == {"limits": {"sgx.intel.com/epc": "513Mi",
                                                 "sgx.intel.com/enclave": 1}}
    assert [p["containerPort"] for p in container["ports"]] == [8080, 53]
    assert service["kind"] == "Service"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["protocol"]) for p in service["spec"]["ports"]] == [(8080, "TCP"),
                                                                            (53, "UDP")]
    assert "namespace" not in deployment["metadata"]


def test_no_service_without_ports_or_when_turned_off():
    assert [d["kind"] for d in _docs(manifest(values(ports=[])))] == ["Deployment"]
    assert [d["kind"] for d in _docs(manifest(values(service=False)))] == ["Deployment"]


def test_provision_only_with_remote_attestation():
    def limits(v: ManifestValues) -> dict:
        return _docs(manifest(v))[0]["spec"]["template"]["spec"]["containers"][0][
            "resources"]["limits"]
    assert "sgx.intel.com/provision" not in limits(values())
    assert limits(values(remote_attestation=True))["sgx.intel.com/provision"] == 1


def test_sim_mode_asks_for_no_sgx_device():
    v = values(sgx_mode="SIM", env={"SGX_MODE": "SIM"}, limits={"cpu": "1"},
               requests={"memory": "1Gi"})
    container = _docs(manifest(v))[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"cpu": "1"}, "requests": {"memory": "1Gi"}}
    assert {"name": "SGX_MODE", "value": "SIM"} in container["env"]


def test_the_text_is_deterministic_with_sorted_keys():
    text = manifest(values(namespace="prod"))
    assert text == manifest(values(namespace="prod", env={"A": "1", "SGX_MODE": "HW", "B": "2"}))
    assert text.startswith("---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n")
    assert _docs(text)[0]["metadata"]["namespace"] == "prod"


TEMPLATE = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ name }}
spec:
  replicas: {{ replicas }}
  template:
    spec:
      containers:
      - image: {{ image }}
        env: {{ env | to_yaml }}
        resources:
          limits: {{ sgx_resources | to_yaml }}
"""


def test_a_template_gets_the_computed_values():
    doc = _docs(manifest(values(remote_attestation=True), (TEMPLATE, "app/deploy.yaml.j2")))[0]
    container = doc["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"reg.example.com/team/app@{DIGEST}"
    assert container["resources"]["limits"] == {"sgx.intel.com/epc": "513Mi",
                                                "sgx.intel.com/enclave": 1,
                                                "sgx.intel.com/provision": 1}
    assert {"name": "SGX_MODE", "value": "HW"} in container["env"]


@pytest.mark.parametrize("source, where, message", [
    (TEMPLATE.replace("{{ replicas }}", "{{ replica }}"), "app/t.j2:6",
     "undefined template variable: 'replica' is undefined"),
    ("a: 1\n{% for p in ports %}\n- {{ p.nmae }}\n{% endfor %}\n", "app/t.j2:3",
     "undefined template variable"),
    ("a: {% if %}\n", "app/t.j2:1", "template syntax error"),
    ("a: {{ name.__class__ }}\n", "app/t.j2:1", "unsafe"),
    ("a: [\n", "app/t.j2", "the rendered template is not YAML"),
])
def test_template_mistakes_are_one_error_naming_the_file(source, where, message):
    with pytest.raises(UserError) as err:
        manifest(values(), (source, "app/t.j2"))
    assert err.value.where == where and message in err.value.message
