"""ELF checks on real compiled enclaves, SDK profile choice, and key handling."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from occlum_rules import cli
from occlum_rules.stages.sign import signer
from occlum_rules.stages.sign.errors import SignError
from tests.conftest import vectors_path

EPOCH = 1704067200

# A tiny enclave-shaped shared object written for these tests: exported g_global_data with
# an SDK version word, enclave_entry, some TLS, and an unpadded sgx_metadata note.
ENCLAVE_C = r"""
#include <stdint.h>
#define WORD (((uint64_t)2 << 32) | ((uint64_t)SDK_MINOR << 16) | 100)
struct gd { uint64_t v; uint8_t rest[GD_SIZE - 8]; };
__attribute__((visibility("default"), used)) volatile struct gd g_global_data = { WORD, {1} };
__attribute__((tls_model("local-exec"))) __thread uint64_t t = 5;
__attribute__((visibility("default"), used, noinline)) uint64_t enclave_entry(uint64_t x)
{ t += x; return t + g_global_data.v; }
#define S2(x) #x
#define S(x) S2(x)
__asm__(".section .note.sgxmeta,\"\",@note\n.p2align 2\n.long 13\n.long " S(META) "\n.long 1\n"
        ".asciz \"sgx_metadata\"\n.fill " S(META) ",1,0\n.p2align 2\n"
#ifdef WITH_INIT
        ".section .init,\"ax\",@progbits\nret\n"
#endif
#ifdef WITH_TEXTREL
        ".section .text.ptr,\"awx\",@progbits\n.p2align 3\n.quad enclave_entry\n"
#endif
        ".text\n");
