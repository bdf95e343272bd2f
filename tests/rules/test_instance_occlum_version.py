"""An instance built with an Occlum install gets that release's config files and template.

The install is a STAND-IN (tests/toolchains/fake_install.py: the project's stand-in LibOS
laid out like an install) whose version header says 0.30.1 and whose
etc/template/Occlum.json is written here, 0.30-style: without feature.io_uring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from occlum_rules.stages.config import default_occlum_json
from tests.conftest import vectors_path
from tests.support.workspace import make_workspace, outcomes, run_doit
from tests.toolchains.fake_install import make_signable_install

HELLO_C = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'
BOM = "targets:\n  - target: /\n    mkdirs: [bin, lib, root, host, tmp, dev, proc, etc]\n"
BUILD = (
    'occlum_cc_binary(name = "hello", srcs = ["hello.c"])\n'
    'occlum_bom(name = "image", src = "image.yaml", deps = {"/bin": [":hello"]})\n'
    'occlum_instance(name = "instance", bom = ":image", resource_limits = {"user_space_size": "256MB"})\n'
)
INSTANCE = "out/bin/app/instance"


def template_0_30(marker: str) -> dict:
    """A 0.30-style template: no feature.io_uring; ``marker`` shows whose template it is."""
    tree = default_occlum_json()
    del tree["feature"]["io_uring"]
    tree["env"]["default"] = ["OCCLUM=yes", f"TEMPLATE={marker}"]
    return tree


def workspace(root: Path, home: Path | None) -> Path:
    yaml = "source_date_epoch: 0\nstages: python\n" + (f"occlum:\n  home: {home}\n" if home else
                                                         "occlum:\n  home: /nonexistent\n")
    return make_workspace(root, {"app/hello.c": HELLO_C, "app/image.yaml": BOM,
                                 "app/BUILD.py": BUILD}, yaml)


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("occlum") / "occlum-0.30.1"
    return make_signable_install(home, "0.30.1", template_0_30("install"))


def test_install_0_30_gives_0_30_config_and_its_own_template(install, tmp_path):
    ws = workspace(tmp_path / "ws", install)
    result = run_doit(ws, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
    assert "stand-in LibOS" not in result.output  # the install was used
    inst = ws / INSTANCE
    occlum_json = json.loads((inst / "Occlum.json").read_text())
    assert occlum_json["env"]["default"] == ["OCCLUM=yes", "TEMPLATE=install"]
    assert "io_uring" not in occlum_json["feature"]
    assert occlum_json["resource_limits"]["user_space_size"] == "256MB"  # attrs merged over it
    sys_json = json.loads((inst / "build/.Occlum_sys.json").read_text())
    assert list(sys_json["feature"]) == ["amx", "pkru", "enable_edmm", "enable_posix_shm"]
    assert "<TCSPolicy>1</TCSPolicy>" in (inst / "build/Enclave.xml").read_text()
    assert (inst / "build/lib/libocclum-libos.signed.so").is_file()

    # A changed install template re-renders Occlum.json (the template is an input).
    template = install / "etc/template/Occlum.json"
    original = template.read_text()
    try:
        template.write_text(json.dumps(template_0_30("changed"), indent=4) + "\n")
        again = run_doit(ws, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
        assert again.returncode == 0, again.output
        assert outcomes(ws)["//app:instance:occlum-json"] == "run"
        env = json.loads((inst / "Occlum.json").read_text())["env"]["default"]
        assert env == ["OCCLUM=yes", "TEMPLATE=changed"]
    finally:
        template.write_text(original)


def test_without_install_the_newest_format(tmp_path):
    ws = workspace(tmp_path / "ws", None)
    result = run_doit(ws, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
    sys_json = json.loads((ws / INSTANCE / "build/.Occlum_sys.json").read_text())
    assert list(sys_json["feature"]) == ["amx", "pkru", "io_uring", "enable_edmm",
                                         "enable_posix_shm"]
    assert "<TCSPolicy>0</TCSPolicy>" in (ws / INSTANCE / "build/Enclave.xml").read_text()


def test_install_of_an_unsupported_release_stops_with_its_version(tmp_path):
    home = make_signable_install(tmp_path / "occlum-0.28.1", "0.28.1")
    ws = workspace(tmp_path / "ws", home)
    result = run_doit(ws, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 1
    assert "Occlum '0.28.1' is not supported:" in result.output
    assert "occlum_version.h" in result.output and "Traceback" not in result.output


def _template_before_0_30_1(version: str) -> dict:
    """etc/template/Occlum.json of 0.29.6 (a copy kept with the golden vectors); 0.29.7 has
    the same file, 0.30.0 adds metadata.amx (the tags' template diff)."""
    tree = json.loads(vectors_path("config-v0.29.6", "template-Occlum.json").read_text())
    if version == "0.30.0":
        tree["metadata"]["amx"] = 0
    return tree


@pytest.mark.parametrize("version", ["0.29.6", "0.29.7", "0.30.0"])
def test_install_version_header_picks_the_release_format(version, tmp_path):
    home = make_signable_install(tmp_path / f"occlum-{version}", version,
                                 _template_before_0_30_1(version))
    ws = workspace(tmp_path / "ws", home)
    result = run_doit(ws, "build", cache=tmp_path / "cache", env={"OCCLUM_HOME": ""})
    assert result.returncode == 0, result.output
    assert "ignored by Occlum" not in result.output  # the release's own template fits it
    inst = ws / INSTANCE
    sys_json = json.loads((inst / "build/.Occlum_sys.json").read_text())
    assert "feature" not in sys_json and "disable_log" not in sys_json
    enclave_xml = (inst / "build/Enclave.xml").read_text()
    assert ("<AMX>" in enclave_xml) == (version == "0.30.0")
    app_mounts = [m["target"] for m in sys_json["app"][1]["mount"]]
    if version == "0.29.6":  # four slots: root, host, /proc, /dev
        assert sys_json["resource_limits"] == {"user_space_size": "256MB"}
        assert app_mounts == ["/", "/host", "/proc", "/dev"]
    else:  # /proc, /dev, then the user's mounts
        assert app_mounts[:2] == ["/proc", "/dev"]
        assert ("user_space_init_size" in sys_json["resource_limits"]) == (version == "0.30.0")
