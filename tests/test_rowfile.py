"""Encrypted row files: round trip, random access, and refusal of altered, moved or cut files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retroface.storage.crypto import Cipher, DecryptionError
from retroface.storage.rowfile import _HEADER, RowFile, write_rows

KEY = bytes(range(32))


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_round_trip_random_access_and_blocks(tmp_path: Path) -> None:
    cipher = Cipher(KEY)
    v = _vectors(1003)
    path = tmp_path / "a.rows"
    # uneven input blocks are re-cut into chunks
    n = write_rows(path, cipher, [v[:5], v[5:700], v[700:]], dim=16, context=b"m1", chunk_rows=8)
    assert n == 1003
    with RowFile(path, cipher, context=b"m1") as rf:
        assert (rf.rows, rf.dim, rf.chunks) == (1003, 16, 126)
        np.testing.assert_array_equal(rf.read_all(), v)
        pos = np.array([1002, 0, 7, 8, 500, 7, 999])
        np.testing.assert_array_equal(rf.take(pos), v[pos])
        assert sum(len(b) for b in rf.blocks(block_rows=64)) == 1003
        with pytest.raises(IndexError):
            rf.take(np.array([1003]))
    assert not list(tmp_path.glob("*.part"))
    assert path.stat().st_mode & 0o077 == 0  # private, like the other biometric files


def test_rows_are_not_stored_in_the_clear(tmp_path: Path) -> None:
    v = _vectors(64)
    path = tmp_path / "a.rows"
    write_rows(path, Cipher(KEY), [v], dim=16)
    raw = path.read_bytes()
    assert v[3].tobytes()[:16] not in raw


def test_altered_wrong_context_wrong_key_and_truncated_files_are_refused(tmp_path: Path) -> None:
    cipher = Cipher(KEY)
    v = _vectors(40)
    path = tmp_path / "a.rows"
    write_rows(path, cipher, [v], dim=16, context=b"m1", chunk_rows=8)
    with pytest.raises(DecryptionError):
        RowFile(path, cipher, context=b"m2")  # another model's file
    with pytest.raises(DecryptionError):
        RowFile(path, Cipher(bytes(32)), context=b"m1")
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    bad = tmp_path / "bad.rows"
    bad.write_bytes(bytes(raw))
    with RowFile(bad, cipher, context=b"m1") as rf, pytest.raises(DecryptionError):
        rf.chunk(0)
    cut = tmp_path / "cut.rows"
    cut.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DecryptionError):
        RowFile(cut, cipher, context=b"m1")


def test_chunks_cannot_be_swapped(tmp_path: Path) -> None:
    cipher = Cipher(KEY)
    path = tmp_path / "a.rows"
    write_rows(path, cipher, [_vectors(32)], dim=16, chunk_rows=8)
    with RowFile(path, cipher) as rf:
        size = rf._chunk_bytes
    raw = bytearray(path.read_bytes())
    head = _HEADER.size
    a, b = raw[head : head + size], raw[head + size : head + 2 * size]
    raw[head : head + size], raw[head + size : head + 2 * size] = b, a
    swapped = tmp_path / "s.rows"
    swapped.write_bytes(bytes(raw))
    with RowFile(swapped, cipher) as rf, pytest.raises(DecryptionError):
        rf.chunk(0)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "e.rows"
    assert write_rows(path, Cipher(KEY), [], dim=16) == 0
    with RowFile(path, Cipher(KEY)) as rf:
        assert rf.rows == 0 and rf.read_all().shape == (0, 16)
        assert rf.take(np.array([], dtype=np.int64)).shape == (0, 16)
