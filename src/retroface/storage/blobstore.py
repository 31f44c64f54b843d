"""Content-addressed, encrypted file store for images (reference images, probes, thumbnails).

An image is addressed by the SHA-256 of its plaintext (its ``content_hash``, recorded with every
probe and reference image as evidence), so the same image is stored once. The *file name* is not
that hash but a keyed HMAC of it (:meth:`Cipher.keyed_name`): someone holding the files without
the data key cannot confirm that a known image is stored. Files are written atomically (temp
file, fsync, rename), so a crash never leaves a half-written file under a real name.

Stores written before keyed names (files named by the plain hash) keep working: a file found
under its legacy name is renamed on first access, and deletion removes either name.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from retroface.core.errors import NotFoundError
from retroface.storage.crypto import Cipher
from retroface.storage.files import atomic_write, writer_gone


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: A temp file older than this is a crash's leftover, not a write in progress (a write takes
#: milliseconds; an hour leaves room for a stalled disk).
PARTIAL_GRACE_SECONDS = 3600.0
#: :meth:`EncryptedBlobStore.sweep_partials` sweeps at most this often per store object. The sweep
#: lists every fan-out folder: 65,536 of them once a gallery holds ~1M images, 1.0-1.6 s of CPU
#: (2.8-40 s wall, cache cold or warm, at load 11) measured on such a tree here, which an
#: enrolment request of a server (one image: 0.3-0.6 s in all, bench/server_1m.py) must not pay
#: every time. Leftovers are rare (a crash between write and rename) and harmless meanwhile.
PARTIALS_SWEEP_INTERVAL = 600.0


class EncryptedBlobStore:
    def __init__(self, root: Path, cipher: Cipher) -> None:
        self.root = root
        self.cipher = cipher
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._swept: float | None = None  # time.monotonic() of the last sweep_partials

    def name_for(self, digest: str) -> str:
        """The file name of the image whose content hash is ``digest``."""
        return self.cipher.keyed_name(digest)

    def _path(self, name: str) -> Path:
        return self.root / name[:2] / name[2:4] / f"{name}.enc"

    def path_for(self, digest: str) -> Path:
        return self._path(self.name_for(digest))

    def _find(self, digest: str) -> Path | None:
        """The file of ``digest``, renaming one stored under its legacy (plain-hash) name."""
        path = self.path_for(digest)
        if path.exists():
            return path
        legacy = self._path(digest)
        if legacy.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            legacy.replace(path)
            return path
        return None

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its content hash; storing existing content is a no-op."""
        digest = content_hash(data)
        if self._find(digest) is None:
            atomic_write(self.path_for(digest), self.cipher.encrypt(data, aad=digest.encode()))
        return digest

    def get(self, digest: str) -> bytes:
        path = self._find(digest)
        if path is None:
            raise NotFoundError(f"image {digest[:12]}… is not in the store")
        return self.cipher.decrypt(path.read_bytes(), aad=digest.encode())

    def exists(self, digest: str) -> bool:
        return self._find(digest) is not None

    def delete(self, digest: str) -> bool:
        removed = False
        for path in (self.path_for(digest), self._path(digest)):
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
        return removed

    def names(self) -> Iterator[str]:
        """The names of every stored file (keyed or legacy); compare with :meth:`names_of`."""
        for p in self.root.glob("*/*/*.enc"):
            yield p.name[: -len(".enc")]

    def names_of(self, digests: Iterable[str]) -> set[str]:
        """Every name under which the given images may be stored (keyed and legacy)."""
        return {n for d in digests for n in (self.name_for(d), d)}

    def delete_name(self, name: str) -> bool:
        """Delete a file by name (an orphan found by :meth:`names`)."""
        try:
            self._path(name).unlink()
            return True
        except FileNotFoundError:
            return False

    def sweep_partials(self) -> int:
        """:meth:`remove_partials`, unless this store object swept in the last
        ``PARTIALS_SWEEP_INTERVAL`` seconds: a CLI run sweeps once, a server at most every ten
        minutes instead of on every enrolment request."""
        now = time.monotonic()
        if self._swept is not None and now - self._swept < PARTIALS_SWEEP_INTERVAL:
            return 0
        self._swept = now
        return self.remove_partials()

    def remove_partials(self, older_than: float = PARTIAL_GRACE_SECONDS) -> int:
        """Delete temp files a crash left behind: those whose writer (a process of this host) is
        gone, and any untouched for ``older_than`` seconds.

        Others may be writes in flight in another process on the same store (the API server,
        other enrolment workers): deleting one made that write's rename fail.
        """
        n = 0
        cutoff = time.time() - older_than
        for p in self.root.glob("*/*/.tmp-*.part"):
            try:
                if not writer_gone(p) and p.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:  # its write finished meanwhile
                continue
            p.unlink(missing_ok=True)
            n += 1
        return n
