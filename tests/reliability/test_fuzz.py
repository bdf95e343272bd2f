"""Fuzzing every user input: success or one clean error, never a traceback, never a hang.

Two kinds of generated input, both driven by hypothesis (so a failure shrinks to a small
reproducer and the run is reproducible: ``derandomize``):
- mutations of valid files (delete / duplicate / insert a hostile token / flip a byte /
  truncate / swap lines) for BUILD files, WORKSPACE.yaml, BOMs, Occlum.json and key files;
- structured values of roughly the right shape (known keys, wrong or extreme values) for
  WORKSPACE.yaml, Occlum.json and the occlum_instance configuration attributes.

Most cases call the functions in-process: the only exception allowed out is UserError
(with a non-empty, one-line message). A handful go through the CLI for exit codes.
``OCCLUM_RULES_FUZZ_EXAMPLES`` is the number of cases per fuzz target (default 40; 8
targets). The README's reliability section says how to run thousands.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from occlum_rules.errors import UserError
from tests.reliability.support import REPO, no_traceback, scale, snapshot
from tests.support.workspace import copy_examples, run_cli

EXAMPLES = scale("OCCLUM_RULES_FUZZ_EXAMPLES", 40)
CASE_TIMEOUT = 20  # seconds one in-process case may take before it counts as a hang

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)


# --------------------------------------------------------------------------- machinery

class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no `except Exception` in the code hides it."""


