"""The encrypted blob store: file names reveal nothing without the key (#11 finding 11)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

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


def test_cleanup_spares_another_process_write_in_flight(tmp_path: Path) -> None:
    """An enrolment run clears temp files a crash left behind; it must not delete the temp file
    another process (the API server, another worker) is writing right now: that write's rename
    then failed and the probe upload answered 500 (found by bench/pg_load.py, 8 enrolment
    workers beside the server on one data directory)."""
    store = _store(tmp_path)
    folder = tmp_path / "ab" / "cd"
    folder.mkdir(parents=True)
    in_flight = folder / ".tmp-live.part"
    in_flight.write_bytes(b"being written")
    crashed = folder / ".tmp-old.part"
    crashed.write_bytes(b"left by a crash")
    old = os.stat(crashed).st_mtime - 2 * 3600
    os.utime(crashed, (old, old))
    assert store.remove_partials() == 1
    assert in_flight.exists() and not crashed.exists()


def test_cleanup_removes_what_a_dead_writer_left(tmp_path: Path) -> None:
    """A temp file named for a process of this host that no longer runs (killed mid-write) goes
    at once; one of a live process stays."""
    import subprocess
    import sys

    from retroface.storage import files

    store = _store(tmp_path)
    folder = tmp_path / "ab" / "cd"
    folder.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    host = files._WRITER.partition("@")[2]
    left = folder / f".tmp-{dead.stdout.strip()}@{host}~x1.part"
    left.write_bytes(b"left by a killed writer")
    live = folder / f".tmp-{os.getppid()}@{host}~x2.part"
    live.write_bytes(b"a live process's write")
    assert store.remove_partials() == 1
    assert live.exists() and not left.exists()


def test_enrolment_sweeps_partials_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sweep_partials`` (what an enrolment run calls) sweeps the first time, then not again
    within ``PARTIALS_SWEEP_INTERVAL`` (a server's every request would list 65,536 folders at
    1M images), and again once the interval has passed."""
    from retroface.storage import blobstore

    store = _store(tmp_path)
    folder = tmp_path / "ab" / "cd"
    folder.mkdir(parents=True)
    old = time.time() - 2 * 3600

    def crash_leftover(name: str) -> Path:
        left = folder / f".tmp-{name}.part"
        left.write_bytes(b"left by a crash")
        os.utime(left, (old, old))
        return left

    first = crash_leftover("a")
    assert store.sweep_partials() == 1 and not first.exists()
    second = crash_leftover("b")
    assert store.sweep_partials() == 0 and second.exists()  # swept a moment ago
    monkeypatch.setattr(blobstore, "PARTIALS_SWEEP_INTERVAL", 0.0)
    assert store.sweep_partials() == 1 and not second.exists()
