"""Planning, incremental apply, --sync, path safety, the manifest and the build API."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from occlum_rules.core.digests import DigestCache
from occlum_rules.errors import UserError
from occlum_rules.stages.bom import apply_plan, image_manifest, parse_loader_config, plan_bom
from occlum_rules.stages.bom.elf_deps import DEFAULT_LOADER_CONFIG_TEXT

from .helpers import need_tool, run_cli

HOST_LD = "/lib64/ld-linux-x86-64.so.2"
# loader config that points at the host's own loader, so tests need no /opt/occlum
HOST_CONFIG = parse_loader_config(
    f"{HOST_LD} /usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/lib64:/lib:/usr/local/lib\n", None)


def write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        os.chmod(path, mode)
    return path


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    write(tmp_path / "src" / "a.txt", "aaa\n")
    write(tmp_path / "src" / "run.sh", "#!/bin/sh\n", 0o755)
    write(tmp_path / "src" / "tree" / "x.txt", "x\n")
    write(tmp_path / "src" / "tree" / "sub" / "y.log", "y\n")
    (tmp_path / "src" / "tree" / "link").symlink_to("x.txt")
    return tmp_path


def bom(proj: Path, text: str, name: str = "bom.yaml") -> Path:
    return write(proj / name, text)


SIMPLE = """
excludes: ['*.log']
targets:
  - target: /bin
    mkdirs: [empty]
    createlinks:
      - {src: run.sh, linkname: run}
    copy:
      - from: src
        files: [a.txt, run.sh]
        dirs: [tree]
"""


def test_plan_then_apply_builds_tree_and_manifest(proj: Path) -> None:
    plan = plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={})
    assert str(proj / "bom.yaml") in plan.host_inputs
    assert str(proj / "src" / "a.txt") in plan.host_inputs
    assert str(proj / "src" / "tree" / "x.txt") in plan.host_inputs
    root = proj / "image"
    result = apply_plan(plan, root)
    assert (root / "bin" / "a.txt").read_text() == "aaa\n"
    assert os.stat(root / "bin" / "run.sh").st_mode & 0o777 == 0o755
    assert os.readlink(root / "bin" / "run") == "run.sh"
    assert os.readlink(root / "bin" / "tree" / "link") == "x.txt"
    assert not (root / "bin" / "tree" / "sub" / "y.log").exists()  # excluded
    assert (root / "bin" / "tree" / "sub").is_dir() and (root / "bin" / "empty").is_dir()
    assert result.manifest == image_manifest(root)
    paths = [e["path"] for e in result.manifest]
    assert paths == sorted(paths, key=str.encode) and paths[0] == ""
    entry = {e["path"]: e for e in result.manifest}
    assert entry["bin/a.txt"]["sha256"] == hashlib.sha256(b"aaa\n").hexdigest()
    assert entry["bin/run"] == {"path": "bin/run", "type": "symlink", "mode": 0o777, "target": "run.sh"}
    assert entry["bin/a.txt"]["size"] == 4 and "needed" not in entry["bin/a.txt"]


def test_second_apply_rewrites_nothing_and_keeps_mtimes(proj: Path) -> None:
    plan = plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={})
    root = proj / "image"
    apply_plan(plan, root)
    target = root / "bin" / "a.txt"
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    before = {p: p.lstat().st_mtime_ns for p in root.rglob("*")}
    again = apply_plan(plan_bom(proj / "bom.yaml", loader_config=HOST_CONFIG, env={}), root)
    assert again.written == [] and again.removed == []
    assert {p: p.lstat().st_mtime_ns for p in root.rglob("*")} == before
    # change one source: only that file is rewritten
    time.sleep(0.01)
    write(proj / "src" / "a.txt", "changed\n")
    third = apply_plan(plan_bom(proj / "bom.yaml", loader_config=HOST_CONFIG, env={}), root)
    assert third.written == ["bin/a.txt"]
    assert target.read_text() == "changed\n"


def test_a_mode_change_never_reaches_another_name_of_the_image_file(proj: Path) -> None:
    """An image file may be a hard link into the local store (stored or restored so), which
    other checkouts' outputs may share: a mode the BOM now asks for goes to a file of the
    image's own, not through the link."""
    plan = plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={})
    root = proj / "image"
    apply_plan(plan, root)
    image_file = root / "bin" / "a.txt"
    other = proj / "stored-blob"
    os.link(image_file, other)
    os.chmod(proj / "src" / "a.txt", 0o600)
    again = apply_plan(plan_bom(proj / "bom.yaml", loader_config=HOST_CONFIG, env={}), root)
    assert again.written == []
    assert image_file.stat().st_mode & 0o777 == 0o600 and image_file.stat().st_nlink == 1
    assert other.stat().st_mode & 0o777 == 0o644 and other.read_text() == "aaa\n"


