"""Pure-Python sgx_sign: byte-identical signing, measuring and inspection of SGX enclaves.

Public API (see :mod:`occlum_rules.stages.sign.signer`): ``sign_enclave``, ``gendata``,
``catsig``, ``read_signed_info``, ``public_key_fingerprint``; SDK profiles in
:mod:`occlum_rules.stages.sign.profiles`. Modules: ``enclave_xml`` (config parsing),
``elf_checks``, ``layout``, ``metadata``, ``measure`` (ECREATE/EADD/EEXTEND), ``sigstruct``,
``dump``. The names are imported on first use: loading BUILD files needs only a signing
key's fingerprint (``sigstruct``), not the signer and its ELF parsing. ``measure`` here is
the submodule; the function that measures a whole enclave is ``signer.measure`` (the package
used to export both under one name, and which one it held depended on import order).
"""

from typing import TYPE_CHECKING

from occlum_rules.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from occlum_rules.stages.sign.errors import SignError
    from occlum_rules.stages.sign.profiles import PROFILES, SdkProfile
    from occlum_rules.stages.sign.signer import (
        GendataResult,
        SignResult,
        catsig,
        gendata,
        read_signed_info,
        sign_enclave,
    )
    from occlum_rules.stages.sign.sigstruct import public_key_fingerprint

__getattr__ = lazy_exports(__name__, {
    "SignError": "errors", "PROFILES": "profiles", "SdkProfile": "profiles",
    "GendataResult": "signer", "SignResult": "signer", "catsig": "signer", "gendata": "signer",
    "read_signed_info": "signer", "sign_enclave": "signer",
    "public_key_fingerprint": "sigstruct",
})

__all__ = ["PROFILES", "GendataResult", "SdkProfile", "SignError", "SignResult", "catsig",
           "gendata", "public_key_fingerprint", "read_signed_info", "sign_enclave"]