@contextlib.contextmanager
def watchdog(seconds: int = CASE_TIMEOUT):
    def fire(signum, frame):
        raise Hang(f"no answer within {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def clean_outcome(func, *args, **kwargs):
    """Run one case: return its value or the UserError; anything else fails the test."""
    with watchdog():
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            text = str(exc)
            assert text.strip(), "a UserError with an empty message"
            assert "\n" not in text.strip(), f"error is not one line: {text!r}"
            assert "Traceback" not in text, text
            return exc


GENERIC_TOKENS = [
    b"..", b"/", b"../../../../etc/passwd", b"/etc/passwd", b"\x00", b"\xff\xfe", b"\n", b"\t",
    b"  ", b"\"", b"'", b"\\", b"-1", b"0", b"99999999999999999999999999999", b"1e999",
    b"\xe2\x80\xae", b"${HOME}", b"$", b"*", b"**", b"%s%n", b"{", b"}", b"[", b"]", b",", b":",
]
PY_TOKENS = GENERIC_TOKENS + [
    b"import os\n", b"__class__", b"_x", b"while True:\n    pass\n", b"open('x')", b"eval('1')",
    b"load('//nothing:here.py', 'x')\n", b"glob(['../*'])", b"glob(['**'])", b"fail('boom')\n",
    b"def f(x):\n    return f(x)\nf(1)\n", b"lambda: 0", b"(", b")", b"=", b"None", b"True",
    b"1.5", b"{}", b"[]", b"name = ", b"srcs = ", b"deps = ", b"\":nope\"", b"\"//:x\"",
    b"occlum_cc_binary(name = 'hello', srcs = ['hello.c'])\n", b"print(1)\n",
    b"type(1).mro()", b"().__class__", b"str.format", b"**{}", b"*[]", b"x.y", b"[x for x in y]",
    b"\"@bad\"", b"'//examples/multi_c:greet'", b"sgx_mode = 'SIM',", b"image_key = 'k',",
]
YAML_TOKENS = GENERIC_TOKENS + [
    b": ", b"- ", b"\n  ", b"&a ", b"*a", b"!!python/object/apply:os.system ['true'] ",
    b"!!binary ", b"~", b"null", b"true", b"0x10", b"---\n", b"...\n", b"%YAML 1.1\n", b"? ",
    b"<<: *a\n", b"!!set {a}", b"2001-12-14", b"=", b"target: ", b"files:\n", b"dirs:\n",
    b"from: ", b"createlinks:\n", b"src: ", b"linkname: ", b"mkdirs:\n", b"includes:\n",
    b"excludes:\n", b"autodep: false\n", b"hash: ", b"rename: ", b"copy:\n",
]
JSON_TOKENS = GENERIC_TOKENS + [
    b"null", b"true", b"false", b"\"1GB\"", b"\"100000000000000000000000TB\"", b"\"-5MB\"",
    b"\"0x\"", b"\\u0000", b"\\ud800", b"//", b"/*", b"NaN", b"Infinity", b"-0", b"1.0",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", b"\"MAC\"", b"\"unionfs\"", b"\"sefs\"",
    b"\"hostfs\"", b"\"ramfs\"", b"\"/\"", b"\"target\"", b"\"layers\"", b"\"source\"",
]
KEY_TOKENS = GENERIC_TOKENS + [
    b"-----BEGIN RSA PRIVATE KEY-----\n", b"-----END RSA PRIVATE KEY-----\n",
    b"-----BEGIN PRIVATE KEY-----\n", b"-----BEGIN PUBLIC KEY-----\n",
    b"Proc-Type: 4,ENCRYPTED\n", b"=", b"==", b"A", b"+", b"-", b"ff", b"100", b"+1", b"g",
    b"00-00-00-00-00-00-00-00-00-00-00-00-00-00-00-00", b"\r\n",
]

OPS = ("delete", "duplicate", "insert", "flip", "truncate", "swap_lines", "replace")


def mutations(tokens: list[bytes]):
    return st.lists(st.tuples(st.sampled_from(OPS), st.floats(0, 1), st.floats(0, 1),
                              st.sampled_from(tokens), st.integers(0, 7)),
                    min_size=1, max_size=4)


def mutate(data: bytes, muts) -> bytes:
    for op, a, b, token, bit in muts:
        n = len(data)
        i = min(int(a * n), n)
        j = min(i + 1 + int(b * 40), n)
        if op == "delete":
            data = data[:i] + data[j:]
        elif op == "duplicate":
            data = data[:j] + data[i:j] + data[j:]
        elif op == "insert":
            data = data[:i] + token + data[i:]
        elif op == "flip" and n:
            k = min(i, n - 1)
            data = data[:k] + bytes([data[k] ^ (1 << bit)]) + data[k + 1:]
        elif op == "truncate":
            data = data[:i]
        elif op == "swap_lines":
            lines = data.split(b"\n")
            if len(lines) > 1:
                x, y = int(a * len(lines)) % len(lines), int(b * len(lines)) % len(lines)
                lines[x], lines[y] = lines[y], lines[x]
                data = b"\n".join(lines)
        elif op == "replace":  # replace a span by a token: a value becomes hostile
            data = data[:i] + token + data[j:]
    return data


# --------------------------------------------------------------------------- BUILD files

@pytest.fixture(scope="module")
def build_ws(tmp_path_factory):
    ws = copy_examples(tmp_path_factory.mktemp("fuzz-build") / "ws", ["hello_c", "multi_c"])
    originals = {p: (ws / p).read_bytes() for p in ("examples/hello_c/BUILD.py",
                                                     "examples/multi_c/BUILD.py")}
    from occlum_rules.core.doit_bridge import load_graph

    load_graph(ws)  # warm the toolchain probes so each case is only the BUILD files' work
    return ws, originals


@FUZZ
@given(which=st.sampled_from(["examples/hello_c/BUILD.py", "examples/multi_c/BUILD.py"]),
       muts=mutations(PY_TOKENS))
def test_build_files(build_ws, which, muts):
    from occlum_rules.core.doit_bridge import load_graph

    ws, originals = build_ws
    for rel, data in originals.items():
        (ws / rel).write_bytes(data)
    (ws / which).write_bytes(mutate(originals[which], muts))
    result = clean_outcome(load_graph, ws)
    if isinstance(result, UserError):
        # BUILD errors say where: a file and usually a line
        assert "BUILD.py" in str(result) or "//" in str(result) or "WORKSPACE" in str(result), \
            str(result)


# --------------------------------------------------------------------------- WORKSPACE.yaml

FULL_WORKSPACE = b"""\
name: fuzz
build_file: BUILD.py
output_dir: out
source_date_epoch: 1704067200
sgx_mode: HW
edmm: false
stages: python
occlum:
  home: /opt/occlum
toolchains:
  cc: [occlum-gcc, musl-gcc, gcc]
  cargo: cargo
  go: [occlum-go, go]
signing:
  key: keys/signing.pem
  mode: online
cache:
  dir: .cache
  upload: false
vars:
  app: hello
  threads: 4
"""


def _load_workspace(root: Path):
    from occlum_rules.core.workspace import load_workspace

    ws = load_workspace(root)
    ws.source_date_epoch()
    ws.cache_dir(environ={})
    return ws


@FUZZ
@given(seed=st.sampled_from(["full", "repo"]), muts=mutations(YAML_TOKENS))
def test_workspace_yaml_mutations(tmp_path_factory, seed, muts):
    root = tmp_path_factory.mktemp("fuzz-ws")
    base = FULL_WORKSPACE if seed == "full" else (REPO / "WORKSPACE.yaml").read_bytes()
    (root / "WORKSPACE.yaml").write_bytes(mutate(base, muts))
    clean_outcome(_load_workspace, root)


WS_KEYS = ["name", "build_file", "output_dir", "source_date_epoch", "sgx_mode", "edmm",
           "stages", "occlum", "toolchains", "signing", "cache", "vars", "bogus"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=12), st.sampled_from(["..", "/", "../out", "HW", "SIM",
                                                           "git", "env", ".", "", "a/b"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["home", "cc", "key", "mode", "dir", "remote", "upload",
                                     "x", "command", "go", "cargo"]), inner, max_size=3)),
    max_leaves=8)


