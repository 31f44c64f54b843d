"""The stored vector index of one model: immutable encrypted segments and a small manifest.

The database is the source of truth; this store is a derived copy of a model's templates that a
new process can read quickly and that a change rewrites only in proportion to itself. Before it,
the index was one AES-GCM blob of every vector plus JSON id maps: at 1M faces a 2.09 GB file,
rewritten whole (32 s) by every enrolment and decrypted and parsed whole (18.4 s) by every load.

On disk, in one folder per model (``<index folder>/<sha256(model key)[:16]>/``)::

    LOCK               writers take an exclusive flock on it (across processes and threads)
    MANIFEST           encrypted JSON: the gallery version the store reflects, the model key,
                       the dimension, the writer's index kind and the list of segments
    <name>.rows        a segment's vectors: ``storage.rowfile`` (encrypted one-row chunks; the
                       context binds the model key and the segment name)
    <name>.ids         the segment's template, subject and image ids: three little-endian int64
                       rows, encrypted as one blob bound to the model key and the segment name

Segments are written once and never edited. An enrolment appends a *delta* segment holding only
what it added; an erasure writes, for the segments holding a removed template only, a
replacement without those rows, and deletes the old files, so the erased vector is in no stored
piece any more. Compaction merges deltas (and small bases) into *base* segments of at most
``SEGMENT_ROWS`` rows. Every change writes its new pieces first (each fsynced and renamed into
place) and replaces the manifest last (``atomic_write``): a crash at any point leaves the old
manifest, which names only whole, old pieces, or the new one, which names only whole, new ones.
Pieces the manifest does not name (a crash's leftovers) are deleted by the next writer, before it
changes anything, so they cannot outlive an erasure that comes after them.

Readers take no lock: they read the manifest, then open the pieces it names. A writer deletes
the pieces it replaced only after the new manifest is in place, so a reader that finds a piece
gone has read a manifest that is no longer current and simply reads the manifest again
(``StaleManifest``). An open piece stays readable after it is deleted (POSIX).

The manifest records each piece's SHA-256. The ids blob is small and checked on every load; a
rows file is authenticated chunk by chunk by AES-GCM (bound to its model, name, geometry and
chunk number, with the row count in an authenticated footer), so a load does not hash it again
(2 GB at 1M faces would cost seconds); ``verify`` checks those hashes too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from retroface.storage.crypto import Cipher, DecryptionError
from retroface.storage.files import atomic_write
from retroface.storage.rowfile import RowFile, write_rows

#: Rows per segment at most: 64k x 512 float32 = 128 MiB, so erasing a template rewrites a bounded
#: amount whatever the gallery size. With 200k rows in one segment an erasure rewrote 415 MB in
#: 9 s (2 cores at load 20, bench/incremental.py); 64k rows cut that by three, and 1M faces are
#: still only 16 segments (32 files) to open on load.
SEGMENT_ROWS = 65_536
#: Rows per AES-GCM chunk of a segment's ``.rows`` file. One: the lean index re-ranks its shortlist
#: from these files (``search/segment_rows.py``), and a 2,000-row shortlist touches ~2,000 chunks,
#: so 8-row chunks decrypted 32 MB per query for 4 MB of rows: 44 ms CPU p50 (134 ms p99) per
#: 1M-face search against 9 ms with the rows in RAM (bench/segment_rows.py, docs/performance.md).
#: Costs 32 bytes a row (1.5%) on disk. The header records it: files with 8-row chunks, written
#: before, are read as they are until compaction or an erasure rewrites them.
CHUNK_ROWS = 1
FORMAT = 1
MANIFEST = "MANIFEST"
LOCK = "LOCK"
#: Test-only: when set to a path, compaction creates that file and stops, after writing its new
#: pieces and before replacing the manifest, so a test can kill the process at that point.
PAUSE_ENV = "RETROFACE_TEST_COMPACTION_PAUSE"

IdArray = NDArray[np.int64]


class StoreError(Exception):
    """The stored index is unreadable or does not belong to this model (rebuild it)."""


class StaleManifest(StoreError):
    """A piece named by the manifest is gone: a writer replaced it meanwhile (read again)."""


@dataclass(frozen=True)
class Segment:
    name: str
    rows: int
    level: str  # "delta" (one change's additions) or "base" (written by compaction or rebuild)
    min_id: int  # template id range: an erasure reads only the ids of segments that may hold it
    max_id: int
    sha256_rows: str
    sha256_ids: str


@dataclass(frozen=True)
class Manifest:
    version: int
    model_key: str
    dim: int
    kind: str
    segments: tuple[Segment, ...] = field(default=())

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def deltas(self) -> list[Segment]:
        return [s for s in self.segments if s.level == "delta"]


@dataclass(frozen=True)
class CompactionPolicy:
    """When deltas are merged: more than ``max_deltas`` of them (each costs a file pair and a
    little load time), or deltas holding more than ``delta_share`` of the rows once they hold at
    least ``min_rows`` (below that a delta is a few MB and costs nothing to load)."""

    max_deltas: int = 8
    delta_share: float = 0.10
    min_rows: int = 4096
    segment_rows: int = SEGMENT_ROWS

    def due(self, manifest: Manifest) -> bool:
        deltas = manifest.deltas
        delta_rows = sum(s.rows for s in deltas)
        return len(deltas) > self.max_deltas or (
            len(deltas) > 1
            and delta_rows >= self.min_rows
            and delta_rows > self.delta_share * manifest.rows
        )


@dataclass
class Added:
    """Templates to add, as arrays (one row each)."""

    ids: IdArray
    subject_ids: IdArray
    image_ids: IdArray
    vectors: NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, rows: list[tuple[int, int, int, NDArray[np.float32]]], dim: int) -> Added:
        return cls(
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.int64),
            np.stack([r[3] for r in rows]).astype(np.float32)
            if rows
            else np.zeros((0, dim), np.float32),
        )

    def take(self, mask: NDArray[np.bool_]) -> Added:
        return Added(
            self.ids[mask], self.subject_ids[mask], self.image_ids[mask], self.vectors[mask]
        )

    def slice(self, start: int, stop: int) -> Added:
        return Added(
            self.ids[start:stop],
            self.subject_ids[start:stop],
            self.image_ids[start:stop],
            self.vectors[start:stop],
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentStore:
    """One model's stored index (see the module docstring). Thread-safe; readers take no lock."""

    def __init__(
        self,
        folder: Path,
        cipher: Cipher,
        model_key: str,
        dim: int,
        kind: str = "flat",
        policy: CompactionPolicy | None = None,
    ) -> None:
        self.folder = folder
        self.cipher = cipher
        self.model_key = model_key
        self.dim = dim
        self.kind = kind
        self.policy = policy or CompactionPolicy()

    # ---- naming and encryption contexts
    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def _rows_path(self, name: str) -> Path:
        return self.folder / f"{name}.rows"

    def _ids_path(self, name: str) -> Path:
        return self.folder / f"{name}.ids"

    def _rows_context(self, name: str) -> bytes:
        return self.model_key.encode() + b"\0" + name.encode()

    def _ids_aad(self, name: str) -> bytes:
        return b"index-ids:" + self.model_key.encode() + b"\0" + name.encode()

    def _manifest_aad(self) -> bytes:
        return b"index-manifest:" + self.model_key.encode()

    def pieces(self, segment: Segment) -> tuple[Path, Path]:
        return self._rows_path(segment.name), self._ids_path(segment.name)

    # ---- reading
    def manifest(self) -> Manifest | None:
        """The current manifest; None when there is none; ``StoreError`` when unreadable."""
        try:
            blob = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            raw = json.loads(self.cipher.decrypt(blob, aad=self._manifest_aad()))
            if raw["format"] != FORMAT or raw["model_key"] != self.model_key:
                raise StoreError("manifest of another format or model")
            return Manifest(
                version=int(raw["version"]),
                model_key=raw["model_key"],
                dim=int(raw["dim"]),
                kind=str(raw["kind"]),
                segments=tuple(Segment(**s) for s in raw["segments"]),
            )
        except (DecryptionError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"manifest unreadable: {exc}") from exc

    def read_ids(self, segment: Segment) -> tuple[IdArray, IdArray, IdArray]:
        """(template ids, subject ids, image ids) of a segment, in row order."""
        try:
            blob = self._ids_path(segment.name).read_bytes()
        except FileNotFoundError as exc:
            raise StaleManifest(segment.name) from exc
        if hashlib.sha256(blob).hexdigest() != segment.sha256_ids:
            raise StoreError(f"{segment.name}.ids does not match the manifest")
        try:
            plain = self.cipher.decrypt(blob, aad=self._ids_aad(segment.name))
        except DecryptionError as exc:
            raise StoreError(f"{segment.name}.ids: {exc}") from exc
        arr = np.frombuffer(plain, dtype="<i8").reshape(3, -1)
        if arr.shape[1] != segment.rows:
            raise StoreError(f"{segment.name}.ids holds {arr.shape[1]} rows, not {segment.rows}")
        return arr[0].astype(np.int64), arr[1].astype(np.int64), arr[2].astype(np.int64)

    def open_rows(self, segment: Segment) -> RowFile:
        """The segment's vectors: stream them (``blocks``) or read a few (``take``)."""
        try:
            rf = RowFile(
                self._rows_path(segment.name), self.cipher, context=self._rows_context(segment.name)
            )
        except FileNotFoundError as exc:
            raise StaleManifest(segment.name) from exc
        except DecryptionError as exc:
            raise StoreError(f"{segment.name}.rows: {exc}") from exc
        if rf.rows != segment.rows or rf.dim != self.dim:
            rf.close()
            raise StoreError(f"{segment.name}.rows does not match the manifest")
        return rf

    def verify(self) -> Manifest | None:
        """Check every piece against the manifest's hashes (reads everything: for checks)."""
        manifest = self.manifest()
        if manifest is None:
            return None
        for seg in manifest.segments:
            self.read_ids(seg)
            if _sha256(self._rows_path(seg.name)) != seg.sha256_rows:
                raise StoreError(f"{seg.name}.rows does not match the manifest")
        return manifest

    def files(self) -> list[Path]:
        """Every file in the model's folder (tests and checks scan them)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    # ---- writing
    @contextmanager
    def writer(self) -> Iterator[SegmentWriter]:
        """The one writer of this model's store (flock across processes), after deleting the
        pieces a crashed writer left; the manifest it starts from is ``writer.manifest``."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                manifest: Manifest | None = self.manifest()
            except StoreError:
                manifest = None  # unreadable: the caller writes a whole new state
            if manifest is not None and manifest.dim != self.dim:
                manifest = None
            w = SegmentWriter(self, manifest)
            w.remove_unreferenced()
            yield w
        finally:
            os.close(fd)  # releases the flock


