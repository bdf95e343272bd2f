"""SDK profiles: the few constants in which sgx_sign versions differ.

sgx_sign refuses an enclave whose ``g_global_data.sdk_version`` differs from its own
version, and the metadata container, the global-data size and some MiscSelect handling
changed between SDK releases. Since MRENCLAVE depends on those (the TCS template's
metadata offset and the global data are measured), a byte-exact signer must pick the
profile matching the SDK the enclave was built with. We pick it from the ELF itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from occlum_rules.stages.sign.errors import SignError

# Enclave.xml elements every profile knows, in sgx_sign's table order.
BASE_ELEMENTS: tuple[str, ...] = (
    "ProdID", "ISVSVN", "ReleaseType", "IntelSigned", "ProvisionKey", "LaunchKey",
    "DisableDebug", "HW", "TCSNum", "TCSMaxNum", "TCSMinPool", "TCSPolicy",
    "StackMaxSize", "StackMinSize", "HeapMaxSize", "HeapMinSize", "HeapInitSize",
    "ReservedMemMaxSize", "ReservedMemMinSize", "ReservedMemInitSize",
    "ReservedMemExecutable", "MiscSelect", "MiscMask", "EnableKSS", "ISVFAMILYID_H",
    "ISVFAMILYID_L", "ISVEXTPRODID_H", "ISVEXTPRODID_L", "EnclaveImageAddress",
    "ELRangeStartAddress", "ELRangeSize", "PKRU", "AMX", "UserRegionSize", "EnableAEXNotify",
)
FIPS_ELEMENTS: tuple[str, ...] = ("EnableIPPFIPS", "EnableOSSLFIPS")

XFRM_LEGACY = 0x3
XFRM_AVX = 0x6
XFRM_AVX512 = 0xE6
XFRM_MPX = 0x18
XFRM_PKRU = 0x200
XFRM_AMX = 0x60000
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SdkProfile:
    """Everything that differs between the sgx_sign builds we reproduce."""

    name: str
    version: tuple[int, int, int]  # major, minor, revision of the SDK
    metadata_size: int  # bytes written into .note.sgxmeta (its descsz)
    dir_count: int  # data directories in the metadata header
    sgx2_version: tuple[int, int]  # metadata version of the main (SGX2-capable) blob
    sgx1_version: tuple[int, int]  # metadata version of the compatible SGX1 blob
    gd_size: int  # sizeof(global_data_t)
    gd_elrange_size_is_enclave_size: bool  # gd.elrange_size without ELRANGE
    css_misc_select_masked: bool  # SIGSTRUCT misc_select = MiscSelect & MiscMask
    desired_misc_select_raw: bool  # metadata.desired_misc_select = MiscSelect (else 0)
    mpx_reserved: bool  # MPX bits count as reserved XFRM bits
    compat_blob_for_sgx2_only: bool  # Occlum patch: append the SGX1 blob even then
    shared_dynamic_info: bool  # one INFO message for both dynamic outcomes (2.20)
    fips_elements: bool  # EnableIPPFIPS/EnableOSSLFIPS are known elements

    @property
    def sdk_version_word(self) -> int:
        major, minor, rev = self.version
        return (major << 32) | (minor << 16) | rev

    @property
    def version_string(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def data_offset(self) -> int:
        """Where bump allocation starts: after the header, SIGSTRUCT and directories."""
        return 64 + 1808 + 8 * self.dir_count

    @property
    def xfrm_reserved(self) -> int:
        known = XFRM_LEGACY | XFRM_AVX | XFRM_AVX512 | XFRM_PKRU | XFRM_AMX
        if not self.mpx_reserved:
            known |= XFRM_MPX
        return ~known & MASK64

    @property
    def elements(self) -> tuple[str, ...]:
        return BASE_ELEMENTS + (FIPS_ELEMENTS if self.fips_elements else ())


INTEL_2_26 = SdkProfile(
    name="intel-2.26", version=(2, 26, 100), metadata_size=0x6000, dir_count=4,
    sgx2_version=(3, 3), sgx1_version=(1, 5), gd_size=1768,
    gd_elrange_size_is_enclave_size=False, css_misc_select_masked=True,
    desired_misc_select_raw=True, mpx_reserved=True, compat_blob_for_sgx2_only=False,
    shared_dynamic_info=False, fips_elements=True,
)
OCCLUM_2_20 = SdkProfile(
    name="occlum-2.20", version=(2, 20, 100), metadata_size=0x5000, dir_count=2,
    sgx2_version=(3, 0), sgx1_version=(1, 4), gd_size=1760,
    gd_elrange_size_is_enclave_size=True, css_misc_select_masked=False,
    desired_misc_select_raw=False, mpx_reserved=False, compat_blob_for_sgx2_only=True,
    shared_dynamic_info=True, fips_elements=False,
)
# Predicted from the 2.20 fork: Intel's 2.20 -> 2.21 diff only touches the version number
# among the sign tool's inputs (see vectors/sign-occlum/predicted_2.21).
OCCLUM_2_21 = SdkProfile(
    **{**OCCLUM_2_20.__dict__, "name": "occlum-2.21", "version": (2, 21, 100)}
)

PROFILES: dict[str, SdkProfile] = {p.name: p for p in (INTEL_2_26, OCCLUM_2_20, OCCLUM_2_21)}


def _describe(word: int) -> str:
    return f"{word >> 32}.{(word >> 16) & 0xFFFF}.{word & 0xFFFF}"


def profile_for_sdk_version(word: int, where: str | None = None) -> SdkProfile:
    """The profile whose sgx_sign would accept an enclave carrying this sdk_version word."""
    for profile in PROFILES.values():
        if profile.sdk_version_word == word:
            return profile
    supported = ", ".join(
        f"{p.version_string} ({p.name})" for p in PROFILES.values()
    )
    raise SignError(
        f"g_global_data.sdk_version is {_describe(word)} (0x{word:016x}); "
        f"no SDK profile for it. Supported SDK versions: {supported}",
        where=where,
    )


def profile_by_name(name: str) -> SdkProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise SignError(f"unknown SDK profile {name!r}; known: {', '.join(PROFILES)}") from None