"""
FLAGS = ["-O2", "-fpie", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
         "-ffreestanding", "-nostdlib", "-nostartfiles", "-Wl,-pie", "-Wl,--no-dynamic-linker",
         "-Wl,-e,enclave_entry", "-Wl,--export-dynamic", "-Wl,--build-id=none",
         "-Wl,-z,max-page-size=4096", "-Wl,-z,noexecstack", "-Wl,--hash-style=gnu"]
OCCLUM = ["-DSDK_MINOR=20", "-DGD_SIZE=1760", "-DMETA=0x5000"]
INTEL = ["-DSDK_MINOR=26", "-DGD_SIZE=1768", "-DMETA=0x6000"]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def build(tmp_path: Path, name: str, defines: list[str], flags: list[str] = FLAGS) -> Path:
    src = tmp_path / "enclave.c"
    src.write_text(ENCLAVE_C)
    out = tmp_path / f"{name}.so"
    subprocess.run(["gcc", *flags, *defines, str(src), "-o", str(out)], check=True,
                   capture_output=True)
    return out


def key_a() -> Path:
    return vectors_path("sign", "case1_small", "signing_key.pem")


def config() -> Path:
    return vectors_path("sign", "case1_small", "Enclave.xml")


@needs_gcc
@pytest.mark.parametrize("defines,profile", [(INTEL, "intel-2.26"), (OCCLUM, "occlum-2.20"),
                                             (["-DSDK_MINOR=21", "-DGD_SIZE=1760", "-DMETA=0x5000"], "occlum-2.21")])
def test_profile_is_chosen_from_sdk_version(tmp_path: Path, defines, profile) -> None:
    so = build(tmp_path, "e", defines)
    out = tmp_path / "signed.so"
    r = signer.sign_enclave(so, config(), key_a(), out, date=EPOCH)
    assert r.profile == profile
    info = signer.read_signed_info(out)
    assert info["mrenclave"] == r.mrenclave.hex() == signer.measure(so, config()).hex()
    before, after = so.read_bytes(), out.read_bytes()
    assert len(before) == len(after) and before != after


@needs_gcc
def test_unknown_sdk_version_lists_supported(tmp_path: Path) -> None:
    so = build(tmp_path, "e", ["-DSDK_MINOR=99", "-DGD_SIZE=1768", "-DMETA=0x6000"])
    with pytest.raises(SignError) as err:
        signer.measure(so, config())
    assert "2.99.100" in str(err.value)
    for supported in ("2.26.100", "2.20.100", "2.21.100"):
        assert supported in str(err.value)


@needs_gcc
def test_forced_profile_must_match_sdk_version(tmp_path: Path) -> None:
    so = build(tmp_path, "e", OCCLUM)
    with pytest.raises(SignError, match="SDK version is not correct"):
        signer.measure(so, config(), profile="intel-2.26")
    assert signer.measure(so, config(), profile="occlum-2.20") == signer.measure(so, config())


@needs_gcc
def test_metadata_note_size_must_match_profile(tmp_path: Path) -> None:
    so = build(tmp_path, "e", ["-DSDK_MINOR=20", "-DGD_SIZE=1760", "-DMETA=0x6000"])
    with pytest.raises(SignError, match=r"holds 0x6000 bytes"):
        signer.measure(so, config())


@needs_gcc
def test_init_section_and_ignore_flag(tmp_path: Path, capsys) -> None:
    so = build(tmp_path, "e", [*OCCLUM, "-DWITH_INIT"])
    with pytest.raises(SignError, match=r"\.init section"):
        signer.sign_enclave(so, config(), key_a(), None, date=EPOCH)
    signer.sign_enclave(so, config(), key_a(), None, date=EPOCH, ignore_init_sec_error=True)
    rc = cli.main(["sgx-sign", "sign", "-key", str(key_a()), "-enclave", str(so), "-out",
                   str(tmp_path / "o.so"), "-ignore-init-sec-error"])
    assert rc == 0, capsys.readouterr().err


@needs_gcc
def test_text_relocations_fail_unless_ignored(tmp_path: Path) -> None:
    so = build(tmp_path, "e", [*OCCLUM, "-DWITH_TEXTREL"], FLAGS + ["-Wl,-z,notext"])
    with pytest.raises(SignError) as err:
        signer.sign_enclave(so, config(), key_a(), None, date=EPOCH)
    assert "text relocations" in str(err.value) and "TEXTRELs found at offset" in str(err.value)
    r = signer.sign_enclave(so, config(), key_a(), None, date=EPOCH, ignore_rel_error=True)
    assert len(r.mrenclave) == 32


@needs_gcc
def test_non_pie_is_rejected(tmp_path: Path) -> None:
    flags = [f for f in FLAGS if f not in ("-fpie", "-Wl,-pie")] + ["-fno-pie", "-no-pie", "-static"]
    so = build(tmp_path, "e", OCCLUM, flags)
    with pytest.raises(SignError, match="ET_DYN"):
        signer.measure(so, config())


def test_not_an_elf(tmp_path: Path) -> None:
    bad = tmp_path / "x.so"
    bad.write_bytes(b"not an elf" * 10)
    with pytest.raises(SignError, match="The input enclave file is not correct"):
        signer.measure(bad, config())


def _write_key(path: Path, key, password: bytes | None = None) -> Path:
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, enc))
    return path


def test_keys_must_be_rsa3072_e3(tmp_path: Path) -> None:
    d = vectors_path("sign", "case1_small")
    small = _write_key(tmp_path / "small.pem", rsa.generate_private_key(65537, 2048))
    with pytest.raises(SignError, match="3072 bits"):
        signer.sign_enclave(d / "input.so", d / "Enclave.xml", small, None, date=EPOCH)
    e65537 = _write_key(tmp_path / "e.pem", rsa.generate_private_key(65537, 3072))
    with pytest.raises(SignError, match="Only '3' is accepted"):
        signer.sign_enclave(d / "input.so", d / "Enclave.xml", e65537, None, date=EPOCH)
    garbage = tmp_path / "g.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SignError, match="Key file format is not correct"):
        signer.sign_enclave(d / "input.so", d / "Enclave.xml", garbage, None, date=EPOCH)
    with pytest.raises(SignError, match="BEGIN PUBLIC KEY"):
        signer.load_public_key(d / "signing_key.pem")


def test_encrypted_key_needs_passphrase_from_environment(tmp_path: Path, monkeypatch) -> None:
    d = vectors_path("sign", "case1_small")
    key = serialization.load_pem_private_key((d / "signing_key.pem").read_bytes(), None)
    enc = _write_key(tmp_path / "enc.pem", key, b"s3cret")
    monkeypatch.delenv("OCCLUM_RULES_KEY_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    with pytest.raises(SignError, match="OCCLUM_RULES_KEY_PASSPHRASE"):
        signer.sign_enclave(d / "input.so", d / "Enclave.xml", enc, None, date=EPOCH)
    monkeypatch.setenv("OCCLUM_RULES_KEY_PASSPHRASE", "wrong")
    with pytest.raises(SignError, match="passphrase"):
        signer.sign_enclave(d / "input.so", d / "Enclave.xml", enc, None, date=EPOCH)
    monkeypatch.setenv("OCCLUM_RULES_KEY_PASSPHRASE", "s3cret")
    out = tmp_path / "s.so"
    signer.sign_enclave(d / "input.so", d / "Enclave.xml", enc, out, date=EPOCH)
    assert out.read_bytes() == (d / "signed.so").read_bytes()
    assert signer.public_key_fingerprint(enc) == (d / "mrsigner.hex").read_text().strip()


def test_cli_option_errors(tmp_path: Path, capsys) -> None:
    d = vectors_path("sign", "case1_small")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sgx-sign", "sign", "-enclave", str(d / "input.so"), "-out", "x"])
    assert exit_.value.code != 0  # -key is required
    with pytest.raises(SystemExit):
        cli.main(["sgx-sign", "sign", "-key", "k", "-key", "k2", "-enclave", "e", "-out", "o"])
    assert "Repeatly specified" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sgx-sign", "sign", "-key", "same", "-enclave", "same", "-out", "o"])
    assert "same file path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sgx-sign", "gendata", "-key", "k", "-enclave", "e", "-out", "o"])
    rc = cli.main(["sgx-sign", "sign", "-key", str(d / "signing_key.pem"), "-enclave",
                   str(d / "input.so"), "-config", str(tmp_path / "missing.xml"), "-out",
                   str(tmp_path / "o.so")])
    assert rc == 255
    assert 'Configuration file "' in capsys.readouterr().err
    assert not (tmp_path / "o.so").exists()
