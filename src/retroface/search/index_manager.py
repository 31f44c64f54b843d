"""Keeps the derived vector index in step with the database, the source of truth.

The index is stored per model as encrypted immutable segments under a small manifest that carries
the gallery version and model it reflects (``search/segments.py``): a change writes only what it
changed (a delta segment for an enrolment, replacements of the segments holding an erased
template), and a new process streams the segments into a fresh index. A missing, stale or
unreadable store is rebuilt from the database automatically.

Concurrency: a readers-writer lock, not copy-on-write snapshots. In the API process a job thread
follows enrolments and erasures (``apply``) while request threads search. FAISS supports many
concurrent searches on one index but not a search concurrent with ``add``/``remove_ids``, and the
id maps and version must change together with the vectors. Copy-on-write would give each update a
fresh index: at 100k x 512 floats that is 200 MB and a full copy per enrolment batch of 32, for a
change of 64 KB. The lock costs a search one uncontended acquire (about a microsecond against
15 ms of flat search at 100k; FAISS releases the GIL, so searches holding the shared lock run in
parallel), and a writer holds it exclusively only while it adds or removes a batch. It prefers
writers, so a stream of searches cannot starve an update; a search waits at most for one batch.

Following other processes: every gallery version records the template ids it added and removed
(``gallery_changes``). A state behind the database (this process's cache after another process
enrolled or erased, or the saved file in a new process) catches up by reading only those ids and
the added templates, under the exclusive lock for the in-memory step alone; the whole gallery is
re-read only when the log cannot bridge the gap (versions from before the log existed). The
stored segments follow the same way (``persist``): under the store's writer lock (a flock, so
across processes) the writer reads what changed since the manifest's version and writes only that.
A process that changes the gallery persists its change; it never loads the whole index to do so.
Compaction (merging deltas) changes no row, so it never touches the in-memory state; in the
server it runs in a background thread while searches go on. A lean state reads its full-precision
rows from the store's segment files (``search/segment_rows.py``): after a persist or a compaction,
and when a search finds the manifest changed, it switches to the current segments under the
exclusive lock and closes the replaced files (an open file would keep an erased vector on disk).

Invariants: the cached ``LoadedIndex`` for a model is always a whole state of the gallery at its
``version`` (index, maps and version change together, under the exclusive lock), and is only
mutated by ``apply`` under that lock. A search takes the shared lock for as long as it touches
the index and maps (``reading``), so the version it reports is the state it searched. A state is
replaced, never edited, by a reload or rebuild; a state dropped from the cache is never mutated
again, so anyone still holding it holds a consistent (if old) state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Select, select

from retroface.search.index import (
    AutoIndex,
    LeanIndex,
    MemoryRows,
    VectorIndex,
    new_index,
    stored_vectors,
)
from retroface.search.segment_rows import SegmentRows, SegmentView, adopt
from retroface.search.segments import (
    Added,
    CompactionPolicy,
    Manifest,
    SegmentStore,
    StaleManifest,
    StoreError,
    remove_legacy,
)
from retroface.storage.crypto import Cipher, template_aad
from retroface.storage.db import Database
from retroface.storage.tables import FaceTemplate, ReferenceImage
from retroface.storage.versions import changes_since, gallery_version
from retroface.vision.types import FloatArray

#: Added templates per query when catching up (bounded IN lists on both stores).
_CHUNK = 1000


def _templates(model_key: str) -> Select[int, int, int, bytes, str]:
    """A model's templates as the index needs them: id, subject, image, the encrypted vector
    and the image hash it is bound to (the decryption's associated data)."""
    return (
        select(
            FaceTemplate.id,
            FaceTemplate.subject_id,
            FaceTemplate.image_id,
            FaceTemplate.embedding_enc,
            ReferenceImage.content_hash,
        )
        .join(FaceTemplate.image)
        .where(FaceTemplate.model_key == model_key)
    )


log = logging.getLogger(__name__)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers (no starvation).

    Not re-entrant: a thread holding the read side must not take it again, or it could deadlock
    behind a waiting writer.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class _SubjectMap:
    """Subject -> template ids of a state: sorted arrays from one pass, plus what was added
    since (removals are filtered against ``subject_of`` when read)."""

    sids: NDArray[np.int64]
    tids: NDArray[np.int64]
    added: dict[int, list[int]] = field(default_factory=dict)
    n_added: int = 0

    @classmethod
    def build(cls, subject_of: dict[int, int]) -> _SubjectMap:
        tids = np.fromiter(subject_of.keys(), dtype=np.int64, count=len(subject_of))
        sids = np.fromiter(subject_of.values(), dtype=np.int64, count=len(subject_of))
        order = np.argsort(sids, kind="stable")
        return cls(sids[order], tids[order])

    def stale(self, size: int) -> bool:
        removed = len(self.tids) + self.n_added - size
        return self.n_added + removed > max(1024, size // 20)


@dataclass
class LoadedIndex:
    """One whole state of a model's gallery: vectors, id maps and the version they are at.

    The cached state is advanced in place by ``IndexManager.apply``: read it inside
    ``IndexManager.reading`` whenever another thread may enrol or erase.
    """

    index: VectorIndex
    version: int
    model_key: str
    rebuilt: bool
    subject_of: dict[int, int]  # template id -> subject id
    image_of: dict[int, int]  # template id -> reference image id
    #: ``templates_of``'s reverse map (see there)
    _by_subject: _SubjectMap | None = field(default=None, repr=False, compare=False)

    # -- Fused subject templates (search/matcher.py, aggregate "fused"): read-only accessors ----
    # Call both inside ``IndexManager.reading``, in the same block as the search, so that the
    # templates and vectors are those of the state searched.

    def templates_of(self, subject_ids: Iterable[int]) -> dict[int, list[int]]:
        """Every template id of each subject in this state (an unknown subject: none).

        The reverse map is built once from ``subject_of`` (numpy, sorted by subject; 29 ms at
        100k templates, 0.49 s at 1M on 2 shared cores) and then followed, not rebuilt, as the
        state changes: templates added since are noted by the change paths (``note_added``,
        under the exclusive lock), removed ones are dropped by checking each template against
        ``subject_of``, and it is rebuilt only when the changes since reach a twentieth of the
        gallery. Rebuilt at every gallery change instead, the first fused search after each
        enrolment paid the whole pass (0.49 s at 1M, ~5 s at 10M).
        """
        built = self._by_subject
        if built is None or built.stale(len(self.subject_of)):
            # readers may build it at the same time (no change can run under the shared lock):
            # each assigns a whole map, built from the same ``subject_of``
            built = self._by_subject = _SubjectMap.build(self.subject_of)
        wanted = np.fromiter(subject_ids, dtype=np.int64)
        los = np.searchsorted(built.sids, wanted).tolist()
        his = np.searchsorted(built.sids, wanted + 1).tolist()
        out: dict[int, list[int]] = {}
        for sid, lo, hi in zip(wanted.tolist(), los, his, strict=True):
            tids = built.tids[lo:hi].tolist() + built.added.get(sid, [])
            out[sid] = sorted({t for t in tids if self.subject_of.get(t) == sid})
        return out

    def note_added(self, tid: int, sid: int) -> None:
        """Tell the reverse map (if built) of a template added to this state."""
        if self._by_subject is not None:
            self._by_subject.added.setdefault(sid, []).append(tid)
            self._by_subject.n_added += 1

    def vectors(self, ids: Sequence[int]) -> FloatArray | None:
        """The stored vectors of ``ids`` (each in this state), in that order; None when the
        index kind cannot give them back (``ivf``, ``sharded*``)."""
        return stored_vectors(self.index, np.asarray(list(ids), dtype=np.int64))


class IndexManager:
    """The cached index per model, shared by this process's threads (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        cipher: Cipher,
        folder: Path,
        dim: int,
        kind: str = "flat",
        catch_up_s: float = 0.25,
        policy: CompactionPolicy | None = None,
        compact_in_background: bool = False,
    ) -> None:
        self.db = db
        self.cipher = cipher
        self.folder = folder
        self.dim = dim
        self.kind = kind
        self._loaded: dict[str, LoadedIndex] = {}
        self._lock = ReadWriteLock()  # guards _loaded and the state of every LoadedIndex in it
        # one reload at a time: searches that all find the index stale build it once, not N times
        self._load_lock = threading.Lock()
        self.policy = policy or CompactionPolicy()
        # The server compacts in a background thread (searches go on against the cached state,
        # which compaction does not change); a CLI process compacts before it exits.
        self.compact_in_background = compact_in_background
        self._compacting: dict[str, threading.Thread] = {}
        self._compacting_lock = threading.Lock()
        #: What the store writer did: "delta" (a change written), "full" (a whole state written),
        #: "compaction". Tests and benches read it.
        self.writes: Counter[str] = Counter()
        # A search that finds the database a version ahead of the cache has usually met a change
        # of this process between its commit and its apply (microseconds to a few ms apart): it
        # waits up to catch_up_s for that apply rather than rebuild (seconds at 100k templates).
        # Only a change made by another process costs this wait, before the rebuild it needs.
        self.catch_up_s = catch_up_s
        self._applied = threading.Condition()
        self._changing = 0  # changes of this process between commit and apply (``changing``)
        #: How states came to be: "rebuild" (every template decrypted), "file" (stored segments
        #: read), "catch_up" (followed the change log). Tests and benches read it.
        self.stats: Counter[str] = Counter()
        # A lean index re-ranks from the store's own row files (``SegmentRows``); these follow
        # the manifest (``sync_rows``): one switch at a time, and the manifest and state last
        # looked at per model, so a search pays one stat when nothing changed.
        self._rows_lock = threading.Lock()
        self._rows_seen: dict[str, tuple[int, ...]] = {}
        #: In the server (``compact_in_background``), how often a thread looks for a manifest
        #: that another process changed, so a replaced segment is closed even with no search
        #: coming (a stat per model; a switch only when the manifest meets the state's version).
        self.follow_rows_s = 2.0
        self._follower: threading.Thread | None = None
        self._closing = threading.Event()

    def folder_for(self, model_key: str) -> Path:
        """The folder of a model's stored index (manifest, segments, lock)."""
        digest = hashlib.sha256(model_key.encode()).hexdigest()[:16]
        return self.folder / digest

    def store(self, model_key: str) -> SegmentStore:
        return SegmentStore(
            self.folder_for(model_key), self.cipher, model_key, self.dim, self.kind, self.policy
        )

    def path_for(self, model_key: str) -> Path:
        """The manifest of a model's stored index (the file that says which segments count)."""
        return self.store(model_key).manifest_path

    def _db_version(self) -> int:
        with self.db.session() as s:
            return gallery_version(s)

    def _current(self, model_key: str, version: int) -> LoadedIndex | None:
        """The cached state if it is at ``version`` or later (the caller holds the lock).

        Later is as good: it can only be ahead because a change committed after ``version`` was
        read, and it is a whole state of the gallery at its own version.
        """
        cached = self._loaded.get(model_key)
        return cached if cached is not None and cached.version >= version else None

    @contextmanager
    def reading(self, model_key: str) -> Iterator[LoadedIndex]:
        """The index, current with the database, held still for the block.

        No update is applied until the block ends, so everything read from it inside (search
        results, maps, version) is one state. Keep the block short (one search) and call no other
        method of the manager inside it (the lock is not re-entrant).
        """
        version = self._db_version()  # outside the lock: no database round trip under it
        waited = False
        while True:
            self.sync_rows(model_key)  # one stat unless the manifest or the state changed
            with self._lock.read():
                loaded = self._current(model_key, version)
                if loaded is not None:
                    yield loaded
                    return
            if not waited:
                waited = True
                if self._await_apply(model_key, version):
                    continue
            self._refresh(model_key, version)

    def _await_apply(self, model_key: str, version: int) -> bool:
        """Wait (up to ``catch_up_s``) for this process's apply to reach ``version``."""

        def caught_up() -> bool:
            cached = self._loaded.get(model_key)  # a hint only: the caller re-checks under the lock
            return cached is None or cached.version >= version

        if self._loaded.get(model_key) is None:
            return False  # nothing to follow: load it
        with self._applied:
            if not self._changing:
                # no change of this process in flight: it is another process's, so catch up
                # now (waiting added 250 ms to every pick-up, bench/incremental.py)
                return False
            self._applied.wait_for(
                lambda: caught_up() or not self._changing, timeout=self.catch_up_s
            )
            return caught_up()

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Wrap a change this process commits and then ``apply``s: a search meeting the commit
        before the apply waits for the apply (up to ``catch_up_s``); with none in flight, a search
        that finds the database ahead catches up through the change log at once."""
        with self._applied:
            self._changing += 1
        try:
            yield
        finally:
            with self._applied:
                self._changing -= 1
                self._applied.notify_all()

    def get(self, model_key: str) -> LoadedIndex:
        """The index for a model, current with the database's gallery version.

        A later ``apply`` may advance the returned state in place; to search it or read its maps
        while other threads change the gallery, use ``reading``.
        """
        with self.reading(model_key) as loaded:
            return loaded

    def _refresh(self, model_key: str, version: int) -> None:
        """Cache a state at ``version`` or later: the cached state or the saved file brought
        forward through the change log, else a rebuild from the database."""
        with self._load_lock:
            with self._lock.read():
                if self._current(model_key, version) is not None:
                    return  # another thread loaded it while this one waited
                cached = self._loaded.get(model_key)
            if cached is not None and self._catch_up_cached(cached):
                return
            loaded = self._load_file(model_key, version)
            erased = False
            if loaded is not None and loaded.version < version:
                advanced = self._advance(loaded)
                if advanced is None:
                    loaded = None
                else:
                    erased = advanced
            if loaded is None:
                self.rebuild(model_key)
            else:
                self._install(loaded)
                if erased:
                    # the store still holds templates erased since (a writer that died before
                    # persisting): write the store forward now, so their bytes go
                    self.persist(model_key)

    def _changes(
        self, model_key: str, since: int
    ) -> tuple[int, list[tuple[int, int, int, np.ndarray]], list[int]] | None:
        """What changed after ``since``: (version reached, added templates, removed ids), or None
        when the change log cannot bridge the gap.

        Read like ``rebuild``: the version before and after the reads must agree, so the added
        rows are exactly those of the versions read.
        """
        with self.db.session() as s:
            while True:
                version = gallery_version(s)
                rows = changes_since(s, since, version)
                if rows is None:
                    return None
                added_ids: set[int] = set()
                removed: set[int] = set()
                for row in rows:
                    added_ids.update(row.added)
                    removed.update(row.removed)
                    added_ids.difference_update(row.removed)
                wanted = sorted(added_ids)
                found: list[Any] = []
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    found += s.execute(
                        _templates(model_key).where(FaceTemplate.id.in_(chunk))
                    ).all()
                s.expire_all()
                if gallery_version(s) == version:
                    break
        added = [
            (
                int(r[0]),
                int(r[1]),
                int(r[2]),
                np.frombuffer(
                    self.cipher.decrypt(r[3], aad=template_aad(r[4], model_key)), dtype=np.float32
                ),
            )
            for r in found
        ]
        return version, added, sorted(removed)

    @staticmethod
    def _apply_to(
        state: LoadedIndex,
        version: int,
        added: list[tuple[int, int, int, np.ndarray]],
        removed: list[int],
    ) -> None:
        gone = [tid for tid in removed if tid in state.subject_of]
        if gone:
            state.index.remove(np.array(gone, dtype=np.int64))
            for tid in gone:
                del state.subject_of[tid]
                state.image_of.pop(tid, None)
        new = [a for a in added if a[0] not in state.subject_of]
        if new:
            state.index.add(
                np.array([a[0] for a in new], dtype=np.int64), np.stack([a[3] for a in new])
            )
            for tid, sid, iid, _ in new:
                state.subject_of[tid] = sid
                state.image_of[tid] = iid
                state.note_added(tid, sid)
        state.version = version

    def _advance(self, loaded: LoadedIndex) -> bool | None:
        """Bring a state nobody else holds yet (segments just read) up to the database; None
        when the log cannot bridge the gap, else whether the change log removed templates."""
        changes = self._changes(loaded.model_key, loaded.version)
        if changes is None:
            return None
        self._apply_to(loaded, *changes)
        self.stats["catch_up"] += 1
        return bool(changes[2])

    def _catch_up_cached(self, cached: LoadedIndex) -> bool:
        """Bring the cached state forward in place: the reads and decryption outside the lock,
        the in-memory change under it (a search waits for that step only)."""
        base = cached.version
        changes = self._changes(cached.model_key, base)
        if changes is None:
            return False
        try:
            with self._lock.write():
                if self._loaded.get(cached.model_key) is not cached or cached.version != base:
                    return True  # moved on meanwhile (an apply): the caller looks again
                try:
                    self._apply_to(cached, *changes)
                except BaseException:
                    del self._loaded[cached.model_key]  # never leave a half-applied state
                    _close_rows(cached.index)
                    raise
        finally:
            with self._applied:
                self._applied.notify_all()
        self.stats["catch_up"] += 1
        return True

    def _install(self, loaded: LoadedIndex) -> None:
        """Cache a freshly built state unless a newer one is cached already."""
        with self._lock.write():
            cached = self._loaded.get(loaded.model_key)
            if cached is None or cached.version < loaded.version:
                self._loaded[loaded.model_key] = loaded
                if cached is not None:
                    _close_rows(cached.index)
            else:
                _close_rows(loaded.index)
        if self.compact_in_background and self._follower is None:
            self._follower = threading.Thread(
                target=self._follow_rows, name="index-rows", daemon=True
            )
            self._follower.start()

    def _follow_rows(self) -> None:
        """The server's watcher: switch cached lean states to a manifest changed by another
        process (after an erasure there, its replaced segment must not stay open here)."""
        while not self._closing.wait(self.follow_rows_s):
            for model_key in list(self._loaded):
                try:
                    self.sync_rows(model_key)
                except Exception:  # the next search or tick tries again
                    log.exception("index rows: switch to the current segments failed")

    def _load_file(self, model_key: str, version: int) -> LoadedIndex | None:
        """The stored state, streamed from its segments; None when missing or unusable."""
        store = self.store(model_key)
        for _ in range(5):
            try:
                return self._read_store(store, version)
            except StaleManifest:
                continue  # a writer replaced a segment after the manifest was read: read again
            except (StoreError, ValueError, RuntimeError) as exc:
                log.warning("index %s unreadable (%s): rebuilding", store.folder.name, exc)
                return None
        log.warning("index %s kept changing while read: rebuilding", store.folder.name)
        return None

    def _read_store(self, store: SegmentStore, version: int) -> LoadedIndex | None:
        manifest = store.manifest()
        if manifest is None:
            log.info("index %s missing: rebuilding", store.folder.name)
            return None
        if manifest.version > version or manifest.dim != self.dim:
            # ahead of the database (restored from backup?) or another geometry: not usable
            log.info(
                "index %s unusable (v%s, gallery v%s)", store.folder.name, manifest.version, version
            )
            return None
        index = new_index(self.kind, self.dim)
        # A lean index (``lean``, or ``auto`` at its switch size) over the store's own row
        # files: codes built block by block, the vectors never held (search/segment_rows.py).
        # A flat index takes the vectors block by block (memory: the index plus one block);
        # other kinds get them in one call, as a rebuild gives them, since IVF trains its
        # quantiser on the first batch it is given.
        on_disk = self._rows_on_disk(index, manifest.rows)
        if on_disk:
            index = self._lean_from_store(index, store, manifest)
        try:
            return self._read_segments(store, manifest, index, on_disk)
        except BaseException:
            _close_rows(index)  # e.g. a piece replaced meanwhile: the caller reads again
            raise

    def _read_segments(
        self, store: SegmentStore, manifest: Manifest, index: VectorIndex, on_disk: bool
    ) -> LoadedIndex:
        streaming = self.kind == "flat"
        held: list[np.ndarray] = []
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for seg in manifest.segments:
            ids, sids, iids = store.read_ids(seg)
            parts.append((ids, sids, iids))
            if on_disk:
                continue
            with store.open_rows(seg) as rows:
                at = 0
                for block in rows.blocks():
                    if streaming:
                        index.add(ids[at : at + len(block)], np.asarray(block, np.float32))
                    else:
                        held.append(np.array(block, dtype=np.float32))
                    at += len(block)
        ids, sids, iids = (
            np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64)
            for i in range(3)
        )
        if held:
            index.add(ids, np.concatenate(held))
        self.stats["file"] += 1
        id_list = ids.tolist()
        return LoadedIndex(
            index,
            manifest.version,
            manifest.model_key,
            False,
            dict(zip(id_list, sids.tolist(), strict=True)),
            dict(zip(id_list, iids.tolist(), strict=True)),
        )

    @staticmethod
    def _rows_on_disk(index: VectorIndex, rows: int) -> bool:
        """Whether a state of ``rows`` templates re-ranks from the store's row files: a lean
        index that can train its codes, or an auto index at its switch size."""
        if isinstance(index, AutoIndex):
            return rows >= max(index.switch_at, LeanIndex.TRAIN_MIN)
        return isinstance(index, LeanIndex) and rows >= LeanIndex.TRAIN_MIN

    def _lean_from_store(
        self, index: VectorIndex, store: SegmentStore, manifest: Manifest
    ) -> VectorIndex:
        """A lean index whose rows stay in the store's files: the quantiser trained on a sample
        read as whole chunks from every segment, then the codes added one segment at a time."""
        rows = SegmentRows.open(store, manifest)
        try:
            lean = LeanIndex(self.dim, rows)
            lean.train(rows.sample(LeanIndex.TRAIN_ROWS))
            for ids, block in rows.blocks():
                lean.add_codes_only(ids, block)
            lean.trained_on = rows.count()  # the gallery it stands for, not the sample
        except BaseException:
            rows.close()
            raise
        if isinstance(index, AutoIndex):
            index.inner = lean
            return index
        return lean

    def sync_rows(self, model_key: str) -> bool:
        """Move a cached lean state's rows to the store's current segments; True if it did.

        Only when the manifest is at the state's own gallery version: then it names exactly the
        state's rows (both reflect the database at that version). Rows held in RAM (added since
        the last switch, or a lean index built in RAM by a rebuild or by the auto kind's switch)
        are dropped for the segments' copies, and the files of segments the manifest no longer
        names are closed, so a replaced segment (an erasure rewrite, a compaction) leaves the
        disk. Opening the new segments happens outside the lock; the switch itself under the
        exclusive lock, so no search is in flight on a file it closes. Called before every
        search (a stat when nothing changed) and after this process's persist and compaction.
        """
        cached = self._loaded.get(model_key)  # a hint: checked again under the lock
        lean = _lean_of(cached.index) if cached is not None else None
        if cached is None or lean is None or not isinstance(lean.rows, SegmentRows | MemoryRows):
            return False
        rows = lean.rows
        path = self.path_for(model_key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        seen = (st.st_ino, st.st_mtime_ns, st.st_size, id(cached), cached.version, id(rows))
        if self._rows_seen.get(model_key) == seen:
            return False
        with self._rows_lock:
            if self._rows_seen.get(model_key) == seen:
                return False
            store = self.store(model_key)
            try:
                manifest = store.manifest()
            except StoreError:
                manifest = None
            if manifest is None or manifest.version != cached.version or manifest.dim != self.dim:
                self._rows_seen[model_key] = seen  # look again when either changes
                return False
            old_view = rows.view if isinstance(rows, SegmentRows) else None
            try:
                view = SegmentView.open(store, manifest, reuse=old_view)
            except StaleManifest:
                return False  # a writer replaced a piece meanwhile: the next search looks again
            except StoreError as exc:
                log.warning("index %s: rows stay where they are (%s)", store.folder.name, exc)
                self._rows_seen[model_key] = seen
                return False
            with self._lock.write():
                still = (
                    self._loaded.get(model_key) is cached
                    and cached.version == manifest.version
                    and _lean_of(cached.index) is lean
                    and lean.rows is rows
                )
                done = False
                if still and isinstance(rows, SegmentRows):
                    done = rows.commit(view)  # closes what it does not keep
                elif still and isinstance(rows, MemoryRows):
                    moved = adopt(view, rows)
                    if moved is not None:
                        lean.rows = moved
                        done = True
                if not done and not (still and isinstance(rows, SegmentRows)):
                    view.close_except(old_view)
            self._rows_seen[model_key] = seen
            return done

    def _read_all(self, model_key: str) -> tuple[int, Added]:
        """Every template of this model in the database, decrypted, and the version it is at.

        The version is read before and after the templates and the read retried until both agree:
        on PostgreSQL (read committed) each statement sees its own snapshot, and every gallery
        change bumps the version in its own transaction, so equal versions mean the rows are
        exactly the state at that version (a mislabelled state would be re-applied or skipped).
        """
        with self.db.session() as s:
            while True:
                version = gallery_version(s)
                rows = s.execute(_templates(model_key).order_by(FaceTemplate.id)).all()
                s.expire_all()  # read the version row again, not from the session's identity map
                if gallery_version(s) == version:
                    break
                log.info("gallery changed during the index rebuild: reading it again")
        vectors = (
            np.stack(
                [
                    np.frombuffer(
                        self.cipher.decrypt(r[3], aad=template_aad(r[4], model_key)),
                        dtype=np.float32,
                    )
                    for r in rows
                ]
            )
            if rows
            else np.zeros((0, self.dim), np.float32)
        )
        return version, Added(
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.int64),
            vectors,
        )

    def rebuild(self, model_key: str) -> LoadedIndex:
        """Re-derive the index from every template of this model in the database, cache it, and
        write the store forward (a whole new one only where the change log cannot bridge)."""
        version, rows = self._read_all(model_key)
        self.stats["rebuild"] += 1
        index = new_index(self.kind, self.dim)
        if len(rows):
            index.add(rows.ids, rows.vectors)
        id_list = rows.ids.tolist()
        loaded = LoadedIndex(
            index,
            version,
            model_key,
            True,
            dict(zip(id_list, rows.subject_ids.tolist(), strict=True)),
            dict(zip(id_list, rows.image_ids.tolist(), strict=True)),
        )
        self._install(loaded)
        self.persist(model_key, whole=(version, rows))
        return loaded

    def persist(self, model_key: str, whole: tuple[int, Added] | None = None) -> None:
        """Write the stored index forward to the database's gallery version: under the store's
        writer lock, only what changed since the manifest's version (the change log), or a whole
        new state where the log cannot bridge (``whole`` if given and newer than the store).

        Never writes an older state over a newer one: the manifest's version only goes up.
        Compaction follows when due (in a background thread in the server).
        """
        store = self.store(model_key)
        with store.writer() as w:
            remove_legacy(self.folder, model_key)
            db_version = self._db_version()
            current = w.manifest
            if current is not None and current.version == db_version:
                due = self.policy.due(current)
            else:
                changes = None
                if current is not None and current.version < db_version:
                    changes = self._changes(model_key, current.version)
                if changes is not None:
                    version, added, removed = changes
                    if version > current.version:  # type: ignore[union-attr]
                        w.change(version, Added.of(added, self.dim), removed)
                        self.writes["delta"] += 1
                else:
                    # a store ahead of the database (restored from a backup?) is not usable
                    usable = current is not None and current.version <= db_version
                    if whole is None or (usable and current.version >= whole[0]):  # type: ignore[union-attr]
                        whole = self._read_all(model_key)
                    w.replace_all(*whole)
                    self.writes["full"] += 1
                due = w.manifest is not None and self.policy.due(w.manifest)
        self.sync_rows(model_key)  # a cached lean state lets go of the segments replaced
        if due:
            self._schedule_compaction(model_key)

    def compact(self, model_key: str, force: bool = False) -> bool:
        """Merge the store's deltas when due (or ``force``); True if it changed the store."""
        with self.store(model_key).writer() as w:
            done = w.compact(force)
        if done:
            self.writes["compaction"] += 1
            self.sync_rows(model_key)  # the merged segments' files are closed here
        return done

    def _schedule_compaction(self, model_key: str) -> None:
        if not self.compact_in_background:
            try:
                self.compact(model_key)
            except Exception:  # the change is persisted; a failed merge is retried next time
                log.exception("index compaction failed; the next writer retries")
            return
        with self._compacting_lock:
            running = self._compacting.get(model_key)
            if running is not None and running.is_alive():
                return

            def run() -> None:
                try:
                    self.compact(model_key)
                except Exception:  # the store is still whole (new pieces first, manifest last)
                    log.exception("index compaction failed; the next writer retries")

            thread = threading.Thread(target=run, name="index-compaction", daemon=True)
            self._compacting[model_key] = thread
            thread.start()

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        """Wait for background compactions started so far (tests, orderly shutdown)."""
        with self._compacting_lock:
            threads = list(self._compacting.values())
        for thread in threads:
            thread.join(timeout)

    def apply(
        self,
        model_key: str,
        new_version: int,
        added: list[tuple[int, int, int, np.ndarray]] | None = None,
        removed: list[int] | None = None,
        save: bool = False,
    ) -> None:
        """Follow a change committed at ``new_version``; if anyone else changed the gallery, the
        next reader reloads.

        Under the exclusive lock: no search sees the vectors, the maps and the version disagree.
        """
        try:
            with self._lock.write():
                self._follow(model_key, new_version, added or [], removed or [])
        finally:
            with self._applied:  # wake searches waiting for this change (or for its drop)
                self._applied.notify_all()
        if save:  # persisted even when nothing was cached: an erasure must leave the store
            self.persist(model_key)

    def _follow(
        self,
        model_key: str,
        new_version: int,
        added: list[tuple[int, int, int, np.ndarray]],
        removed: list[int],
    ) -> bool:
        """``apply``'s work, under the exclusive lock; False when the change was not applied."""
        cached = self._loaded.get(model_key)
        if cached is None or cached.version >= new_version:
            # nothing cached, or a reader already reloaded from the database after the commit
            return False
        if cached.version != new_version - 1:
            # another process's change came between: leave the state as it is; the next reader
            # finds it behind and catches up through the change log (both changes at once)
            return False
        try:
            if added:
                cached.index.add(
                    np.array([a[0] for a in added], dtype=np.int64),
                    np.stack([a[3] for a in added]),
                )
                for tid, sid, iid, _ in added:
                    cached.subject_of[tid] = sid
                    cached.image_of[tid] = iid
                    cached.note_added(tid, sid)
            if removed:
                cached.index.remove(np.array(removed, dtype=np.int64))
                for tid in removed:
                    cached.subject_of.pop(tid, None)
                    cached.image_of.pop(tid, None)
        except BaseException:
            del self._loaded[model_key]  # never leave a half-applied state to search
            _close_rows(cached.index)
            raise
        cached.version = new_version
        return True

    def invalidate(self) -> None:
        """Drop every cached state (the next search loads again); their row files are closed."""
        with self._lock.write():
            for loaded in self._loaded.values():
                _close_rows(loaded.index)
            self._loaded.clear()

    def close(self) -> None:
        """Release the cached states and their open files (the process is done searching)."""
        self._closing.set()
        if self._follower is not None:
            self._follower.join(30)
        self.wait_for_compaction()
        self.invalidate()

    def save(self, loaded: LoadedIndex | None = None, model_key: str | None = None) -> None:
        """Write the store forward to the database (``persist``; kept for callers of the
        single-file era). The store reflects the database, never an in-memory state: a state
        older than the store is never written over it."""
        key = loaded.model_key if loaded is not None else model_key
        if key is not None:
            self.persist(key)


def _lean_of(index: VectorIndex) -> LeanIndex | None:
    """The lean index serving ``index`` (itself, or an auto index's choice), once it has codes."""
    inner = index.inner if isinstance(index, AutoIndex) else index
    return inner if isinstance(inner, LeanIndex) and inner.codes is not None else None


def _close_rows(index: VectorIndex) -> None:
    """Close a dropped state's row files (under the exclusive lock: no search is using them)."""
    inner = index.inner if isinstance(index, AutoIndex) else index
    if isinstance(inner, LeanIndex) and isinstance(inner.rows, SegmentRows):
        inner.rows.close()
