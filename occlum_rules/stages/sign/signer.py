"""Sign, measure and inspect SGX enclaves like sgx_sign: the API the build integration calls.

The pipeline is sgx_sign's: parse the ELF, pick the SDK profile from its
``g_global_data.sdk_version``, parse Enclave.xml, build the metadata, measure the patched
image (MRENCLAVE), fill and sign SIGSTRUCT, derive the compatible metadata and write the
input file back out with only the metadata blob in ``.note.sgxmeta`` changed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import occlum_rules.stages.sign.measure as M
from occlum_rules.atomic_write import write_atomic
from occlum_rules.stages.sign.elf_checks import EnclaveElf, parse_enclave_elf
from occlum_rules.stages.sign.enclave_xml import EnclaveConfig, parse_enclave_xml
from occlum_rules.stages.sign.errors import SignError
from occlum_rules.stages.sign.metadata import (
    MAGIC,
    MetadataPlan,
    final_metadata,
    plan_metadata,
    read_metadata_area,
)
from occlum_rules.stages.sign.profiles import SdkProfile, profile_by_name, profile_for_sdk_version
from occlum_rules.stages.sign.sigstruct import (
    BODY,
    HEADER,
    OFF_HASH,
    bcd_date,
    build_css,
    complete_css,
    date_from_environment,
    load_private_key,
    load_public_key,
    public_key_fingerprint,
    sign_css,
    signing_material,
)

SIGNING_MATERIAL_SIZE = 256
SIGNATURE_SIZE = 384
GREEN, RESET = "\033[0;32m", "\033[0m"


@dataclass
class Measured:
    """An enclave measured under a config: everything before the key is involved."""

    elf: EnclaveElf
    config: EnclaveConfig
    plan: MetadataPlan
    mrenclave: bytes
    required_memory: int
    log: list[str] = field(default_factory=list)  # sgx_sign's stderr lines so far

    @property
    def profile(self) -> SdkProfile:
        return self.plan.profile


@dataclass
class SignResult:
    mrenclave: bytes
    mrsigner: bytes
    profile: str
    sigstruct: bytes  # the 1808-byte SIGSTRUCT
    metadata: bytes  # the METADATA_SIZE bytes written into .note.sgxmeta
    required_memory: int
    log: list[str]  # what sgx_sign would print on stderr, line by line

    @property
    def mrenclave_hex(self) -> str:
        return self.mrenclave.hex()

    @property
    def mrsigner_hex(self) -> str:
        return self.mrsigner.hex()


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SignError(f'Failed to open file "{path}".', f"({exc.strerror})", where=what) from None


def _config_bytes(config_xml: Path | bytes | str | None) -> tuple[bytes | None, str | None]:
    if config_xml is None:
        return None, None
    if isinstance(config_xml, bytes | bytearray):
        return bytes(config_xml), "Enclave.xml"
    path = Path(config_xml)
    if not path.exists():
        raise SignError(f'Configuration file "{path}" is not found.', where=str(path))
    return _read_bytes(path, str(path)), str(path)


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def measure_enclave(enclave: Path | bytes, config_xml: Path | bytes | str | None, *,
                    profile: str | None = None, resign: bool = False,
                    ignore_rel_error: bool = False, ignore_init_sec_error: bool = False) -> Measured:
    """Parse, check and measure; the common first half of sign/gendata/catsig/measure."""
    data = enclave if isinstance(enclave, bytes) else _read_bytes(Path(enclave), str(enclave))
    where = None if isinstance(enclave, bytes) else str(enclave)
    elf = parse_enclave_elf(data)
    if elf.has_init and not ignore_init_sec_error:
        raise SignError("The enclave image has .init section.", where=where)
    word = elf.sdk_version_word()
    if profile is None:
        chosen = profile_for_sdk_version(word, where)
    else:
        chosen = profile_by_name(profile)
        if word != chosen.sdk_version_word:
            raise SignError("SDK version is not correct. The same SDK should be used for "
                            "enclave building and signing.",
                            f"(the enclave has 0x{word:016x}, profile {chosen.name} signs "
                            f"0x{chosen.sdk_version_word:016x})", where=where)
    if elf.meta_block_size != chosen.metadata_size:
        raise SignError("The input enclave file is not correct.",
                        f"(.note.sgxmeta holds {elf.meta_block_size:#x} bytes of metadata; SDK "
                        f"{chosen.version_string} writes {chosen.metadata_size:#x})", where=where)
    xml, xml_where = _config_bytes(config_xml)
    config = parse_enclave_xml(xml, chosen, xml_where)
    log = [f"tcs_num {_signed32(config['TCSNum'])}, tcs_max_num {_signed32(config.tcs_max_num)}, "
           f"tcs_min_pool {_signed32(config['TCSMinPool'])}"]
    try:
        plan = plan_metadata(config, elf, chosen)
        log.append(GREEN + plan.info)
        magic = struct.unpack_from("<Q", data, elf.meta_offset)[0]
        if magic == MAGIC and not resign:
            raise SignError("The enclave has been signed already.", where=where)
        if elf.textrel_offsets:
            warnings = [f"warning: TEXTRELs found at offset: {off:#x}" for off in elf.textrel_offsets]
            if not ignore_rel_error:
                raise SignError(*warnings, "The enclave image has text relocations.", where=where)
            log += warnings
    except SignError as exc:
        exc.log_before = log  # what sgx_sign printed before failing (the drop-in CLI shows it)
        raise
    image = plan.patched_image(data)
    digest, required = M.mrenclave(image, elf, plan.layout.items, bytes(plan.blob),
                                   plan.attributes.ssa_frame_size, plan.layout.enclave_size)
    log.append(f"{RESET}The required memory is {required}B.")
    log.append(f"The required memory is {required:#x}, {required // 1024} KB.")
    return Measured(elf, config, plan, digest, required, log)


def _css_for(m: Measured, date: int) -> bytearray:
    css = build_css(m.config, m.profile, m.plan.attributes, date)
    css[OFF_HASH : OFF_HASH + 32] = m.mrenclave
    return css


def _finish(m: Measured, css: bytearray, out: Path | None) -> SignResult:
    area, message = final_metadata(m.plan, bytes(css))
    log = m.log + ([message] if message else []) + ["Succeed."]
    if out is not None:
        signed = bytearray(m.elf.data)
        signed[m.elf.meta_offset : m.elf.meta_offset + len(area)] = area
        write_output(Path(out), bytes(signed))
    mrsigner = hashlib.sha256(bytes(css[128:512])).digest()
    return SignResult(m.mrenclave, mrsigner, m.profile.name, bytes(css), area,
                      m.required_memory, log)


def _date(date: int | None) -> int:
    """``date`` is a Unix timestamp (like SOURCE_DATE_EPOCH); None = environment/today."""
    return date_from_environment() if date is None else bcd_date(date)


def sign_enclave(enclave: Path, config_xml: Path | bytes | None, key_pem: Path | bytes,
                 out: Path | None, *, date: int | None = None, profile: str | None = None,
                 resign: bool = False, ignore_rel_error: bool = False,
                 ignore_init_sec_error: bool = False) -> SignResult:
    """One-step signing, byte-identical to ``sgx_sign sign``.

    ``date`` is a Unix timestamp for SIGSTRUCT's date (None: SOURCE_DATE_EPOCH, else today).
    ``out`` None computes everything without writing a file.
    """
    key = load_private_key(key_pem if isinstance(key_pem, bytes) else Path(key_pem))
    m = measure_enclave(enclave, config_xml, profile=profile, resign=resign,
                        ignore_rel_error=ignore_rel_error, ignore_init_sec_error=ignore_init_sec_error)
    css = _css_for(m, _date(date))
    sign_css(css, key)
    return _finish(m, css, out)


@dataclass
class GendataResult:
    material: bytes  # 256 bytes: SIGSTRUCT header || body, to be signed externally
    mrenclave: bytes
    profile: str
    log: list[str]


def gendata(enclave: Path, config_xml: Path | bytes | None, out: Path | None, *,
            date: int | None = None, profile: str | None = None, resign: bool = False,
            ignore_rel_error: bool = False, ignore_init_sec_error: bool = False) -> GendataResult:
    """The 256-byte signing material (SIGSTRUCT header || body) of ``sgx_sign gendata``.

    Sign it with e.g. ``openssl dgst -sha256 -sign key.pem`` and pass the 384-byte result
    to :func:`catsig`.
    """
    m = measure_enclave(enclave, config_xml, profile=profile, resign=resign,
                        ignore_rel_error=ignore_rel_error, ignore_init_sec_error=ignore_init_sec_error)
    material = signing_material(_css_for(m, _date(date)))
    if out is not None:
        write_output(Path(out), material)
    return GendataResult(material, m.mrenclave, m.profile.name, m.log + ["Succeed."])


def catsig(enclave: Path, config_xml: Path | bytes | None, public_key_pem: Path | bytes,
           signature: Path | bytes, material: Path | bytes, out: Path | None, *,
           profile: str | None = None, resign: bool = False, ignore_rel_error: bool = False,
           ignore_init_sec_error: bool = False) -> SignResult:
    """Attach an externally made signature (``sgx_sign catsig``).

    The date comes from the signing material; everything else is rebuilt from the enclave
    and config and must match the material byte for byte.
    """
    public = load_public_key(public_key_pem if isinstance(public_key_pem, bytes) else Path(public_key_pem))
    m = measure_enclave(enclave, config_xml, profile=profile, resign=resign,
                        ignore_rel_error=ignore_rel_error, ignore_init_sec_error=ignore_init_sec_error)
    mat = material if isinstance(material, bytes) else _read_bytes(Path(material), str(material))
    if len(mat) != SIGNING_MATERIAL_SIZE:
        raise SignError(f'The unsigned file "{material if not isinstance(material, bytes) else "material"}" is not correct.')
    (date,) = struct.unpack_from("<I", mat, 20)
    css = _css_for(m, date)
    if signing_material(css) != mat:
        raise SignError("The unsigned file content doesn't match the configuration file (if "
                        "provided) or the internal configuration defaults.")
    sig = signature if isinstance(signature, bytes) else _read_bytes(Path(signature), str(signature))
    if len(sig) != SIGNATURE_SIZE:
        raise SignError(f'The signature file "{signature if not isinstance(signature, bytes) else "signature"}" is not correct.')
    complete_css(css, public, sig)
    return _finish(m, css, out)


def measure(enclave: Path | bytes, config_xml: Path | bytes | None, *, profile: str | None = None) -> bytes:
    """MRENCLAVE of an unsigned enclave under a config; no key needed."""
    return measure_enclave(enclave, config_xml, profile=profile, resign=True,
                           ignore_rel_error=True, ignore_init_sec_error=True).mrenclave


def metadata_area(enclave: Path | bytes) -> tuple[bytes, EnclaveElf]:
    data = enclave if isinstance(enclave, bytes) else _read_bytes(Path(enclave), str(enclave))
    elf = parse_enclave_elf(data)
    return data[elf.meta_offset : elf.meta_offset + elf.meta_block_size], elf


def read_signed_info(signed_so: Path | bytes) -> dict:
    """Identity of a signed enclave, read from its SIGSTRUCT (no key, no config needed)."""
    area, _ = metadata_area(signed_so)
    blobs = read_metadata_area(area)
    if not blobs:
        raise SignError("the enclave is not signed (no metadata in .note.sgxmeta)",
                        where=None if isinstance(signed_so, bytes) else str(signed_so))
    css = blobs[0].css
    flags, xfrm, mask_flags, mask_xfrm = struct.unpack_from("<QQQQ", css, 928)
    misc_select, misc_mask = struct.unpack_from("<II", css, 900)
    prod_id, svn = struct.unpack_from("<HH", css, 1024)
    (date,) = struct.unpack_from("<I", css, 20)
    return {
        "mrenclave": css[OFF_HASH : OFF_HASH + 32].hex(),
        "mrsigner": hashlib.sha256(css[128:512]).hexdigest(),
        "attributes": {"flags": flags, "xfrm": xfrm},
        "attribute_mask": {"flags": mask_flags, "xfrm": mask_xfrm},
        "misc_select": misc_select,
        "misc_mask": misc_mask,
        "isv_prod_id": prod_id,
        "isv_svn": svn,
        "date": f"{date:08x}",
        "debug_allowed": not mask_flags & 0x2,
        "metadata_versions": [f"{b.version >> 32}.{b.version & 0xFFFFFFFF}" for b in blobs],
    }


OUTPUT_MODE = 0o644


def write_output(path: Path, data: bytes) -> None:
    """Signer outputs (signed enclave, material, dumps) are 0644 whatever the umask, as
    sgx_sign leaves them."""
    write_atomic(path, data, mode=OUTPUT_MODE)


# header/body slices are part of this module's vocabulary for callers comparing material
__all__ = ["BODY", "HEADER", "GendataResult", "Measured", "SignResult", "catsig", "gendata", "measure",
           "measure_enclave", "public_key_fingerprint", "read_signed_info", "sign_enclave",
           "write_output"]