def test_copies_leave_both_digests_known_so_neither_file_is_read_again(proj: Path) -> None:
    """The copy hashes the bytes it moves: the build's digest cache learns the image file's
    digest and its source's (an input the action key needs), without another read."""
    cache = DigestCache(proj / "digests.marshal")
    root = proj / "image"
    apply_plan(plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={}), root, digests=cache)
    for src, dst in ((proj / "src/a.txt", root / "bin/a.txt"),
                     (proj / "src/tree/x.txt", root / "bin/tree/x.txt")):
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        assert cache.known(src, os.stat(src)) == digest
        assert cache.known(dst, os.stat(dst)) == digest


def test_every_copied_source_is_reported_with_the_digest_of_what_was_copied(proj: Path) -> None:
    """copy_bom hands the engine these as its discovered inputs' digests, so they must be
    the bytes in the image, for files copied and files found already there alike, and be
    keyed by the paths the plan lists as host inputs."""
    root = proj / "image"
    cache = DigestCache(proj / "digests.marshal")
    for round_ in range(2):  # a fresh image, then one with every file already in place
        plan = plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={})
        result = apply_plan(plan, root, digests=cache)
        assert bool(result.written) == (round_ == 0)
        copied = {str(proj / "src" / n): root / "bin" / n
                  for n in ("a.txt", "run.sh", "tree/x.txt")}
        assert set(result.sources_read) == set(copied) and set(copied) <= set(plan.host_inputs)
        for src, dst in copied.items():
            assert result.sources_read[src] == hashlib.sha256(dst.read_bytes()).hexdigest()


def test_sync_removes_what_the_bom_no_longer_produces(proj: Path) -> None:
    root = proj / "image"
    apply_plan(plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={}), root)
    write(root / "stale" / "old.txt", "old\n")
    smaller = SIMPLE.replace("files: [a.txt, run.sh]", "files: [a.txt]")
    plan = plan_bom(bom(proj, smaller), loader_config=HOST_CONFIG, env={})
    kept = apply_plan(plan, root, sync=False)  # copy_bom's behaviour: stale files survive
    assert kept.removed == [] and (root / "stale" / "old.txt").exists()
    synced = apply_plan(plan, root, sync=True)
    assert sorted(synced.removed) == ["bin/run.sh", "stale"]
    assert not (root / "bin" / "run.sh").exists()
    assert os.path.islink(root / "bin" / "run")  # now dangling, but the BOM asks for it


@pytest.mark.parametrize("body,needle", [
    ("  - target: /\n    mkdirs: [/etc/evil]\n", "is absolute"),
    ("  - target: /\n    mkdirs: [../evil]\n", "escapes the image root"),
    ("  - target: ../..\n", "escapes the image root"),
    ("  - target: /\n    copy:\n      - files:\n          - {name: src/a.txt, rename: /tmp/evil}\n", "is absolute"),
    ("  - target: /bin\n    copy:\n      - files:\n          - {name: src/a.txt, rename: ../../evil}\n", "escapes"),
    ("  - target: /\n    createlinks:\n      - {src: x, linkname: /tmp/evil}\n", "is absolute"),
    ("  - target: /bin\n    createlinks:\n      - {src: ../../etc, linkname: up}\n", "points outside"),
])
def test_paths_escaping_the_root_are_errors(proj: Path, body: str, needle: str) -> None:
    path = bom(proj, "targets:\n" + body)
    with pytest.raises(UserError) as err:
        plan_bom(path, loader_config=HOST_CONFIG, env={})
    assert needle in err.value.message
    assert err.value.where.startswith(str(path) + ":")
    assert err.value.exit_code != 0


def test_writes_never_follow_links_out_of_the_image(proj: Path) -> None:
    outside = proj / "outside"
    outside.mkdir()
    root = proj / "image"
    root.mkdir()
    (root / "bin").symlink_to(outside)  # pre-populated image with a hostile link
    plan = plan_bom(bom(proj, "targets:\n  - target: /bin\n    copy:\n      - from: src\n        files: [a.txt]\n"),
                    loader_config=HOST_CONFIG, env={})
    with pytest.raises(UserError) as err:  # copy_bom would write into `outside`
        apply_plan(plan, root, sync=False)
    assert "symlink" in err.value.message
    apply_plan(plan, root, sync=True)  # the image is made to match the BOM: the link goes
    assert list(outside.iterdir()) == []
    assert (root / "bin").is_dir() and not (root / "bin").is_symlink()