@FUZZ
@given(data=st.dictionaries(st.sampled_from(WS_KEYS), VALUES, max_size=6))
def test_workspace_yaml_values(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fuzz-wsv")
    env = dict(os.environ)
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    try:
        (root / "WORKSPACE.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
        clean_outcome(_load_workspace, root)
    finally:
        os.environ.clear()
        os.environ.update(env)


# --------------------------------------------------------------------------- BOM files

SEED_BOM = b"""\
includes:
  - base.yaml
excludes:
  - "*.tmp"
targets:
  - target: /
    mkdirs:
      - bin
      - etc
  - target: /etc
    createlinks:
      - src: /proc/self/mounts
        linkname: mtab
      - src: ../bin/tool
        linkname: tool
    copy:
      - files:
          - src/conf.txt
          - name: src/data.bin
            rename: data
  - target: /opt/app
    copy:
      - from: src
        dirs:
          - tree
      - dirs:
          - src/tree
"""
BASE_BOM = b"targets:\n  - target: /\n    mkdirs:\n      - tmp\n"


@pytest.fixture(scope="module")
def bom_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-bom")
    src = base / "work" / "src"
    (src / "tree" / "sub").mkdir(parents=True)
    (src / "conf.txt").write_text("conf\n")
    (src / "data.bin").write_bytes(b"\x00\x01")
    (src / "tree" / "a.txt").write_text("a\n")
    (src / "tree" / "sub" / "b.tmp").write_text("b\n")
    os.symlink("a.txt", src / "tree" / "link")
    (base / "work" / "base.yaml").write_bytes(BASE_BOM)
    return base


def _copy_bom(bom: Path, image: Path):
    from occlum_rules.stages.bom import apply_plan, plan_bom

    plan = plan_bom(str(bom), [str(bom.parent)], None, env={"HOME": "/nonexistent"},
                    root=str(image))
    apply_plan(plan, str(image), sync=True)


@FUZZ
@given(which=st.sampled_from(["seed", "hello", "python"]), muts=mutations(YAML_TOKENS))
def test_bom_mutations(bom_dir, which, muts):
    work = bom_dir / "work"
    base = {"seed": SEED_BOM, "hello": (REPO / "examples/hello_c/hello.yaml").read_bytes(),
            "python": (REPO / "examples/python_host/python.yaml").read_bytes()}[which]
    bom = work / "top.yaml"
    bom.write_bytes(mutate(base, muts))
    image = work / "image"
    shutil.rmtree(image, ignore_errors=True)
    before = snapshot(bom_dir, skip=())
    clean_outcome(_copy_bom, bom, image)
    after = snapshot(bom_dir)
    outside = {k for k in set(before) ^ set(after) | {k for k in before if before[k] != after.get(k)}
               if not k.startswith("work/image") and k != "work/top.yaml"}
    assert not outside, f"copy-bom wrote outside the image: {sorted(outside)}"
    shutil.rmtree(image, ignore_errors=True)


# --------------------------------------------------------------------------- Occlum.json

MAC = "82-08-5b-42-a6-5a-2a-8d-4d-c9-69-c3-1f-df-19-c2"


def _seed_occlum_json() -> bytes:
    from occlum_rules.stages.config import render_occlum_json

    return render_occlum_json(None, {"name": "fuzz", "sgx_mode": "HW"},
                              {"resource_limits": {"user_space_size": "256MB"},
                               "entry_points": ["/bin"]})


def _config(data: bytes, edmm: bool, mode: str):
    from occlum_rules.stages.config import generate_config
    from occlum_rules.stages.config.mounts import check_root_mount
    from occlum_rules.stages.config.pipeline import resolve

    res = resolve(data, edmm=edmm, sgx_mode=mode, source="Occlum.json")
    check_root_mount(res.config, "Occlum.json")
    generate_config(data, MAC, MAC, edmm=edmm, sgx_mode=mode, source="Occlum.json")


@FUZZ
@given(muts=mutations(JSON_TOKENS), edmm=st.booleans(),
       mode=st.sampled_from(["HW", "SIM", "HYPER"]))
def test_occlum_json_mutations(muts, edmm, mode):
    clean_outcome(_config, mutate(_seed_occlum_json(), muts), edmm, mode)


CONFIG_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**65, 2**65), st.floats(allow_nan=True),
    st.sampled_from(["1GB", "0", "32MB", "1KB", "-1MB", "0x10", "4096", "99999999TB", "1.5MB",
                     "", "/", "/bin", "..", "../..", "./build/mount/__ROOT", "unionfs", "sefs",
                     "hostfs", "ramfs", "async_sfs", "0x0", "0xFFFFFFFFFFFFFFFFFFFF", "A=B",
                     "PATH", "MAC"]),
    st.text(max_size=10))
