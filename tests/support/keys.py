"""Signing keys for tests: real RSA-3072 keys with exponent 3, as sgx_sign requires."""

from __future__ import annotations

from pathlib import Path


def write_signing_key(path: Path) -> Path:
    """A fresh enclave signing key in PEM at ``path``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=3, key_size=3072)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return path
