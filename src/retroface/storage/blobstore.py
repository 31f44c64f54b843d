"""Content-addressed, encrypted file store for images (reference images, probes, thumbnails).

Files are named by the SHA-256 of their plaintext, so the same image is stored once, and written
atomically (temp file, fsync, rename) so a crash never leaves a half-written file under a real name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from retroface.core.errors import NotFoundError
from retroface.storage.crypto import Cipher
from retroface.storage.files import atomic_write


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EncryptedBlobStore:
    def __init__(self, root: Path, cipher: Cipher) -> None:
        self.root = root
        self.cipher = cipher
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:4] / f"{digest}.enc"

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its content hash; storing existing content is a no-op."""
        digest = content_hash(data)
        path = self.path_for(digest)
        if path.exists():
            return digest
        atomic_write(path, self.cipher.encrypt(data, aad=digest.encode()))
        return digest

    def get(self, digest: str) -> bytes:
        path = self.path_for(digest)
        if not path.exists():
            raise NotFoundError(f"image {digest[:12]}… is not in the store")
        return self.cipher.decrypt(path.read_bytes(), aad=digest.encode())

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).exists()

    def delete(self, digest: str) -> bool:
        path = self.path_for(digest)
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False

    def digests(self) -> Iterator[str]:
        for p in self.root.glob("*/*/*.enc"):
            yield p.name[: -len(".enc")]

    def remove_partials(self) -> int:
        """Delete temp files a crash left behind."""
        n = 0
        for p in self.root.glob("*/*/.tmp-*.part"):
            p.unlink(missing_ok=True)
            n += 1
        return n
