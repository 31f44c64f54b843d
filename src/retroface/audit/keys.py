"""The Ed25519 key that signs audit checkpoints: a PEM file created on first use, mode 0600.

The key lives outside the database on purpose: someone who can rewrite the audit tables but not
read this file cannot forge a checkpoint. Keep a copy of the *public* key (or the head hash printed
by ``verify``) somewhere else too; anyone holding the private key can re-sign a rewritten log.
"""

from __future__ import annotations

import os
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

from retroface.errors import RetrofaceError

_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the key at ``path``, creating it (0600, folder 0700) if absent; refuse a lax mode."""
    if not path.exists():
        _create(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise RetrofaceError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise RetrofaceError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RetrofaceError(f"{path} is not an Ed25519 key")
    return key


def _create(path: Path) -> None:
    """Write to a temporary file and hard-link it into place: no reader sees a half-written key,
    and when two processes race, the first one's key wins and the other's is discarded."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


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
