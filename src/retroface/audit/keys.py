"""The Ed25519 key that signs audit checkpoints: a PEM file created on first use, mode 0600.

The key lives outside the database on purpose: someone who can rewrite the audit tables but not
read this file cannot forge a checkpoint. Keep a copy of the *public* key (or the head hash printed
by ``verify``) somewhere else too; anyone holding the private key can re-sign a rewritten log.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from retroface.core.errors import RetrofaceError
from retroface.storage.files import create_private_file, require_private

_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the key at ``path``, creating it (0600, folder 0700) if absent; refuse a lax mode."""
    if not path.exists():
        _create(path)
    require_private(path)
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise RetrofaceError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RetrofaceError(f"{path} is not an Ed25519 key")
    return key


def _create(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    create_private_file(path, pem)


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_keys(data: str | bytes) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM bundle (several keys survive a key rotation)."""
    text = data.decode() if isinstance(data, bytes) else data
    keys: list[Ed25519PublicKey] = []
    for block in text.split(_PEM_BEGIN)[1:]:
        try:
            key = load_pem_public_key((_PEM_BEGIN + block).encode())
        except ValueError:
            raise RetrofaceError("malformed public key in PEM bundle") from None
        if not isinstance(key, Ed25519PublicKey):
            raise RetrofaceError("PEM bundle holds a key that is not Ed25519")
        keys.append(key)
    return keys