class SegmentWriter:
    """Changes to a store, made under its writer lock (``SegmentStore.writer``)."""

    def __init__(self, store: SegmentStore, manifest: Manifest | None) -> None:
        self.store = store
        self.manifest = manifest

    def _referenced(self) -> set[str]:
        names = {MANIFEST, LOCK}
        for seg in self.manifest.segments if self.manifest else ():
            names |= {p.name for p in self.store.pieces(seg)}
        return names

    def remove_unreferenced(self) -> int:
        """Delete every file the manifest does not name: a crashed writer's new pieces, or the
        old pieces it had replaced but not yet deleted (either may hold an erased vector)."""
        keep = self._referenced()
        gone = 0
        for path in self.store.files():
            if path.name not in keep:
                path.unlink(missing_ok=True)
                gone += 1
        if gone:
            _fsync_dir(self.store.folder)
        return gone

    def _new_name(self, version: int) -> str:
        return f"{version:012d}-{secrets.token_hex(4)}"

    def _write_segment(
        self,
        version: int,
        level: str,
        ids: IdArray,
        subject_ids: IdArray,
        image_ids: IdArray,
        blocks: Iterable[NDArray[np.float32]],
    ) -> Segment:
        store = self.store
        name = self._new_name(version)
        rows_path = store._rows_path(name)
        n = write_rows(
            rows_path,
            store.cipher,
            blocks,
            dim=store.dim,
            context=store._rows_context(name),
            chunk_rows=CHUNK_ROWS,
        )
        if n != len(ids):
            rows_path.unlink(missing_ok=True)
            raise ValueError(f"segment {name}: {n} vectors for {len(ids)} ids")
        packed = np.stack([ids, subject_ids, image_ids]).astype("<i8")
        blob = store.cipher.encrypt(packed.tobytes(), aad=store._ids_aad(name))
        atomic_write(store._ids_path(name), blob)
        return Segment(
            name=name,
            rows=n,
            level=level,
            min_id=int(ids.min()) if n else 0,
            max_id=int(ids.max()) if n else 0,
            sha256_rows=_sha256(rows_path),
            sha256_ids=hashlib.sha256(blob).hexdigest(),
        )

    def _write_added(self, version: int, level: str, added: Added) -> list[Segment]:
        cap = self.store.policy.segment_rows
        out = []
        for start in range(0, len(added), cap):
            part = added.slice(start, start + cap)
            out.append(
                self._write_segment(
                    version, level, part.ids, part.subject_ids, part.image_ids, [part.vectors]
                )
            )
        return out

    def _commit(
        self, version: int, segments: Iterable[Segment], dropped: Iterable[Segment]
    ) -> None:
        """The last step of every change: the new manifest, then the replaced pieces go."""
        store = self.store
        manifest = Manifest(version, store.model_key, store.dim, store.kind, tuple(segments))
        raw = {"format": FORMAT, **asdict(manifest)}
        atomic_write(
            store.manifest_path,
            store.cipher.encrypt(json.dumps(raw).encode(), aad=store._manifest_aad()),
        )
        self.manifest = manifest
        for seg in dropped:
            for path in store.pieces(seg):
                path.unlink(missing_ok=True)
        _fsync_dir(store.folder)

    def replace_all(self, version: int, added: Added | Iterable[Added]) -> None:
        """A whole new state (first write, a gap in the change log, an unreadable store); the
        rows may come in parts (each cut at ``segment_rows``), so memory stays bounded."""
        parts = [added] if isinstance(added, Added) else added
        new = [seg for part in parts for seg in self._write_added(version, "base", part)]
        self.manifest = None  # every earlier piece is unreferenced now
        self._commit(version, new, ())
        self.remove_unreferenced()

    def change(self, version: int, added: Added, removed: Iterable[int]) -> None:
        """Bring the store to ``version``: a delta with the added templates, and replacements
        (without the removed rows) for only the segments that hold a removed template."""
        assert self.manifest is not None
        gone = np.unique(np.asarray(list(removed), dtype=np.int64))
        if len(gone):
            added = added.take(~np.isin(added.ids, gone))
        kept: list[Segment] = []
        dropped: list[Segment] = []
        for seg in self.manifest.segments:
            hits = gone[(gone >= seg.min_id) & (gone <= seg.max_id)]
            if len(hits) == 0:
                kept.append(seg)
                continue
            ids, sids, iids = self.store.read_ids(seg)
            keep = ~np.isin(ids, hits)
            if keep.all():
                kept.append(seg)
                continue
            dropped.append(seg)
            if keep.any():
                kept.append(self._rewrite(version, seg, ids, sids, iids, keep))
        kept += self._write_added(version, "delta", added)
        self._commit(version, kept, dropped)

    def _rewrite(
        self,
        version: int,
        seg: Segment,
        ids: IdArray,
        sids: IdArray,
        iids: IdArray,
        keep: NDArray[np.bool_],
    ) -> Segment:
        """A copy of ``seg`` holding only the ``keep`` rows, streamed block by block."""

        def blocks() -> Iterator[NDArray[np.float32]]:
            at = 0
            with self.store.open_rows(seg) as rf:
                for block in rf.blocks():
                    yield np.asarray(block[keep[at : at + len(block)]], dtype=np.float32)
                    at += len(block)

        return self._write_segment(version, seg.level, ids[keep], sids[keep], iids[keep], blocks())

    def compact(self, force: bool = False) -> bool:
        """Merge deltas and small bases into bases of at most ``segment_rows`` rows.

        New pieces first, the manifest last, the merged pieces deleted after it: killed at any
        point, the store is the old state or the new one (plus leftovers the next writer deletes).
        """
        manifest = self.manifest
        policy = self.store.policy
        if manifest is None or not (force or policy.due(manifest)):
            return False
        cap = policy.segment_rows
        picked = [s for s in manifest.segments if s.level == "delta" or s.rows < cap // 2]
        if not picked:
            return False
        groups: list[list[Segment]] = [[]]
        for seg in picked:
            if groups[-1] and sum(s.rows for s in groups[-1]) + seg.rows > cap:
                groups.append([])
            groups[-1].append(seg)
        merged: dict[str, Segment] = {}
        dropped: list[Segment] = []
        for group in groups:
            if len(group) == 1:  # nothing to merge with: relabelled, not rewritten
                merged[group[0].name] = replace(group[0], level="base")
                continue
            parts = [self.store.read_ids(s) for s in group]

            def blocks(group: list[Segment] = group) -> Iterator[NDArray[np.float32]]:
                for s in group:
                    with self.store.open_rows(s) as rf:
                        for block in rf.blocks():
                            yield np.asarray(block, dtype=np.float32)

            new = self._write_segment(
                manifest.version,
                "base",
                np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]),
                blocks(),
            )
            merged[group[0].name] = new
            dropped += group
        if not dropped and all(s.level == "base" for s in picked):
            return False  # only lone small bases: nothing would change
        pause = os.environ.get(PAUSE_ENV)
        if pause:  # test hook: the new pieces are written, the manifest is not
            Path(pause).touch()
            while True:
                time.sleep(1)
        gone = {s.name for s in dropped}
        segments = []
        for seg in manifest.segments:
            if seg.name in merged:
                segments.append(merged[seg.name])
            elif seg.name not in gone:
                segments.append(seg)
        self._commit(manifest.version, segments, dropped)
        return True


def remove_legacy(folder: Path, model_key: str) -> None:
    """Delete the single-file index of earlier versions (``<digest>.<kind>.idx.enc``): it holds
    the whole gallery, erased templates included, and nothing reads it any more."""
    digest = hashlib.sha256(model_key.encode()).hexdigest()[:16]
    for path in folder.glob(f"{digest}.*.idx.enc"):
        with suppress(FileNotFoundError):
            path.unlink()