CONFIG_KEYS = ["resource_limits", "process", "entry_points", "env", "metadata", "mount",
               "feature", "user_space_size", "kernel_space_heap_size", "max_num_of_threads",
               "default_stack_size", "default_heap_size", "default_mmap_size", "default",
               "untrusted", "product_id", "version_number", "debuggable", "enable_kss",
               "family_id", "high", "low", "target", "type", "source", "options", "layers",
               "amx", "pkru", "enable_edmm", "io_uring", "user_space_max_size",
               "kernel_space_heap_max_size", "ext_prod_id", "enable_posix_shm", "temporary"]
CONFIG_VALUES = st.recursive(CONFIG_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(CONFIG_KEYS), inner, max_size=4)),
    max_leaves=12)


@FUZZ
@given(overrides=st.dictionaries(st.sampled_from(CONFIG_KEYS[:7]), CONFIG_VALUES, max_size=4),
       edmm=st.booleans())
def test_occlum_json_values(overrides, edmm):
    """Structured values merged over a valid file, as the occlum_instance attributes are."""
    def case():
        from occlum_rules.stages.config import render_occlum_json

        data = render_occlum_json(None, {"name": "fuzz", "sgx_mode": "HW"}, overrides or None)
        _config(data, edmm, "HW")

    clean_outcome(case)


# --------------------------------------------------------------------------- key files

@pytest.fixture(scope="module")
def enclave(tmp_path_factory):
    """A real enclave to sign: the stand-in LibOS and an Enclave.xml from a real build."""
    from tests.reliability.support import build

    ws = copy_examples(tmp_path_factory.mktemp("fuzz-enclave") / "ws", ["hello_c"])
    build(ws, tmp_path_factory.mktemp("fuzz-enclave-cache"))
    inst = ws / "out/bin/examples/hello_c/instance/build"
    libos = next((inst / "lib").glob("libocclum-libos.so.*.*"))
    return libos, inst / "Enclave.xml"


def _pem(key, fmt: str = "pkcs8", password: bytes | None = None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    enc = serialization.BestAvailableEncryption(password) if password else \
        serialization.NoEncryption()
    form = serialization.PrivateFormat.PKCS8 if fmt == "pkcs8" else \
        serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, form, enc)


