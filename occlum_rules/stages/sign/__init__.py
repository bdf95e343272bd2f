"""Pure-Python sgx_sign: byte-identical signing, measuring and inspection of SGX enclaves.

Public API (see :mod:`occlum_rules.stages.sign.signer`): ``sign_enclave``, ``gendata``,
``catsig``, ``measure``, ``read_signed_info``, ``public_key_fingerprint``; SDK profiles in
:mod:`occlum_rules.stages.sign.profiles`. Modules: ``enclave_xml`` (config parsing),
``elf_checks``, ``layout``, ``metadata``, ``measure`` (ECREATE/EADD/EEXTEND), ``sigstruct``,
``dump``.
"""

from occlum_rules.stages.sign.errors import SignError
from occlum_rules.stages.sign.profiles import PROFILES, SdkProfile
from occlum_rules.stages.sign.signer import (
    GendataResult,
    SignResult,
    catsig,
    gendata,
    measure,
    public_key_fingerprint,
    read_signed_info,
    sign_enclave,
)

__all__ = ["PROFILES", "GendataResult", "SdkProfile", "SignError", "SignResult", "catsig",
           "gendata", "measure", "public_key_fingerprint", "read_signed_info", "sign_enclave"]
