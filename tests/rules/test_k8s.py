"""occlum_k8s_manifest end to end: real images built from a stand-in Occlum install (HW,
HW with init-ra, SIM), their manifests read back with PyYAML. The image reference is
checked against image.digest, the EPC quantity against the enclave size read here from the
signed enclave's .note.sgxmeta with pyelftools (not with this project's reader), and the
bytes against a second build in another checkout with its own cache."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import yaml
from elftools.elf.elffile import ELFFile

from tests.rules.test_oci import _hello_workspace
from tests.support.occlum_install import make_occlum_install
from tests.support.workspace import run_doit

REPO = "registry.example.com/team/hello"
METADATA_MAGIC = 0x86A80294635D0E4C  # SDK metadata.h METADATA_MAGIC
K8S_BUILD = f"""
occlum_instance(name = "instance_ra", bom = ":image", entry_points = ["/bin"],
                init_ra = "grpc_ratls", resource_limits = {{"user_space_size": "256MB"}})
occlum_instance(name = "instance_sim", bom = ":image", entry_points = ["/bin"], sgx_mode = "SIM",
                resource_limits = {{"user_space_size": "256MB"}})
# against an install, build/bin/occlum-run links to the install: not in the image
occlum_oci_image(name = "oci_hw", instance = ":instance", layers = [":runtime"],
                 entrypoint = ["/bin/sh"])
occlum_oci_image(name = "oci_ra", instance = ":instance_ra", layers = [":runtime"],
                 entrypoint = ["/bin/sh"])
occlum_oci_image(name = "oci_sim", instance = ":instance_sim", layers = [":runtime"],
                 entrypoint = ["/bin/sh"])
occlum_k8s_manifest(name = "k8s", image = ":oci_hw", repository = "{REPO}", ports = ["8080"],
                    env = {{"GREETING": "hi"}}, replicas = 2, namespace = "enclaves")
occlum_k8s_manifest(name = "k8s_ra", image = ":oci_ra", repository = "{REPO}")
occlum_k8s_manifest(name = "k8s_sim", image = ":oci_sim", repository = "{REPO}")
occlum_k8s_manifest(name = "k8s_tpl", image = ":oci_hw", repository = "{REPO}",
                    template = "deploy.yaml.j2")
occlum_k8s_manifest(name = "k8s_typo", image = ":oci_hw", repository = "{REPO}",
                    template = "typo.yaml.j2")
"""
TEMPLATE = """\
# {{ name }}: {{ enclave_size }} bytes of enclave
apiVersion: apps/v1
kind: Deployment
metadata:
  name: custom-{{ name }}
spec:
  template:
    spec:
      containers:
      - image: {{ image }}
        resources:
          limits: {{ sgx_resources | to_yaml }}
