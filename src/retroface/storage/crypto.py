"""Encryption at rest for biometric data (images and templates): AES-256-GCM.

The data key comes from ``RETROFACE_DATA_KEY`` (base64 of 32 bytes) or from ``keys/data.key``
under the data directory, created on first use with mode 0600. Losing the key loses the gallery;
see docs/security.md for key handling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from retroface.core.errors import RetrofaceError
from retroface.storage.files import create_private_file, require_private

NONCE_BYTES = 12
MAGIC = b"RFE1"  # format marker, so a plaintext file is never mistaken for ciphertext


class DecryptionError(RetrofaceError):
    code = "decryption_failed"


def load_or_create_key(home: Path, env_value: str | None = None) -> bytes:
    """The 32-byte data key: from the environment if set, else the key file (created if absent)."""
    if env_value:
        try:
            key = base64.b64decode(env_value, validate=True)
        except (binascii.Error, ValueError):
            raise RetrofaceError("RETROFACE_DATA_KEY is not valid base64") from None
        if len(key) != 32:
            raise RetrofaceError("RETROFACE_DATA_KEY must decode to 32 bytes (AES-256)")
        return key
    path = home / "keys" / "data.key"
    if not path.exists():  # first run; if another process races us, its key wins
        create_private_file(path, base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")
    require_private(path)
    key = base64.b64decode(path.read_bytes().strip())
    if len(key) != 32:
        raise RetrofaceError(f"{path} does not hold a 32-byte key")
    return key


class Cipher:
    """AES-256-GCM with a random nonce per message; ``aad`` binds ciphertext to its context."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        # A separate key for naming files, derived so that names reveal nothing without the key.
        self._name_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"retroface blob names v1"
        ).derive(key)

    def keyed_name(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` under a key derived from the data key, as hex.

        Blob files are named this way rather than by the plaintext's SHA-256: with the files
        alone, nobody can confirm that a known image is stored.
        """
        return hmac.new(self._name_key, value.encode(), hashlib.sha256).hexdigest()

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, aad or None)

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        if not blob.startswith(MAGIC):
            raise DecryptionError("data is not in retroface's encrypted format")
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], aad or None)
        except InvalidTag:
            raise DecryptionError(
                "decryption failed: wrong data key or the data was altered"
            ) from None


def template_aad(content_hash: str, model_key: str) -> bytes:
    """Associated data binding an encrypted template to its image and model: a template copied
    onto another row fails to decrypt."""
    return f"template:{content_hash}:{model_key}".encode()