@pytest.fixture(scope="module")
def seed_keys():
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    good = rsa.generate_private_key(public_exponent=3, key_size=3072)
    return {"dev": (REPO / "occlum_rules/templates/dev-signing-key.pem").read_bytes(),
            "pkcs1": _pem(good, "pkcs1"), "encrypted": _pem(good, password=b"pw"),
            "e65537": _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "ec": _pem(ec.generate_private_key(ec.SECP256R1()))}


@FUZZ
@given(which=st.sampled_from(["dev", "pkcs1", "e65537", "encrypted", "ec"]),
       muts=st.one_of(st.just([]), mutations(KEY_TOKENS)),
       passphrase=st.sampled_from([None, "pw", "wrong", ""]))
def test_signing_key_mutations(enclave, seed_keys, which, muts, passphrase):
    from occlum_rules.stages.sign import public_key_fingerprint
    from occlum_rules.stages.sign.signer import sign_enclave

    libos, enclave_xml = enclave
    key = mutate(seed_keys[which], muts)
    saved_env, saved_stdin = os.environ.get("OCCLUM_RULES_KEY_PASSPHRASE"), sys.stdin
    sys.stdin = io.StringIO()  # never a terminal: an encrypted key must not prompt here
    if passphrase is None:
        os.environ.pop("OCCLUM_RULES_KEY_PASSPHRASE", None)
    else:
        os.environ["OCCLUM_RULES_KEY_PASSPHRASE"] = passphrase
    try:
        clean_outcome(public_key_fingerprint, key)
        clean_outcome(sign_enclave, libos, enclave_xml, key, None, date=1704067200)
    finally:
        sys.stdin = saved_stdin
        os.environ.pop("OCCLUM_RULES_KEY_PASSPHRASE", None)
        if saved_env is not None:
            os.environ["OCCLUM_RULES_KEY_PASSPHRASE"] = saved_env


@FUZZ
@given(muts=mutations(KEY_TOKENS))
def test_image_key_mutations(tmp_path_factory, muts):
    from occlum_rules.stages.securefs.image_key import load_image_key

    path = tmp_path_factory.mktemp("fuzz-imagekey") / "key"
    path.write_bytes(mutate(b"6b-08-3a-c7-47-14-f2-5c-e6-a7-19-63-e3-aa-09-1e\n", muts))
    result = clean_outcome(load_image_key, path)
    if isinstance(result, UserError):
        # the message must not echo the key material
        assert "6b-08-3a" not in str(result)
    else:
        assert isinstance(result, bytes) and len(result) == 16


# --------------------------------------------------------------------------- hostile shapes

def test_pathological_inputs_end_cleanly(tmp_path):
    """Inputs a mutator rarely builds but an attacker would: deep nesting, alias bombs, huge
    numbers. Each must end (quickly) in success or one clean error."""
    deep_json = b"[" * 100000 + b"]" * 100000
    clean_outcome(_config, deep_json, False, "HW")
    clean_outcome(_config, b'{"resource_limits": {"user_space_size": "9' + b"9" * 5000 + b'GB"}}',
                  False, "HW")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "WORKSPACE.yaml").write_text("vars:\n  " + bomb.replace("\n", "\n  "))
    clean_outcome(_load_workspace, tmp_path)
    work = tmp_path / "bom"
    work.mkdir()
    (work / "top.yaml").write_text(bomb + "targets:\n  - target: /\n    mkdirs: *i\n")
    clean_outcome(_copy_bom, work / "top.yaml", work / "image")
    (tmp_path / "WORKSPACE.yaml").write_text("vars: " + "[" * 5000 + "]" * 5000 + "\n")
    clean_outcome(_load_workspace, tmp_path)


def test_pathological_bom_ends_cleanly(tmp_path):
    (tmp_path / "ctl.yaml").write_bytes(b"\x03 a control character\ntargets: []\n")
    clean_outcome(_copy_bom, tmp_path / "ctl.yaml", tmp_path / "image1")
    (tmp_path / "deep.yaml").write_text("targets: " + "[" * 5000 + "]" * 5000 + "\n")
    clean_outcome(_copy_bom, tmp_path / "deep.yaml", tmp_path / "image2")