def test_missing_source_and_missing_parent_are_errors(proj: Path) -> None:
    with pytest.raises(UserError) as err:
        plan_bom(bom(proj, "targets:\n  - target: /\n    copy:\n      - files: [nope.txt]\n"),
                 loader_config=HOST_CONFIG, env={})
    assert err.value.exit_code == 254 and "nope.txt" in err.value.message
    with pytest.raises(UserError) as err:
        plan_bom(bom(proj, "targets:\n  - target: /\n    copy:\n      - files:\n"
                           "          - {name: src/a.txt, rename: no/such/dir.txt}\n"),
                 loader_config=HOST_CONFIG, env={})
    assert "does not exist in the image" in err.value.message


def test_lowercase_hash_is_rejected_with_the_right_digest(proj: Path) -> None:
    digest = hashlib.sha256(b"aaa\n").hexdigest()
    text = f"targets:\n  - target: /\n    copy:\n      - files:\n          - {{name: src/a.txt, hash: {digest}}}\n"
    with pytest.raises(UserError) as err:
        plan_bom(bom(proj, text), loader_config=HOST_CONFIG, env={})
    assert err.value.exit_code == 249 and digest.upper() in err.value.message and "UPPERCASE" in err.value.message
    plan_bom(bom(proj, text.replace(digest, digest.upper())), loader_config=HOST_CONFIG, env={})


def test_include_dirs_cycles_and_missing_includes(proj: Path) -> None:
    write(proj / "inc" / "lib.yaml", "targets:\n  - target: /lib\n    mkdirs: [from_include]\n")
    top = bom(proj, "includes: [lib.yaml]\ntargets:\n  - target: /\n")
    plan = plan_bom(top, include_dirs=[proj / "inc"], loader_config=HOST_CONFIG, env={})
    assert plan.boms == [str(top), str(proj / "inc" / "lib.yaml")]
    assert str(proj / "inc" / "lib.yaml") in plan.host_inputs
    assert plan.tree.node("lib/from_include") is not None
    with pytest.raises(UserError) as err:
        plan_bom(top, loader_config=HOST_CONFIG, env={})
    assert "lib.yaml" in err.value.message and err.value.where == f"{top}:1"
    write(proj / "inc" / "lib.yaml", "includes: [bom.yaml]\n")
    write(proj / "inc" / "bom.yaml", "includes: [lib.yaml]\n")
    with pytest.raises(UserError) as err:
        plan_bom(top, include_dirs=[proj / "inc"], loader_config=HOST_CONFIG, env={})
    assert "include cycle" in err.value.message and err.value.exit_code == 253


def test_env_mapping_is_used(proj: Path) -> None:
    text = "targets:\n  - target: $DEST\n    copy:\n      - from: ${SRC:-src}\n        files: [a.txt]\n"
    plan = plan_bom(bom(proj, text), loader_config=HOST_CONFIG, env={"DEST": "/opt/app"})
    assert plan.tree.node("opt/app/a.txt") is not None
    plan = plan_bom(proj / "bom.yaml", loader_config=HOST_CONFIG, env={})
    assert plan.tree.node("$DEST/a.txt") is not None  # copy_bom's literal fallback
    assert any("resolve fails" in w for w in plan.warnings)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    need_tool("gcc")
    (tmp_path / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')
    out = tmp_path / "out" / "hello"
    out.parent.mkdir()
    subprocess.run(["gcc", "-o", str(out), str(tmp_path / "hello.c")], check=True)
    return out


def test_extra_files_api_with_autodep(proj: Path, app: Path) -> None:
    plan = plan_bom(bom(proj, "targets:\n  - target: /\n    mkdirs: [bin]\n"), loader_config=HOST_CONFIG,
                    env={}, extra_files={"/bin": [app]})
    assert str(app) in plan.host_inputs
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in plan.host_inputs or \
        "/lib/x86_64-linux-gnu/libc.so.6" in plan.host_inputs
    root = proj / "image"
    result = apply_plan(plan, root)
    entries = {e["path"]: e for e in result.manifest}
    assert entries["bin/hello"]["needed"] == ["libc.so.6"]
    assert "lib64/ld-linux-x86-64.so.2" in entries
    libc = [p for p in entries if p.endswith("/libc.so.6")]
    assert libc, sorted(entries)
    run = subprocess.run([str(root / "lib64/ld-linux-x86-64.so.2"), "--inhibit-cache", "--library-path",
                          str(root / os.path.dirname(libc[0])), str(root / "bin/hello")],
                         capture_output=True, text=True)
    assert run.stdout == "hi\n"


def test_missing_library_of_a_files_entry_is_one_clear_error(proj: Path, tmp_path: Path) -> None:
    need_tool("gcc")
    write(tmp_path / "m.c", "int missing_fn(void); int main(void){return missing_fn();}\n")
    write(tmp_path / "l.c", "int missing_fn(void){return 0;}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libgone.so"), str(tmp_path / "l.c")], check=True)
    subprocess.run(["gcc", "-o", str(proj / "src" / "needy"), str(tmp_path / "m.c"), "-L", str(tmp_path), "-lgone"],
                   check=True)
    path = bom(proj, "targets:\n  - target: /bin\n    copy:\n      - from: src\n        files: [needy]\n")
    proc = run_cli(["-f", str(path), "--root", str(proj / "image"), "--loader-config", str(
        write(proj / "ld.config", f"{HOST_LD} /usr/lib/x86_64-linux-gnu\n"))], proj)
    assert proc.returncode == 248
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needy" in lines[0] and "libgone.so" in lines[0] and "bom.yaml:5" in lines[0]
    assert not (proj / "image").exists()