"""
TARGETS = ("//app:k8s", "//app:k8s_ra", "//app:k8s_sim", "//app:k8s_tpl")


def _workspace(root: Path, home: Path) -> Path:
    ws = _hello_workspace(root, K8S_BUILD, {
        "app/deploy.yaml.j2": TEMPLATE,
        "app/typo.yaml.j2": TEMPLATE.replace("{{ image }}", "{{ imgae }}")})
    (ws / "WORKSPACE.yaml").write_text(
        f"source_date_epoch: 1704067200\nsgx_mode: HW\nocclum:\n  home: {home}\n")
    return ws


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("k8s")
    install = make_occlum_install(base / "opt" / "occlum", ra=True)
    ws = _workspace(base / "ws", install.home)
    result = run_doit(ws, *TARGETS, cache=base / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
    return ws, install, base


def _docs(ws: Path, name: str) -> list[dict]:
    return list(yaml.safe_load_all((ws / f"out/bin/app/{name}/deployment.yaml").read_text()))


def _container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _enclave_size(signed: Path) -> int:
    """metadata_t.enclave_size, read from the ELF note with pyelftools."""
    with signed.open("rb") as f:
        section = ELFFile(f).get_section_by_name(".note.sgxmeta")
        assert section is not None
        data = section.data()
    namesz, _, _ = struct.unpack_from("<III", data, 0)
    assert data[12:12 + namesz].rstrip(b"\0") == b"sgx_metadata"
    desc = data[12 + namesz:]  # the SDK puts metadata_t right after the name, unpadded
    magic, = struct.unpack_from("<Q", desc, 0)
    assert magic == METADATA_MAGIC
    size, = struct.unpack_from("<Q", desc, 40)
    return size


def _mib(size: int) -> str:
    return f"{(size + (1 << 20) - 1) // (1 << 20)}Mi"


def test_the_deployment_names_the_image_by_digest(built):
    ws, _, _ = built
    deployment, service = _docs(ws, "k8s")
    digest = (ws / "out/bin/app/oci_hw/image.digest").read_text().strip()
    assert digest.startswith("sha256:")
    container = _container(deployment)
    assert container["image"] == f"{REPO}@{digest}"
    assert deployment["metadata"]["namespace"] == "enclaves" and deployment["spec"]["replicas"] == 2
    assert container["env"] == [{"name": "GREETING", "value": "hi"},
                                {"name": "SGX_MODE", "value": "HW"}]
    assert service["kind"] == "Service" and service["spec"]["ports"][0]["port"] == 8080


def test_epc_is_the_signed_enclave_size(built):
    ws, _, _ = built
    size = _enclave_size(ws / "out/bin/app/instance/build/lib/libocclum-libos.signed.so")
    limits = _container(_docs(ws, "k8s")[0])["resources"]["limits"]
    assert limits == {"sgx.intel.com/epc": _mib(size), "sgx.intel.com/enclave": 1}
    annotations = _docs(ws, "k8s")[0]["spec"]["template"]["metadata"]["annotations"]
    measurements = yaml.safe_load((ws / "out/bin/app/instance/build/measurements.json").read_text())
    assert annotations["occlum.io/mrenclave"] == measurements["mrenclave"]


def test_provision_is_asked_for_with_remote_attestation(built):
    ws, _, _ = built
    size = _enclave_size(ws / "out/bin/app/instance_ra/build/lib/libocclum-libos.signed.so")
    limits = _container(_docs(ws, "k8s_ra")[0])["resources"]["limits"]
    assert limits == {"sgx.intel.com/epc": _mib(size), "sgx.intel.com/enclave": 1,
                      "sgx.intel.com/provision": 1}
    assert len(_docs(ws, "k8s_ra")) == 1  # no ports, no Service


def test_sim_mode_sets_sgx_mode_and_no_sgx_device(built):
    ws, _, _ = built
    container = _container(_docs(ws, "k8s_sim")[0])
    assert container["env"] == [{"name": "SGX_MODE", "value": "SIM"}]
    assert "resources" not in container
    digest = (ws / "out/bin/app/oci_sim/image.digest").read_text().strip()
    assert container["image"] == f"{REPO}@{digest}"


def test_a_template_is_rendered_with_the_computed_values(built):
    ws, _, _ = built
    text = (ws / "out/bin/app/k8s_tpl/deployment.yaml").read_text()
    size = _enclave_size(ws / "out/bin/app/instance/build/lib/libocclum-libos.signed.so")
    assert text.startswith(f"# k8s-tpl: {size} bytes of enclave\n")
    doc = yaml.safe_load(text)
    digest = (ws / "out/bin/app/oci_hw/image.digest").read_text().strip()
    assert doc["metadata"]["name"] == "custom-k8s-tpl"
    assert _container(doc)["image"] == f"{REPO}@{digest}"
    assert _container(doc)["resources"]["limits"]["sgx.intel.com/epc"] == _mib(size)


def test_a_template_typo_is_one_error_naming_its_line(built):
    ws, _, base = built
    result = run_doit(ws, "//app:k8s_typo", cache=base / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if "imgae" in line]
    assert len(errors) == 1, result.output
    assert "app/typo.yaml.j2:10: undefined template variable: 'imgae' is undefined" in errors[0]
    assert not (ws / "out/bin/app/k8s_typo/deployment.yaml").exists()


def test_another_checkout_gives_the_same_bytes(built, tmp_path):
    ws, install, _ = built
    other = _workspace(tmp_path / "another" / "checkout", install.home)
    result = run_doit(other, "//app:k8s", "//app:k8s_tpl", cache=tmp_path / "cache",
                      env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
    for name in ("k8s", "k8s_tpl"):
        rel = f"out/bin/app/{name}/deployment.yaml"
        assert (other / rel).read_bytes() == (ws / rel).read_bytes(), name
    assert str(ws) not in (ws / "out/bin/app/k8s/deployment.yaml").read_text()
    shutil.rmtree(other / "out")


@pytest.mark.parametrize("extra, expect", [
    ('occlum_k8s_manifest(name = "m", image = ":oci", repository = "r.io/a/b", replicas = 0)',
     "replicas: must be at least 1, got 0"),
    ('occlum_k8s_manifest(name = "m", image = ":oci", repository = "r.io/a/b:v1")',
     "repository: 'r.io/a/b:v1' has a tag"),
    (f'occlum_k8s_manifest(name = "m", image = ":oci", repository = "r.io/a/b@sha256:{"0" * 64}")',
     "has a digest"),
    ('occlum_k8s_manifest(name = "m", image = ":oci", repository = "r.io/A/b")',
     "is not a repository name"),
    ('occlum_k8s_manifest(name = "m", image = ":oci", repository = "r.io/a", ports = ["70000"])',
     "ports: '70000' is not a port"),
    ('occlum_k8s_manifest(name = "m", image = ":oci", repository = "r.io/a", ports = ["http"])',
     "ports: 'http' is not a port"),
    ('occlum_k8s_manifest(name = "m", image = ":instance", repository = "r.io/a")',
     "image: //app:instance is not an occlum_oci_image target"),
    ('occlum_k8s_manifest(name = "m", image = ":oci", repository = "r.io/a", '
     'env = {"SGX_MODE": "SIM"})', "env: SGX_MODE comes from the instance"),
    ('occlum_k8s_manifest(name = "m", image = ":oci", repository = "r.io/a", '
     'limits = {"sgx.intel.com/epc": "1Gi"})', "is computed from the signed enclave"),
])
def test_bad_attributes_are_one_error_at_analysis(tmp_path, extra, expect):
    ws = _hello_workspace(tmp_path / "ws", "\n" + extra + "\n")
    result = run_doit(ws, "//app:m", cache=tmp_path / "cache")
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if expect in line]
    assert len(lines) == 1 and "app/BUILD.py:" in lines[0], result.output
    assert not (ws / "out/bin/app/oci").exists()  # analysis stopped it: nothing was built