def test_unknown_key_algorithm_is_a_clean_error(seed_keys):
    import base64

    from occlum_rules.stages.sign import public_key_fingerprint

    der = bytearray(base64.b64decode(b"".join(seed_keys["ec"].splitlines()[1:-1])))
    at = der.find(bytes.fromhex("2a8648ce3d0201"))  # id-ecPublicKey
    der[at + 2] ^= 1  # now 1.2.841.10045.2.1, which no library knows
    pem = (b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(bytes(der))
           + b"-----END PRIVATE KEY-----\n")
    assert isinstance(clean_outcome(public_key_fingerprint, pem), UserError)


def test_fuzz_harness_detects_bad_outcomes():
    """The harness really fails on a stray exception, a multi-line error and a hang."""
    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        clean_outcome(boom)
    with pytest.raises(AssertionError):
        clean_outcome(lambda: (_ for _ in ()).throw(UserError("two\nlines")))
    with pytest.raises(Hang):
        with watchdog(1):
            while True:
                pass


# --------------------------------------------------------------------------- through the CLI

def _cli_ok(result, allowed: set[int]) -> None:
    assert result.returncode in allowed, (result.returncode, result.output)
    assert no_traceback(result.output), result.output
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert errors, "a failure with no message"


def test_cli_exit_codes_on_bad_inputs(tmp_path, enclave, seed_keys):
    libos, enclave_xml = enclave
    bad_json = tmp_path / "Occlum.json"
    bad_json.write_bytes(b'{"resource_limits": {"user_space_size": "lots"}}')
    r = run_cli("config", "check", str(bad_json))
    _cli_ok(r, {1})
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    bad_json.write_bytes(b"{\x00")
    _cli_ok(run_cli("config", "check", str(bad_json)), {1})

    bom = tmp_path / "bad.yaml"
    bom.write_bytes(b"targets:\n  - target: /\n    mkdirs: {nope: 1}\n")
    from occlum_rules.stages.bom.schema import EXIT_FILE_NOT_FOUND, EXIT_INVALID_BOM

    _cli_ok(run_cli("copy-bom", "-f", str(bom), "--root", str(tmp_path / "img")),
            {EXIT_INVALID_BOM})
    bom.write_bytes(b"targets:\n  - target: /\n    copy:\n      - files: [/no/such/file]\n")
    _cli_ok(run_cli("copy-bom", "-f", str(bom), "--root", str(tmp_path / "img")),
            {EXIT_FILE_NOT_FOUND, EXIT_INVALID_BOM, 254})

    key = tmp_path / "key.pem"
    key.write_bytes(seed_keys["dev"][:200])
    out = tmp_path / "signed.so"
    r = run_cli("sgx-sign", "sign", "-enclave", str(libos), "-config", str(enclave_xml),
                "-key", str(key), "-out", str(out))
    _cli_ok(r, {255})  # sgx_sign's documented failure status
    assert not out.exists()
    key.write_bytes(seed_keys["e65537"])
    _cli_ok(run_cli("sgx-sign", "sign", "-enclave", str(libos), "-config", str(enclave_xml),
                    "-key", str(key), "-out", str(out)), {255})

    img_key = tmp_path / "image.key"
    img_key.write_text("zz-08-3a-c7-47-14-f2-5c-e6-a7-19-63-e3-aa-09-1e\n")
    src = tmp_path / "dir"
    src.mkdir()
    (src / "f").write_text("x")
    r = run_cli("sefs-cli", "zip", "--key", str(img_key), str(src), str(tmp_path / "__ROOT"),
                str(tmp_path / "mac"))
    _cli_ok(r, {1})
    assert "zz-08" not in r.output

    ws = copy_examples(tmp_path / "ws", ["hello_c"])
    (ws / "examples/hello_c/BUILD.py").write_text("occlum_cc_binary(name = 'x', srcs = [1])\n")
    from tests.support.workspace import run_doit

    r = run_doit(ws, "build", cache=tmp_path / "cache")
    _cli_ok(r, {1})
    assert "BUILD.py:1" in r.output, r.output
    (ws / "WORKSPACE.yaml").write_text("sgx_mode: [\n")
    r = run_doit(ws, "build", cache=tmp_path / "cache")
    _cli_ok(r, {1})
    assert "WORKSPACE.yaml" in r.output, r.output
