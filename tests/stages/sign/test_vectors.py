"""Reproduce every sgx_sign golden vector byte for byte (SDK 2.26 and Occlum's 2.20/2.21)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from occlum_rules import cli
from occlum_rules.stages.sign import signer
from occlum_rules.stages.sign.dump import dump_text
from tests.conftest import vectors_path

EPOCH = 1704067200  # 2024-01-01, the date pinned in every vector

INTEL = ["case1_small", "case2_occlum_sgx1", "case3_kss_amx", "case4_edmm_dual", "case5_occlum_edmm"]
OCCLUM = ["occ1_template_nonedmm", "occ2_seed_nonedmm", "occ3_template_edmm", "occ4_kss_on_ids",
          "occ5_java_pkru"]
PREDICTED = ["occ1_template_nonedmm", "occ3_template_edmm"]
CASES = ([("sign", c) for c in INTEL] + [("sign-occlum", c) for c in OCCLUM]
         + [("sign-occlum/predicted_2.21", c) for c in PREDICTED])
PROFILE = {"sign": "intel-2.26", "sign-occlum": "occlum-2.20", "sign-occlum/predicted_2.21": "occlum-2.21"}


def case_dir(group: str, name: str) -> Path:
    return vectors_path(*group.split("/"), name)


def expected_stderr(path: Path) -> str:
    """The tool's stderr; the vector author appended an ``exit=`` line."""
    return "".join(line for line in path.read_text().splitlines(True) if not line.startswith("exit="))


@pytest.mark.parametrize("group,name", CASES, ids=[f"{g}/{n}" for g, n in CASES])
def test_sign_api_reproduces_vector(group: str, name: str, tmp_path: Path) -> None:
    d = case_dir(group, name)
    out = tmp_path / "signed.so"
    result = signer.sign_enclave(d / "input.so", d / "Enclave.xml", d / "signing_key.pem", out,
                                 date=EPOCH)
    assert result.profile == PROFILE[group]
    assert result.mrenclave.hex() == (d / "mrenclave.hex").read_text().strip()
    assert result.mrsigner.hex() == (d / "mrsigner.hex").read_text().strip()
    assert result.sigstruct == (d / "sigstruct.bin").read_bytes()
    assert out.read_bytes() == (d / "signed.so").read_bytes()
    assert dump_text(result.metadata) == (d / "dump.txt").read_text()
    assert "\n".join(result.log) + "\n" == expected_stderr(d / "sign_stderr.txt")


