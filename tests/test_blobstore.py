"""The encrypted blob store: file names reveal nothing without the key (#11 finding 11)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from retroface.storage.blobstore import EncryptedBlobStore, content_hash
from retroface.storage.crypto import Cipher


def _store(root: Path, key: bytes | None = None) -> EncryptedBlobStore:
    return EncryptedBlobStore(root, Cipher(key or os.urandom(32)))


def test_names_do_not_confirm_a_known_image(tmp_path: Path, data_dir: Path) -> None:
    """Before: files were named by the image's SHA-256, so anyone with the files (no key) could
    check whether a known photo is stored by hashing it."""
    data = (data_dir / "people/joe_biden/biden.jpg").read_bytes()
    store = _store(tmp_path / "a")
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()  # the evidence hash is unchanged
    names = {p.name for p in (tmp_path / "a").rglob("*.enc")}
    assert len(names) == 1 and not any(digest in n for n in names)
    assert data not in next((tmp_path / "a").rglob("*.enc")).read_bytes()  # encrypted too
    assert store.get(digest) == data
    # another key gives other names: the name is no fingerprint across installations
    other = _store(tmp_path / "b")
    other.put(data)
    assert {p.name for p in (tmp_path / "b").rglob("*.enc")} != names


def test_legacy_names_still_read_and_are_renamed(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = _store(tmp_path, key)
    data = b"an image from an older version"
    digest = content_hash(data)
    legacy = tmp_path / digest[:2] / digest[2:4] / f"{digest}.enc"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(Cipher(key).encrypt(data, aad=digest.encode()))
    assert store.exists(digest) and store.get(digest) == data
    assert not legacy.exists() and store.path_for(digest).exists()
    assert store.delete(digest) and not store.exists(digest)


def test_orphans_found_by_name(tmp_path: Path) -> None:
    store = _store(tmp_path)
    kept, orphan = store.put(b"referenced"), store.put(b"orphan")
    stored = set(store.names())
    assert stored - store.names_of([kept]) == {store.name_for(orphan)}
    assert store.delete_name(store.name_for(orphan)) and not store.exists(orphan)
    assert store.exists(kept)
