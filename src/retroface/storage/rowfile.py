"""Encrypted fixed-width rows (template vectors) with random access and streaming reads.

A gallery's vectors are biometric data: at rest they are encrypted, yet a search must be able to
read a few hundred of them (the exact re-rank of a shortlist) without decrypting the whole file,
and a new process must be able to stream them without holding the file twice in memory. So rows
are encrypted in small fixed-size chunks (AES-256-GCM, one nonce per chunk): chunk ``i`` sits at a
computable offset and is authenticated with the file's context, its geometry and ``i``, so chunks
cannot be moved, swapped between files or reordered. A footer chunk authenticates the row count,
so a truncated file is refused rather than read short.

Chunk size trades re-rank cost against overhead: a chunk of 8 rows of 512 float32 is 16 KiB plus
32 bytes (0.2%); re-ranking 1,000 scattered rows then decrypts at most 16 MiB.

Files are written once (``write_rows``) and never edited: removing a row (erasure) means writing a
new file without it and deleting the old one, so the removed bytes are really gone.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retroface.storage.crypto import MAGIC, NONCE_BYTES, Cipher, DecryptionError

_FILE_MAGIC = b"RFROWS1\0"
# magic, dtype code (4 ascii chars), dim, chunk_rows, rows
_HEADER = struct.Struct("<8s4sIIQ")
_SEALED_OVERHEAD = len(MAGIC) + NONCE_BYTES + 16  # what Cipher.encrypt adds to a plaintext
_DTYPES: dict[str, np.dtype[Any]] = {
    "f32\0": np.dtype("<f4"),
    "f16\0": np.dtype("<f2"),
    "i64\0": np.dtype("<i8"),
}
DEFAULT_CHUNK_ROWS = 8
# read-ahead hint for a shortlist's chunks (Linux, BSD); absent on macOS and Windows
_WILLNEED: int | None = getattr(os, "POSIX_FADV_WILLNEED", None)


def _code(dtype: np.dtype[Any]) -> str:
    for code, dt in _DTYPES.items():
        if dt == dtype:
            return code
    raise ValueError(f"unsupported row dtype {dtype}")


def _chunk_aad(context: bytes, header: bytes, index: int) -> bytes:
    return b"rows:" + context + b":" + header[: _HEADER.size - 8] + index.to_bytes(8, "little")


def write_rows(
    path: Path,
    cipher: Cipher,
    rows: Iterable[NDArray[np.generic]],
    *,
    dim: int,
    dtype: np.dtype[Any] | type = np.float32,
    context: bytes = b"",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> int:
    """Write blocks of rows (each ``(n, dim)``) to a new file at ``path``; returns the row count.

    Written to ``path`` + ``.part``, fsynced and renamed into place: a crash leaves no file or a
    whole one. Blocks may be any size (they are re-cut into chunks), so a caller can stream a
    gallery larger than memory.
    """
    dt = np.dtype(dtype).newbyteorder("<")
    code = _code(dt)
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    header_stub = _HEADER.pack(_FILE_MAGIC, code.encode(), dim, chunk_rows, 0)
    total = 0
    index = 0
    pending = np.zeros((0, dim), dtype=dt)
    try:
        # private like every other file holding biometric data (0600), whatever the umask
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(header_stub)

            def emit(block: NDArray[np.generic]) -> None:
                nonlocal index
                fh.write(
                    cipher.encrypt(block.tobytes(), aad=_chunk_aad(context, header_stub, index))
                )
                index += 1

            for block in rows:
                b = np.ascontiguousarray(np.asarray(block).reshape(-1, dim), dtype=dt)
                total += len(b)
                pending = np.concatenate([pending, b]) if len(pending) else b
                full = len(pending) // chunk_rows * chunk_rows
                for start in range(0, full, chunk_rows):
                    emit(pending[start : start + chunk_rows])
                pending = pending[full:]
            if len(pending):
                emit(pending)
            # the footer: the row count, authenticated at the chunk index after the last row chunk
            fh.write(
                cipher.encrypt(
                    total.to_bytes(8, "little"), aad=_chunk_aad(context, header_stub, index)
                )
            )
            fh.seek(0)
            fh.write(_HEADER.pack(_FILE_MAGIC, code.encode(), dim, chunk_rows, total))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return total


class RowFile:
    """Read access to a file written by ``write_rows`` (memory-mapped; thread-safe reads)."""

    #: hint the kernel to read a shortlist's chunks ahead (``take``); off only to measure it
    prefetch = True

    def __init__(self, path: Path, cipher: Cipher, *, context: bytes = b"") -> None:
        self.path = path
        self._cipher = cipher
        self._context = context
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < _HEADER.size:
                raise DecryptionError(f"{path.name} is not a row file")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        # random reads (a shortlist) go through pread, not the map: mapped pages a search
        # touched would count in the server's resident memory (at 10M rows, gigabytes of it)
        self._fd = os.open(path, os.O_RDONLY)
        magic, code, dim, chunk_rows, rows = _HEADER.unpack_from(self._map, 0)
        if magic != _FILE_MAGIC or code.decode() not in _DTYPES or chunk_rows == 0:
            raise DecryptionError(f"{path.name} is not a row file")
        self.dim = int(dim)
        self.rows = int(rows)
        self.chunk_rows = int(chunk_rows)
        self.dtype = _DTYPES[code.decode()]
        self._header = _HEADER.pack(magic, code, dim, chunk_rows, 0)
        self._aad_prefix = _chunk_aad(self._context, self._header, 0)[:-8]
        self._row_bytes = self.dim * self.dtype.itemsize
        self._chunk_bytes = self.chunk_rows * self._row_bytes + _SEALED_OVERHEAD
        self.chunks = -(-self.rows // self.chunk_rows)
        footer_at = _HEADER.size + self.rows * self._row_bytes + self.chunks * _SEALED_OVERHEAD
        if size != footer_at + 8 + _SEALED_OVERHEAD:
            raise DecryptionError(f"{path.name} is truncated or has extra bytes")
        count = self._cipher.decrypt(
            self._map[footer_at:], aad=_chunk_aad(self._context, self._header, self.chunks)
        )
        if int.from_bytes(count, "little") != self.rows:
            raise DecryptionError(f"{path.name}: row count does not match its footer")

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chunk(self, index: int) -> NDArray[np.generic]:
        """The rows of chunk ``index``, decrypted and authenticated."""
        if not 0 <= index < self.chunks:
            raise IndexError(index)
        return self._chunks(index, 1)

    def _chunks(self, first: int, count: int) -> NDArray[np.generic]:
        """Chunks ``first`` .. ``first + count - 1`` in one pread (they are contiguous).

        pread, not the map: mapped pages a process has read count in its resident memory until
        it unmaps them, so streaming a 2 GB segment store through the map (a load) showed as
        2 GB more RSS in a server that keeps its row files open.
        """
        last = min(self.chunks, first + count)
        start = _HEADER.size + first * self._chunk_bytes
        end_rows = min(self.rows, last * self.chunk_rows)
        n_rows = end_rows - first * self.chunk_rows
        sealed = os.pread(
            self._fd, n_rows * self._row_bytes + (last - first) * _SEALED_OVERHEAD, start
        )
        view = memoryview(sealed)
        parts = []
        for i in range(first, last):
            at = (i - first) * self._chunk_bytes
            n = min(self.chunk_rows, self.rows - i * self.chunk_rows)
            parts.append(
                self._cipher.decrypt(
                    bytes(view[at : at + n * self._row_bytes + _SEALED_OVERHEAD]), aad=self._aad(i)
                )
            )
        return np.frombuffer(b"".join(parts), dtype=self.dtype).reshape(n_rows, self.dim)

    def _aad(self, index: int) -> bytes:
        return self._aad_prefix + index.to_bytes(8, "little")

    def take(self, positions: NDArray[np.integer]) -> NDArray[np.generic]:
        """Rows at ``positions`` (any order, repeats allowed), decrypting each chunk once.

        One decrypt per distinct chunk and no per-chunk numpy work: a re-rank shortlist of
        2,000 scattered rows touches ~2,000 chunks, and per-chunk Python overhead (not AES) is
        what it costs (measured: 131 ms with a split per chunk, see bench/scale.py for now).
        """
        pos = np.asarray(positions, dtype=np.int64)
        if len(pos) == 0:
            return np.empty((0, self.dim), dtype=self.dtype)
        if pos.min() < 0 or pos.max() >= self.rows:
            raise IndexError("row position out of range")
        cr = self.chunk_rows
        chunks, inverse = np.unique(pos // cr, return_inverse=True)
        fd, rb, cb, ov = self._fd, self._row_bytes, self._chunk_bytes, _SEALED_OVERHEAD
        first, full, decrypt, aad = _HEADER.size, cr * rb + ov, self._cipher.decrypt, self._aad
        last = self.chunks - 1
        tail = (self.rows - last * cr) * rb + ov
        pread = os.pread
        if self.prefetch and _WILLNEED is not None:
            # Ask the kernel for every chunk first, then read them in order: the reads of
            # chunks not in the page cache are queued together instead of one at a time.
            # Measured on this VM (4,000 random 2 KB chunks of a 1 GB file just dropped from
            # the page cache): 520-1,080 ms reading one after the other, 115-220 ms with this
            # hint first; a few ms more when the chunks are cached already. Which rows are
            # read, and their scores, do not change.
            advise = os.posix_fadvise
            for c in chunks.tolist():
                advise(fd, first + c * cb, full, _WILLNEED)
        # sorted chunks: only the file's last chunk can be short, and it comes last here, so
        # chunk j of this list starts at row j * cr of the joined plaintext
        plain = b"".join(
            decrypt(pread(fd, full if c != last else tail, first + c * cb), aad(c))
            for c in chunks.tolist()
        )
        rows = np.frombuffer(plain, dtype=self.dtype).reshape(-1, self.dim)
        return rows[inverse.reshape(-1) * cr + pos % cr]

    def range(self, start: int, stop: int) -> NDArray[np.generic]:
        """Rows ``start`` .. ``stop - 1``, read in one pread (a sequential read, cheap on a cold
        disk where scattered reads of one row each are not)."""
        if not 0 <= start <= stop <= self.rows:
            raise IndexError("row range out of range")
        if start == stop:
            return np.empty((0, self.dim), dtype=self.dtype)
        first, last = start // self.chunk_rows, (stop - 1) // self.chunk_rows
        rows = self._chunks(first, last - first + 1)
        at = first * self.chunk_rows
        return rows[start - at : stop - at]

    def blocks(self, block_rows: int = 65536) -> Iterator[NDArray[np.generic]]:
        """Every row in order, in blocks of about ``block_rows`` (memory bounded by one block)."""
        per = max(1, block_rows // self.chunk_rows)
        for first in range(0, self.chunks, per):
            yield self._chunks(first, per)

    def read_all(self) -> NDArray[np.generic]:
        out = np.empty((self.rows, self.dim), dtype=self.dtype)
        at = 0
        for block in self.blocks():
            out[at : at + len(block)] = block
            at += len(block)
        return out