def test_missing_library_satisfied_by_a_file_of_that_name_in_the_image(proj: Path, tmp_path: Path) -> None:
    """copy_bom's lazy check: a file with the library's name anywhere in the image is enough."""
    need_tool("gcc")
    write(tmp_path / "m.c", "int missing_fn(void); int main(void){return missing_fn();}\n")
    write(tmp_path / "l.c", "int missing_fn(void){return 0;}\n")
    (proj / "src" / "libs").mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(proj / "src" / "libs" / "libgone.so"),
                    str(tmp_path / "l.c")], check=True)
    subprocess.run(["gcc", "-o", str(proj / "src" / "needy"), str(tmp_path / "m.c"), "-L",
                    str(proj / "src" / "libs"), "-lgone"], check=True)
    text = ("targets:\n  - target: /bin\n    copy:\n      - from: src\n        files: [needy]\n"
            "  - target: /usr\n    copy:\n      - from: src\n        dirs: [libs]\n")
    plan = plan_bom(bom(proj, text), loader_config=HOST_CONFIG, env={})
    assert plan.tree.node("usr/libs/libgone.so") is not None
    with pytest.raises(UserError):
        plan_bom(bom(proj, text.split("  - target: /usr")[0]), loader_config=HOST_CONFIG, env={})


def test_sync_refuses_a_root_that_holds_the_inputs(proj: Path) -> None:
    plan = plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={})
    with pytest.raises(UserError) as err:
        apply_plan(plan, proj, sync=True)
    assert "refusing" in err.value.message
    assert (proj / "bom.yaml").exists()


def test_cli_flags_dry_run_and_logging(proj: Path) -> None:
    path = bom(proj, SIMPLE)
    help_run = run_cli(["--help"], proj)
    assert help_run.returncode == 0 and "--include-dir" in help_run.stdout and "--sync" in help_run.stdout
    dry = run_cli(["-f", str(path), "--root", "image", "--dry-run", "-i", "a", "b", "--include-dir", "c"],
                  proj, {"OCCLUM_LOG_LEVEL": "info"})
    assert dry.returncode == 0, dry.stderr
    assert not (proj / "image").exists()
    assert "mkdir -p image/bin/empty" in dry.stderr and "ln -s run.sh image/bin/run" in dry.stderr
    real = run_cli(["-f", str(path), "--root", "image"], proj, {"OCCLUM_LOG_LEVEL": "info"})
    assert real.returncode == 0 and (proj / "image" / "bin" / "a.txt").exists()
    quiet = run_cli(["-f", str(path), "--root", "image"], proj, {"OCCLUM_LOG_LEVEL": "error"})
    assert quiet.stderr == "" and "not an empty directory" in quiet.stdout


