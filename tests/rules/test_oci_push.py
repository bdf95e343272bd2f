"""Push and pull end to end against a real registry (Debian's docker-registry): the image a
workspace builds is pushed by ``occlum-rules push`` and by ``doit push`` (an
``occlum_oci_push`` target, never part of ``doit build``), ``skopeo`` reads the printed
digest from the registry, a second push uploads nothing, ``oci_pull`` by that digest gives
the same blobs and serves as a base, a warm store pulls nothing, and with htpasswd auth
the credentials come from the environment and end up in no output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.rules.test_oci import _hello_workspace
from tests.support.registry import (
    SKOPEO,
    needs_registry,
    needs_skopeo,
    run_registry,
)
from tests.support.workspace import outcomes, run_cli, run_doit

IMAGE = "out/bin/app/oci"

PUSH_BUILD = """
occlum_oci_push(name = "push", image = ":oci", repository = "{host}/hello/app",
                tags = ["ci"], insecure = True)
"""
PULL_BUILD = """
oci_pull(name = "pulled", image = "{host}/hello/app", digest = "{digest}", insecure = True)
occlum_oci_image(name = "on_pulled", instance = ":instance", base = ":pulled",
                 layers = [":runtime"], tag = "rebased")
"""


def _pushed_line(output: str, host: str) -> str:
    found = re.findall(rf"^{re.escape(host)}/hello/app@sha256:[0-9a-f]{{64}}$", output, re.M)
    assert len(found) == 1, output
    return found[0]


def _blob_counts(output: str) -> tuple[int, int]:
    m = re.search(r"(\d+) blobs uploaded \(\d+ bytes\), (\d+) already present", output)
    assert m, output
    return int(m.group(1)), int(m.group(2))


@needs_registry
@needs_skopeo
def test_push_inspect_repush_and_pull_back(registry, tmp_path):
    host = registry.host
    ws = _hello_workspace(tmp_path / "ws", PUSH_BUILD.format(host=host))
    cache = tmp_path / "cache"
    built = run_doit(ws, "build", cache=cache)
    assert built.returncode == 0, built.output
    assert not (ws / IMAGE / "image.pushed").exists()      # build never pushes
    assert not (registry.storage / "docker/registry/v2/repositories/hello").exists()
    digest = (ws / IMAGE / "image.digest").read_text().strip()

    first = run_cli("push", "//app:oci", f"{host}/hello/app:v1", "--insecure", cwd=ws)
    assert first.returncode == 0, first.output
    assert _pushed_line(first.stdout, host) == f"{host}/hello/app@{digest}"
    uploaded, present = _blob_counts(first.stdout)
    assert uploaded == 5 and present == 0   # config + runtime oci_layer + 3 instance layers
    assert (ws / IMAGE / "image.pushed").read_text() == f"{host}/hello/app@{digest}\n"
    inspect = json.loads(subprocess.run(
        [SKOPEO, "inspect", "--tls-verify=false", f"docker://{host}/hello/app:v1"],
        check=True, capture_output=True, text=True).stdout)
    assert inspect["Digest"] == digest

    again = run_doit(ws, "push", cache=cache)    # the occlum_oci_push target, by doit
    assert again.returncode == 0, again.output
    assert _blob_counts(again.output) == (0, 5)
    assert _pushed_line(again.output, host) == f"{host}/hello/app@{digest}"
    tagged = json.loads(subprocess.run(
        [SKOPEO, "inspect", "--tls-verify=false", f"docker://{host}/hello/app:ci"],
        check=True, capture_output=True, text=True).stdout)
    assert tagged["Digest"] == digest

    # skopeo moves the same image both ways without changing a byte: from our layout into the
    # registry, and what we pushed back out into an OCI layout
    layout = ws / IMAGE / "image.oci"
    subprocess.run([SKOPEO, "copy", "--preserve-digests", "--dest-tls-verify=false",
                    f"oci:{layout}:latest", f"docker://{host}/hello/by-skopeo:v1"],
                   check=True, capture_output=True, text=True)
    by_skopeo = json.loads(subprocess.run(
        [SKOPEO, "inspect", "--tls-verify=false", f"docker://{host}/hello/by-skopeo:v1"],
        check=True, capture_output=True, text=True).stdout)
    assert by_skopeo["Digest"] == digest
    back = tmp_path / "back"
    subprocess.run([SKOPEO, "copy", "--preserve-digests", "--src-tls-verify=false",
                    f"docker://{host}/hello/app@{digest}", f"oci:{back}:back"],
                   check=True, capture_output=True, text=True)
    for blob in (back / "blobs/sha256").iterdir():
        assert blob.read_bytes() == (layout / "blobs/sha256" / blob.name).read_bytes()
    assert (back / "blobs/sha256" / digest[7:]).exists()

    (ws / "app/BUILD.py").write_text((ws / "app/BUILD.py").read_text()
                                     + PULL_BUILD.format(host=host, digest=digest))
    pulled = run_doit(ws, "//app:on_pulled", cache=cache)
    assert pulled.returncode == 0, pulled.output
    assert outcomes(ws)["//app:pulled:pull"] == "run"
    base = json.loads((ws / "out/bin/app/pulled/base.json").read_text())
    assert base["manifest_digest"] == digest
    built_blobs = ws / IMAGE / "image.oci/blobs/sha256"
    for layer in base["layers"]:
        got = ws / "out/bin/app/pulled/blobs" / layer["blob"]
        assert got.read_bytes() == (built_blobs / layer["digest"][7:]).read_bytes()
    manifest = json.loads((built_blobs / digest[7:]).read_text())
    assert [x["digest"] for x in base["layers"]] == [x["digest"] for x in manifest["layers"]]
    assert sorted(p.name for p in (ws / "out/bin/app/pulled/blobs").iterdir()) == \
        sorted(x["digest"][7:] for x in manifest["layers"])   # no scratch left behind
    rebased = json.loads((ws / "out/bin/app/on_pulled/image.json").read_text())
    assert len(rebased["layers"]) == 2 * len(manifest["layers"])   # the base's, then ours
    assert [x["digest"] for x in rebased["layers"][:len(manifest["layers"])]] == \
        [x["digest"] for x in manifest["layers"]]

    # the pulled base is known to come from hello/app: pushing the rebased image to another
    # repository of that registry mounts what hello/app holds instead of uploading it
    rebased_push = run_cli("push", "//app:on_pulled", f"{host}/hello/rebased", "--insecure",
                           cwd=ws)
    assert rebased_push.returncode == 0, rebased_push.output
    held = {x["digest"] for x in manifest["layers"]}
    unique = {x["digest"] for x in rebased["layers"]} | {rebased["config"]}
    mounted = int(re.search(r"(\d+) mounted", rebased_push.stdout).group(1))
    assert mounted == len(unique & held) > 0
    assert _blob_counts(rebased_push.stdout) == (len(unique - held), 0)

    clone = tmp_path / "clone"
    shutil.copytree(ws, clone, ignore=shutil.ignore_patterns("out", ".occlum-rules*"))
    warm = run_doit(clone, "//app:pulled", cache=cache)
    assert warm.returncode == 0, warm.output
    assert outcomes(clone)["//app:pulled:pull"] == "cache_hit_local"   # pulled nothing


@needs_registry
def test_htpasswd_auth_from_the_environment_only(tmp_path):
    password = "pw-" + "Zq7" * 6
    with run_registry(tmp_path / "reg", users={"ci": password}) as registry:
        host = registry.host
        ws = _hello_workspace(tmp_path / "ws", PUSH_BUILD.format(host=host))
        cache = tmp_path / "cache"
        assert run_doit(ws, "//app:oci", cache=cache).returncode == 0
        anonymous = run_cli("push", "//app:oci", f"{host}/hello/app:v1", "--insecure", cwd=ws)
        assert anonymous.returncode == 1 and "Traceback" not in anonymous.output
        errors = anonymous.stderr.strip().splitlines()
        assert len(errors) == 1 and "HTTP 401" in errors[0], anonymous.output
        assert f"registry {host}, repository hello/app" in errors[0]
        assert not (ws / IMAGE / "image.pushed").exists()
        env = {"OCCLUM_RULES_REGISTRY_USER": "ci", "OCCLUM_RULES_REGISTRY_PASSWORD": password}
        pushed = run_cli("push", "//app:oci", f"{host}/hello/app:v1", "--insecure", cwd=ws,
                         env=env)
        assert pushed.returncode == 0, pushed.output
        by_doit = run_doit(ws, "push", cache=cache, env=env)
        assert by_doit.returncode == 0 and _blob_counts(by_doit.output) == (0, 5), by_doit.output
        digest = (ws / IMAGE / "image.digest").read_text().strip()
        (ws / "app/BUILD.py").write_text((ws / "app/BUILD.py").read_text()
                                         + PULL_BUILD.format(host=host, digest=digest))
        denied = run_doit(ws, "//app:pulled", cache=cache)
        assert denied.returncode == 1 and "Traceback" not in denied.output
        assert "HTTP 401" in denied.output and "//app:pulled" in denied.output
        assert not (ws / "out/bin/app/pulled/base.json").exists()
        leftovers = [p for p in (ws / "out/bin/app/pulled").rglob("*") if p.is_file()] \
            if (ws / "out/bin/app/pulled").exists() else []
        assert leftovers == []
        pulled = run_doit(ws, "//app:pulled", cache=cache, env=env)
        assert pulled.returncode == 0, pulled.output
        for result in (anonymous, pushed, by_doit, denied, pulled):
            assert password not in result.output
        secret = password.encode()
        for root in (ws, cache):
            leaked = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                      and secret in p.read_bytes()]
            assert leaked == []


@pytest.mark.parametrize("args, expect", [
    (["//app:oci", "127.0.0.1:1/app"], "//app:oci is not built yet: run `doit //app:oci` first"),
    (["//app:instance", "127.0.0.1:1/app"], "//app:instance is not an occlum_oci_image target"),
    (["//app:nope", "127.0.0.1:1/app"], "no target '//app:nope' (see `doit list`)"),
])
def test_push_cli_errors_before_any_network(tmp_path, args, expect):
    ws = _hello_workspace(tmp_path / "ws")
    result = run_cli("push", *args, cwd=ws)
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.strip().splitlines() == [f"error: {expect}"]
    assert not (ws / "out").exists() or not list((ws / "out").rglob("image.pushed"))


@pytest.mark.parametrize("extra, expect", [
    ('oci_pull(name = "p", image = "debian", digest = "sha256:' + "0" * 64 + '")',
     "image: 'debian' must be REGISTRY/REPOSITORY"),
    ('oci_pull(name = "p", image = "r.io/debian", digest = "latest")',
     "digest: 'latest' is not a pinned digest"),
    ('occlum_oci_push(name = "p", image = ":instance", repository = "r.io/app")',
     "image: //app:instance is not an occlum_oci_image target"),
    ('occlum_oci_push(name = "p", image = ":oci", repository = "r.io/app:v1")',
     "repository: 'r.io/app:v1' must be REGISTRY/REPOSITORY without a tag"),
    ('occlum_oci_push(name = "p", image = ":oci", repository = "r.io/app", tags = ["a b"])',
     "tags: 'a b' is not a valid image tag"),
])
def test_push_and_pull_attributes_are_checked_at_analysis(tmp_path, extra, expect):
    ws = _hello_workspace(tmp_path / "ws", "\n" + extra + "\n")
    result = run_doit(ws, "list", cache=tmp_path / "cache")
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    assert "app/BUILD.py:" in result.output and expect in result.output, result.output


@needs_registry
def test_pulling_a_digest_the_registry_does_not_have_is_one_error(registry, tmp_path):
    missing = "sha256:" + "ab" * 32
    ws = _hello_workspace(tmp_path / "ws", PULL_BUILD.format(host=registry.host,
                                                             digest=missing))
    result = run_doit(ws, "//app:pulled", cache=tmp_path / "cache")
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: //app:pulled: registry {registry.host}, repository hello/app: "
                      f"get manifest {missing}: HTTP 404 (not found): MANIFEST_UNKNOWN: manifest "
                      "unknown"], result.output
    assert not (ws / "out/bin/app/pulled/base.json").exists()