@pytest.mark.parametrize("group,name", CASES, ids=[f"{g}/{n}" for g, n in CASES])
def test_cli_sign_and_dump_like_sgx_sign(group: str, name: str, tmp_path: Path, capsys,
                                         monkeypatch) -> None:
    d = case_dir(group, name)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    out = tmp_path / "signed.so"
    rc = cli.main(["sgx-sign", "sign", "-key", str(d / "signing_key.pem"), "-config",
                   str(d / "Enclave.xml"), "-enclave", str(d / "input.so"), "-out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.read_bytes() == (d / "signed.so").read_bytes()
    assert captured.out == (d / "sign_stdout.txt").read_text()
    assert captured.err == expected_stderr(d / "sign_stderr.txt")

    rc = cli.main(["sgx-sign", "dump", "-enclave", str(out), "-dumpfile", str(tmp_path / "d.txt"),
                   "-cssfile", str(tmp_path / "css.bin")])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out == (d / "dump_stdout.txt").read_text()
    assert (tmp_path / "d.txt").read_text() == (d / "dump.txt").read_text()
    assert (tmp_path / "css.bin").read_bytes() == (d / "sigstruct.bin").read_bytes()


@pytest.mark.parametrize("group,name", CASES, ids=[f"{g}/{n}" for g, n in CASES])
def test_measure_cli_prints_mrenclave(group: str, name: str, capsys) -> None:
    d = case_dir(group, name)
    assert cli.main(["measure", "--enclave", str(d / "input.so"), "--config", str(d / "Enclave.xml")]) == 0
    mrenclave = (d / "mrenclave.hex").read_text().strip()
    assert f"MRENCLAVE: {mrenclave}" in capsys.readouterr().out.splitlines()

    assert cli.main(["measure", "--enclave", str(d / "signed.so")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"MRENCLAVE: {mrenclave}" in lines
    assert f"MRSIGNER: {(d / 'mrsigner.hex').read_text().strip()}" in lines


def test_read_signed_info_and_fingerprint() -> None:
    d = case_dir("sign", "case3_kss_amx")
    info = signer.read_signed_info(d / "signed.so")
    assert info["mrenclave"] == (d / "mrenclave.hex").read_text().strip()
    assert info["mrsigner"] == (d / "mrsigner.hex").read_text().strip()
    assert (info["isv_prod_id"], info["isv_svn"]) == (0x1234, 7)
    assert info["attributes"] == {"flags": 0x94, "xfrm": 0x60003}
    assert info["date"] == "20240101"
    assert signer.public_key_fingerprint(d / "signing_key.pem") == info["mrsigner"]
    assert signer.public_key_fingerprint(d / "signing_key_pub.pem") == info["mrsigner"]


def test_measure_api_matches_and_needs_no_key() -> None:
    d = case_dir("sign-occlum", "occ3_template_edmm")
    assert signer.measure(d / "input.so", d / "Enclave.xml").hex() == (d / "mrenclave.hex").read_text().strip()


@pytest.mark.parametrize("group,name", [("sign", "case1_small"), ("sign-occlum", "occ1_template_nonedmm")])
def test_two_step_gendata_catsig(group: str, name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    d = case_dir(group, name)
    two = d / "twostep"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    material = tmp_path / "material.bin"
    rc = cli.main(["sgx-sign", "gendata", "-config", str(d / "Enclave.xml"), "-enclave",
                   str(d / "input.so"), "-out", str(material)])
    captured = capsys.readouterr()
    assert rc == 0
    assert material.read_bytes() == (two / "signing_material.bin").read_bytes()
    assert captured.out == (two / "gendata_stdout.txt").read_text()
    assert captured.err == expected_stderr(two / "gendata_stderr.txt")

    # catsig takes the date from the material, not from the clock (the vector ran a year later)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1735689600")
    out = tmp_path / "catsig_signed.so"
    rc = cli.main(["sgx-sign", "catsig", "-key", str(d / "signing_key_pub.pem"), "-config",
                   str(d / "Enclave.xml"), "-enclave", str(d / "input.so"), "-unsigned",
                   str(material), "-sig", str(two / "signature.bin"), "-out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.read_bytes() == (two / "catsig_signed.so").read_bytes() == (d / "signed.so").read_bytes()
    assert captured.err == expected_stderr(two / "catsig_stderr.txt")


def test_catsig_rejects_material_for_another_config(tmp_path: Path) -> None:
    d = case_dir("sign", "case1_small")
    two = d / "twostep"
    other = (d / "Enclave.xml").read_bytes().replace(b"<ISVSVN>0</ISVSVN>", b"<ISVSVN>1</ISVSVN>")
    with pytest.raises(signer.SignError, match="doesn't match the configuration"):
        signer.catsig(d / "input.so", other, d / "signing_key_pub.pem", two / "signature.bin",
                      two / "signing_material.bin", tmp_path / "x.so")
    with pytest.raises(signer.SignError, match="does not verify"):
        signer.catsig(d / "input.so", d / "Enclave.xml", d / "signing_key_pub.pem",
                      bytes(384), two / "signing_material.bin", tmp_path / "x.so")


def test_marshal_buffer_size_is_rejected_like_occlum_sgx_sign(tmp_path: Path, capsys, monkeypatch) -> None:
    d = case_dir("sign-occlum", "err_msbuf_edmm_2MB")
    key = case_dir("sign-occlum", "occ1_template_nonedmm") / "signing_key.pem"
    out = tmp_path / "signed.so"
    out.write_bytes(b"stale")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    rc = cli.main(["sgx-sign", "sign", "-key", str(key), "-config", str(d / "Enclave.xml"),
                   "-enclave", str(d / "input.so"), "-out", str(out)])
    captured = capsys.readouterr()
    assert rc == 255
    assert captured.out == (d / "sign_stdout.txt").read_text()
    assert captured.err == expected_stderr(d / "sign_stderr.txt")
    assert not out.exists()  # sgx_sign deletes -out on failure

    with pytest.raises(signer.SignError, match='Element is not recognized - "MarshalBufferSize"'):
        signer.sign_enclave(d / "input.so", d / "Enclave.xml", key, None, date=EPOCH)


def test_libos_standin_signing(tmp_path: Path, capsys, monkeypatch) -> None:
    d = vectors_path("libos-standin")
    out = tmp_path / "libocclum-libos.signed.so"
    result = signer.sign_enclave(d / "libos_standin_patched.so", d / "Enclave.xml",
                                 d / "signing_key.pem", out, date=EPOCH)
    assert out.read_bytes() == (d / "libos_standin.signed.so").read_bytes()
    assert result.mrenclave.hex() == (d / "mrenclave.hex").read_text().strip()
    assert result.mrsigner.hex() == (d / "mrsigner.hex").read_text().strip()
    assert result.sigstruct == (d / "sigstruct.bin").read_bytes()
    assert dump_text(result.metadata) == (d / "dump.txt").read_text()
    assert "\n".join(result.log) + "\n" == expected_stderr(d / "sign_stderr.txt")
    unpatched = signer.measure(d / "libos_standin_unpatched.so", d / "Enclave.xml")
    assert unpatched.hex() == (d / "mrenclave_unpatched.hex").read_text().strip()

    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    rc = cli.main(["sgx-sign", "sign", "-key", str(d / "signing_key.pem"), "-config",
                   str(d / "Enclave.xml"), "-enclave", str(d / "libos_standin_patched.so"),
                   "-out", str(tmp_path / "cli.so")])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out == (d / "sign_stdout.txt").read_text()
    assert (tmp_path / "cli.so").read_bytes() == (d / "libos_standin.signed.so").read_bytes()


def test_output_differs_from_input_only_in_metadata(tmp_path: Path) -> None:
    d = case_dir("sign", "case4_edmm_dual")
    out = tmp_path / "s.so"
    result = signer.sign_enclave(d / "input.so", d / "Enclave.xml", d / "signing_key.pem", out, date=EPOCH)
    before, after = (d / "input.so").read_bytes(), out.read_bytes()
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    meta_offset = 0x3731
    assert len(before) == len(after)
    assert meta_offset <= diff[0] and diff[-1] < meta_offset + len(result.metadata)
    assert hashlib.sha256(after[meta_offset + 64 + 128 : meta_offset + 64 + 512]).digest() == result.mrsigner


def test_already_signed_needs_resign(tmp_path: Path) -> None:
    d = case_dir("sign", "case1_small")
    with pytest.raises(signer.SignError, match="signed already"):
        signer.sign_enclave(d / "signed.so", d / "Enclave.xml", d / "signing_key.pem", None, date=EPOCH)
    out = tmp_path / "re.so"
    signer.sign_enclave(d / "signed.so", d / "Enclave.xml", d / "signing_key.pem", out, date=EPOCH,
                        resign=True)
    assert out.read_bytes() == (d / "signed.so").read_bytes()


def test_date_defaults_to_source_date_epoch_then_today(monkeypatch) -> None:
    d = case_dir("sign", "case1_small")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    r = signer.sign_enclave(d / "input.so", d / "Enclave.xml", d / "signing_key.pem", None)
    assert r.sigstruct == (d / "sigstruct.bin").read_bytes()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    import datetime

    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    r = signer.sign_enclave(d / "input.so", d / "Enclave.xml", d / "signing_key.pem", None)
    assert r.sigstruct[20:24] == int(today, 16).to_bytes(4, "little")
    assert r.mrenclave.hex() == (d / "mrenclave.hex").read_text().strip()


def test_two_step_api_equals_one_step(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    d = case_dir("sign-occlum", "occ3_template_edmm")
    material = signer.gendata(d / "input.so", d / "Enclave.xml", tmp_path / "m.bin", date=EPOCH)
    assert len(material.material) == 256 and (tmp_path / "m.bin").read_bytes() == material.material
    key = serialization.load_pem_private_key((d / "signing_key.pem").read_bytes(), None)
    signature = key.sign(material.material, padding.PKCS1v15(), hashes.SHA256())  # the "HSM"
    out = tmp_path / "s.so"
    result = signer.catsig(d / "input.so", d / "Enclave.xml", d / "signing_key_pub.pem", signature,
                           tmp_path / "m.bin", out)
    assert out.read_bytes() == (d / "signed.so").read_bytes()
    assert result.mrenclave == material.mrenclave