@pytest.mark.parametrize("text,code", [
    ("targets: [", 253),
    ("targets:\n  - target: /\n    copy:\n      - files: [{name: 3, autodep: maybe}]\n", 253),
    ("includes: [nowhere.yaml]\n", 255),
])
def test_cli_errors_are_one_line_without_traceback(proj: Path, text: str, code: int) -> None:
    path = bom(proj, text)
    proc = run_cli(["-f", str(path), "--root", "image"], proj)
    assert proc.returncode == code
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"error: {path}:")
    assert not (proj / "image").exists()


def test_default_loader_config_is_built_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from occlum_rules.stages.bom import elf_deps

    monkeypatch.setenv("OCCLUM_HOME", str(tmp_path))
    monkeypatch.setattr(elf_deps, "DEFAULT_LOADER_CONFIG_PATH", str(tmp_path / "absent.config"))
    cfg = elf_deps.load_loader_config()
    assert cfg.path is None and cfg == parse_loader_config(DEFAULT_LOADER_CONFIG_TEXT, None)
    assert cfg.entries[0].loader == "/opt/occlum/glibc/lib/ld-linux-x86-64.so.2"
    assert "/usr/lib/x86_64-linux-gnu" in cfg.entries[0].lib_dirs
    write(tmp_path / "etc/template/occlum_elf_loader.config", f"{HOST_LD} /usr/lib\n")
    assert elf_deps.load_loader_config().path == str(tmp_path / "etc/template/occlum_elf_loader.config")


def test_previous_manifest_spares_reading_elf_headers_of_unchanged_files(proj: Path, monkeypatch) -> None:
    """DT_NEEDED of a file whose sha256 the last manifest lists comes from that manifest;
    a changed ELF file is read again, a changed file whose copied bytes do not start with
    the ELF magic is not parsed at all. The manifest equals one computed from disk."""
    from occlum_rules.stages.bom import apply as apply_mod

    need_tool("cc")
    subprocess.run(["cc", "-x", "c", "-", "-o", str(proj / "src" / "run.sh")],
                   input="int main(void){return 0;}\n", text=True, check=True)
    plan = plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={})
    root = proj / "image"
    first = apply_plan(plan, root).manifest
    write(proj / "src" / "a.txt", "changed\n")
    subprocess.run(["cc", "-x", "c", "-", "-o", str(proj / "src" / "run.sh")],
                   input="int main(void){return 1;}\n", text=True, check=True)
    opened: list[str] = []
    real = apply_mod.read_elf
    monkeypatch.setattr(apply_mod, "read_elf", lambda p: opened.append(p) or real(p))
    again = apply_plan(plan_bom(bom(proj, SIMPLE), loader_config=HOST_CONFIG, env={}), root,
                       previous_manifest=first).manifest
    assert opened == [str(root / "bin" / "run.sh")]
    assert again == image_manifest(root)
    assert {e["path"]: e for e in again}["bin/run.sh"]["needed"]  # the ELF kept its DT_NEEDED


LINKED_BOM = """
targets:
  - target: /
    copy:
      - from: src
        files: [plain.txt, link.txt]
"""


@pytest.mark.parametrize("image, link_to", [
    ("src", "elsewhere/x.txt"),  # the image is the inputs' own directory
    ("image", "image/x.txt"),  # an input is a link into the image
])
def test_sync_refuses_an_image_that_holds_an_input(tmp_path: Path, image: str, link_to: str) -> None:
    write(tmp_path / "src" / "plain.txt", "p\n")
    write(tmp_path / link_to, "x\n")
    (tmp_path / "src" / "link.txt").symlink_to(tmp_path / link_to)
    write(tmp_path / "bom.yaml", LINKED_BOM)
    plan = plan_bom(tmp_path / "bom.yaml", loader_config=HOST_CONFIG, env={})
    with pytest.raises(UserError, match="refusing to sync the image: it contains input file"):
        apply_plan(plan, tmp_path / image)
    assert (tmp_path / link_to).read_text() == "x\n" and (tmp_path / "src" / "plain.txt").exists()


def test_sync_takes_a_link_out_of_the_image_for_what_it_is(tmp_path: Path) -> None:
    write(tmp_path / "src" / "plain.txt", "p\n")
    write(tmp_path / "elsewhere" / "x.txt", "x\n")
    (tmp_path / "src" / "link.txt").symlink_to(tmp_path / "elsewhere" / "x.txt")
    write(tmp_path / "bom.yaml", LINKED_BOM)
    apply_plan(plan_bom(tmp_path / "bom.yaml", loader_config=HOST_CONFIG, env={}),
               tmp_path / "image")
    assert (tmp_path / "image" / "link.txt").read_text() == "x\n"
