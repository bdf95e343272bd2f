"""SIGSTRUCT (enclave_css_t, 1808 bytes): header, key, body, q1/q2, and the keys for it.

The signed message is header (128 bytes) || body (128 bytes); the signature is RSA-3072,
e = 3, PKCS#1 v1.5 over SHA-256, stored little-endian together with q1 = S^2 / N and
q2 = S * (S^2 mod N) / N, which let the CPU verify it without big-number division.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from occlum_rules.stages.sign.enclave_xml import EnclaveConfig
from occlum_rules.stages.sign.errors import SignError
from occlum_rules.stages.sign.profiles import (
    MASK64,
    XFRM_AMX,
    XFRM_AVX,
    XFRM_AVX512,
    XFRM_LEGACY,
    XFRM_MPX,
    XFRM_PKRU,
    SdkProfile,
)

CSS_SIZE = 1808
KEY_SIZE = 384
HEADER = slice(0, 128)
BODY = slice(900, 1028)
OFF_MODULUS, OFF_EXPONENT, OFF_SIGNATURE = 128, 512, 516
OFF_HASH, OFF_Q1, OFF_Q2 = 960, 1040, 1424
PASSPHRASE_ENV = "OCCLUM_RULES_KEY_PASSPHRASE"

FLAG_DEBUG, FLAG_MODE64BIT, FLAG_PROVISION_KEY = 0x2, 0x4, 0x10
FLAG_EINITTOKEN_KEY, FLAG_KSS, FLAG_AEX_NOTIFY = 0x20, 0x80, 0x400
FLAGS_NON_CHECK_BITS = 0x00FF_0000_0000_0000
SSA_GPR_SIZE = 184

_XSAVE_TABLE = (
    (XFRM_LEGACY, 512 + 64),
    (XFRM_AVX, 512 + 64 + 256),
    (XFRM_MPX, 512 + 64 + 256 + 256),
    (XFRM_AVX512, 512 + 64 + 256 + 256 + 1600),
    (XFRM_PKRU, 512 + 64 + 256 + 256 + 1600 + 64),
    (XFRM_AMX, 512 + 64 + 256 + 256 + 1600 + 64 + 64 + 8192),
)


@dataclass(frozen=True)
class Attributes:
    flags: int
    xfrm: int
    mask_flags: int
    mask_xfrm: int
    metadata_xfrm: int  # unchecked features count as "possibly on"
    xsave_size: int

    @property
    def ssa_frame_size(self) -> int:
        return (self.xsave_size + SSA_GPR_SIZE + 0xFFF) // 0x1000


def css_attributes(c: EnclaveConfig, profile: SdkProfile) -> Attributes:
    flags, mask = 0, ~(FLAG_DEBUG | FLAGS_NON_CHECK_BITS) & MASK64
    if c["DisableDebug"] == 1:
        mask |= FLAG_DEBUG
    for name, bit in (("ProvisionKey", FLAG_PROVISION_KEY), ("LaunchKey", FLAG_EINITTOKEN_KEY),
                      ("EnableKSS", FLAG_KSS), ("EnableAEXNotify", FLAG_AEX_NOTIFY)):
        if c[name] == 1:
            flags |= bit
            mask |= bit
    flags |= FLAG_MODE64BIT
    mask |= FLAG_MODE64BIT
    xfrm, mask_xfrm = XFRM_LEGACY, XFRM_LEGACY | profile.xfrm_reserved
    if c["PKRU"] == 0:
        mask_xfrm |= XFRM_PKRU
    elif c["PKRU"] == 1:
        xfrm |= XFRM_PKRU
        mask_xfrm |= XFRM_PKRU
    else:
        mask_xfrm &= ~XFRM_PKRU
    if c["AMX"] == 1:
        xfrm |= XFRM_AMX
        mask_xfrm |= XFRM_AMX
    elif c["AMX"] == 2:
        mask_xfrm &= ~XFRM_AMX
    else:
        mask_xfrm |= XFRM_AMX
    metadata_xfrm = (~mask_xfrm & MASK64) | (xfrm & mask_xfrm)
    if metadata_xfrm & profile.xfrm_reserved:
        raise SignError("Error happened while signing the enclave.", "(reserved XFRM bits set)")
    xsave = 0
    for bits, size in _XSAVE_TABLE:
        if metadata_xfrm & bits == bits:
            xsave = size
    return Attributes(flags, xfrm, mask, mask_xfrm & MASK64, metadata_xfrm, xsave)


def bcd_date(epoch: int | None = None) -> int:
    """SIGSTRUCT date: the UTC day as BCD yyyymmdd (0x20240101)."""
    if epoch is None:
        day = _dt.datetime.now(_dt.timezone.utc)
    else:
        day = _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc)
    return int(f"{day.year:04d}{day.month:02d}{day.day:02d}", 16)


def date_from_environment() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else today like sgx_sign."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return bcd_date()
    try:
        return bcd_date(int(value))
    except (ValueError, OverflowError, OSError):
        raise SignError(f"SOURCE_DATE_EPOCH={value!r} is not a Unix timestamp") from None


def misc_fields(c: EnclaveConfig, profile: SdkProfile) -> tuple[int, int]:
    """(SIGSTRUCT misc_select, metadata desired_misc_select)."""
    select = c["MiscSelect"] & c["MiscMask"] if profile.css_misc_select_masked else c["MiscSelect"]
    desired = c["MiscSelect"] if profile.desired_misc_select_raw else 0
    return select, desired


def build_css(c: EnclaveConfig, profile: SdkProfile, attrs: Attributes, date: int) -> bytearray:
    """SIGSTRUCT with header and body filled in, except the enclave hash; no key yet."""
    css = bytearray(CSS_SIZE)
    css[0:12] = bytes([6, 0, 0, 0, 0xE1, 0, 0, 0, 0, 0, 1, 0])
    struct.pack_into("<III", css, 12, 0x80000000 if c["ReleaseType"] & 1 else 0,
                     0x8086 if c["IntelSigned"] & 1 else 0, date)
    css[24:40] = bytes([1, 1, 0, 0, 0x60, 0, 0, 0, 0x60, 0, 0, 0, 1, 0, 0, 0])
    struct.pack_into("<I", css, 40, c["HW"])
    select, _ = misc_fields(c, profile)
    struct.pack_into("<II", css, 900, select, c["MiscMask"])
    struct.pack_into("<QQ", css, 912, c["ISVFAMILYID_L"], c["ISVFAMILYID_H"])
    struct.pack_into("<QQQQ", css, 928, attrs.flags, attrs.xfrm, attrs.mask_flags, attrs.mask_xfrm)
    struct.pack_into("<QQ", css, 1008, c["ISVEXTPRODID_L"], c["ISVEXTPRODID_H"])
    struct.pack_into("<HH", css, 1024, c["ProdID"], c["ISVSVN"])
    return css


def signing_material(css: bytes | bytearray) -> bytes:
    """The 256 bytes that get signed (and that gendata writes): header || body."""
    return bytes(css[HEADER]) + bytes(css[BODY])


# ---------------------------------------------------------------------------------------
# Keys


def _check_rsa_3072_e3(public: rsa.RSAPublicKey, where: str) -> None:
    if not isinstance(public, rsa.RSAPublicKey):
        raise SignError("Key file format is not correct.", "(not an RSA key)", where=where)
    numbers = public.public_numbers()
    if numbers.n.bit_length() != 3072:
        raise SignError("The required key size must be 3072 bits.",
                        f"(this key has {numbers.n.bit_length()} bits)", where=where)
    if numbers.e != 3:
        raise SignError("The exponent of the input key is invalid. Only '3' is accepted as the exponent.",
                        f"(this key has e={numbers.e})", where=where)


def _passphrase(where: str) -> bytes:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        return value.encode()
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"Passphrase for {where}: ").encode()
    raise SignError(f"the private key is encrypted; set {PASSPHRASE_ENV} (or run on a terminal "
                    "to be asked for the passphrase)", where=where)


def load_private_key(pem: bytes | Path) -> rsa.RSAPrivateKey:
    """A PEM RSA-3072/e=3 private key (PKCS#1 or PKCS#8; encrypted ones need a passphrase)."""
    where = str(pem) if isinstance(pem, Path) else "signing key"
    data = _read(pem, where)
    password = None
    if b"ENCRYPTED" in data:
        password = _passphrase(where)
    try:
        # The signature is verified with the public key after signing, which also catches
        # an inconsistent key; skipping OpenSSL's slow RSA key check saves ~0.2 s.
        key = serialization.load_pem_private_key(
            data, password=password, unsafe_skip_rsa_key_validation=True
        )
    except TypeError as exc:
        raise SignError("Key file format is not correct.", f"({exc})", where=where) from None
    except ValueError as exc:
        detail = "(wrong passphrase?)" if password is not None else "(not a PEM private key)"
        raise SignError("Key file format is not correct.", detail, where=where) from exc
    except UnsupportedAlgorithm:
        raise SignError("Key file format is not correct.", "(an unknown key algorithm)",
                        where=where) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SignError("Key file format is not correct.", "(not an RSA private key)", where=where)
    _check_rsa_3072_e3(key.public_key(), where)
    return key


def load_public_key(pem: bytes | Path) -> rsa.RSAPublicKey:
    """A PEM SubjectPublicKeyInfo RSA-3072/e=3 key, as catsig wants it."""
    where = str(pem) if isinstance(pem, Path) else "public key"
    data = _read(pem, where)
    if b"-----BEGIN PUBLIC KEY-----" not in data:
        raise SignError("Key file format is not correct.",
                        "(catsig needs a PEM 'BEGIN PUBLIC KEY' (SubjectPublicKeyInfo) file)",
                        where=where)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignError("Key file format is not correct.", where=where) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignError("Key file format is not correct.", "(not an RSA public key)", where=where)
    _check_rsa_3072_e3(key, where)
    return key


def public_key_of(pem: bytes | Path) -> rsa.RSAPublicKey:
    """The public half of a PEM key file, whether it holds a private or a public key."""
    data = _read(pem, str(pem))
    if b"PRIVATE KEY" in data:
        return load_private_key(pem).public_key()
    return load_public_key(pem)


def _read(pem: bytes | Path, where: str) -> bytes:
    if isinstance(pem, Path):
        try:
            return pem.read_bytes()
        except OSError as exc:
            raise SignError(f'Failed to open file "{pem}".', f"({exc.strerror})", where=where) from None
    return pem


def modulus_le(public: rsa.RSAPublicKey) -> bytes:
    return public.public_numbers().n.to_bytes(KEY_SIZE, "big")[::-1]


def mrsigner_of(public: rsa.RSAPublicKey) -> bytes:
    """MRSIGNER = SHA-256 of the little-endian 384-byte modulus."""
    return hashlib.sha256(modulus_le(public)).digest()


def public_key_fingerprint(key_pem: Path | bytes) -> str:
    """MRSIGNER (hex) of a key file; safe to put in cache keys instead of the key itself."""
    return mrsigner_of(public_key_of(key_pem if isinstance(key_pem, bytes) else Path(key_pem))).hex()


# ---------------------------------------------------------------------------------------
# Signature


def _le(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")[-KEY_SIZE:]
    return raw[::-1].ljust(KEY_SIZE, b"\0")


def complete_css(css: bytearray, public: rsa.RSAPublicKey, signature_be: bytes) -> None:
    """Put key, signature, q1 and q2 into SIGSTRUCT, after checking the signature."""
    css[OFF_MODULUS : OFF_MODULUS + KEY_SIZE] = modulus_le(public)
    css[OFF_EXPONENT : OFF_EXPONENT + 4] = struct.pack("<I", public.public_numbers().e)
    if len(signature_be) != KEY_SIZE:
        raise SignError(f"The signature must be {KEY_SIZE} bytes, got {len(signature_be)}")
    try:
        public.verify(signature_be, signing_material(css), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignError("Error happened while signing the enclave.",
                        "(the signature does not verify with this public key and signing material)") from None
    css[OFF_SIGNATURE : OFF_SIGNATURE + KEY_SIZE] = signature_be[::-1]
    s = int.from_bytes(signature_be, "big")
    n = public.public_numbers().n
    q1 = s * s // n
    q2 = s * (s * s % n) // n
    css[OFF_Q1 : OFF_Q1 + KEY_SIZE] = _le(q1)
    css[OFF_Q2 : OFF_Q2 + KEY_SIZE] = _le(q2)


def sign_css(css: bytearray, key: rsa.RSAPrivateKey) -> None:
    signature = key.sign(signing_material(css), padding.PKCS1v15(), hashes.SHA256())
    complete_css(css, key.public_key(), signature)
