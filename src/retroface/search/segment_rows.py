"""The lean index's full-precision rows, read from the segment store's own row files.

The lean index keeps 32-byte codes per template in RAM and re-ranks a shortlist exactly from the
float32 rows (``search/index.py``). Held in RAM (``MemoryRows``) those rows are 2 KB per template,
20 GB at 10M; the segment store (``search/segments.py``) already holds every one of them,
encrypted in fixed-size chunks. ``SegmentRows`` serves the re-rank from those files: the ids of
every segment stay in RAM (8 bytes per row, plus 16 for the sorted lookup), and a search preads
and decrypts only the chunks its shortlist falls in. No second copy of the vectors is written.

What is where:

- rows of the segments named by the manifest the source was opened at (a *view*): read by pread;
- rows added in this process since then (enrolments applied, changes caught up from other
  processes): kept in RAM (``MemoryRows``, 2 KB each) until the next switch, because a delta of
  this process's change is written only after the change is applied, and one written by another
  process may be ahead of or behind this state;
- rows removed since then: dropped at once from RAM (the tail's copy is overwritten); a removed
  row still in an open segment is only marked, until the switch below, since its file is shared
  with every other process until the writer replaces it.

Switching (the new ``SegmentView`` opened outside the manager's lock, ``commit`` under its
exclusive lock): when the store's manifest is at the same gallery version as the in-memory state,
the manifest names exactly the rows of that state (both reflect the database at that version),
so the source moves to the manifest's segments, empties its tail and closes the files of segments
the manifest no longer names. Closing matters for erasure: a deleted file stays on disk while any
process holds it open, so a server that kept the erased segment open would keep the erased
vector's bytes on disk. The manager switches after its own persist and compaction, when a search
finds the manifest changed (one ``stat``), and in the server every ``follow_rows_s``; the switch
runs under the exclusive lock, so no search is in flight on the files it closes, and no search
sees half of a switch.

Decrypted rows a search reads are transient arrays, freed (not overwritten) after the re-rank,
as with every other read of a template.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from retroface.search.index import FloatArray, IdArray, MemoryRows
from retroface.search.segments import Manifest, Segment, SegmentStore
from retroface.storage.rowfile import RowFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Open:
    """One segment's open row file and its template ids (row order)."""

    segment: Segment
    rows: RowFile
    ids: IdArray
    slot: int  # stable number of this open file across views


@dataclass(frozen=True)
class SegmentView:
    """The segments of one manifest, open, with a sorted id -> (slot, row) lookup.

    The lookup is three arrays (16 bytes a row: 160 MB at 10M) rather than a dict (~100 bytes a
    row). A newer manifest's view is derived from the current one in O(rows) without a sort of
    the whole gallery (``open`` with ``reuse``): the rows of dropped segments are filtered out
    and only the new segments' ids are sorted and merged in.
    """

    version: int
    segments: tuple[_Open, ...]
    keys: IdArray  # template ids, sorted
    slot: NDArray[np.int32]  # the open file holding each
    row: NDArray[np.int64]  # its row in that file
    next_slot: int

    @classmethod
    def open(
        cls, store: SegmentStore, manifest: Manifest, reuse: SegmentView | None = None
    ) -> SegmentView:
        """Open the manifest's segments, sharing the files ``reuse`` has open already.

        Raises ``StaleManifest`` when a piece is gone (a writer replaced it: read the manifest
        again); files opened here are closed again on any failure.
        """
        have = {o.segment.name: o for o in reuse.segments} if reuse is not None else {}
        slot = reuse.next_slot if reuse is not None else 0
        opened: list[_Open] = []
        fresh: list[_Open] = []
        try:
            for seg in manifest.segments:
                known = have.get(seg.name)
                if known is not None and known.segment == seg:
                    opened.append(known)
                    continue
                ids = store.read_ids(seg)[0]
                rf = store.open_rows(seg)
                one = _Open(seg, rf, ids, slot)
                slot += 1
                fresh.append(one)
                opened.append(one)
        except BaseException:
            for one in fresh:
                one.rows.close()
            raise
        keys, slots, rows = _sorted_map(fresh)
        if reuse is not None and len(reuse.keys):
            kept = {o.slot for o in opened}
            gone = [o.slot for o in reuse.segments if o.slot not in kept]
            old_k, old_s, old_r = reuse.keys, reuse.slot, reuse.row
            if gone:
                keep = ~np.isin(old_s, np.array(gone, dtype=np.int32))
                old_k, old_s, old_r = old_k[keep], old_s[keep], old_r[keep]
            at = np.searchsorted(old_k, keys)
            keys = np.insert(old_k, at, keys)
            slots = np.insert(old_s, at, slots)
            rows = np.insert(old_r, at, rows)
        return cls(manifest.version, tuple(opened), keys, slots, rows, slot)

    @property
    def rows(self) -> int:
        return len(self.keys)

    def close_except(self, keep: SegmentView | None) -> None:
        """Close the files of this view's segments that ``keep`` does not share."""
        kept = {o.slot for o in keep.segments} if keep is not None else set()
        for o in self.segments:
            if o.slot not in kept:
                o.rows.close()

    def present(self, ids: IdArray) -> NDArray[np.bool_]:
        q = np.asarray(ids, dtype=np.int64)
        if len(self.keys) == 0:
            return np.zeros(len(q), dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return np.asarray(self.keys[at] == q)

    def locate(self, ids: IdArray) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
        """(slot, row) of each id; ``KeyError`` if one is not in the view."""
        q = np.asarray(ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, q), max(0, len(self.keys) - 1))
        if len(self.keys) == 0 or not np.array_equal(self.keys[at], q):
            raise KeyError("id not in the segments")
        return self.slot[at], self.row[at]

    def take(self, ids: IdArray) -> FloatArray:
        """The rows of ``ids``: one pread + decrypt per distinct chunk, none for the rest."""
        slots, rows = self.locate(ids)
        by_slot = {o.slot: o for o in self.segments}
        dim = self.segments[0].rows.dim if self.segments else 0
        out = np.empty((len(rows), dim), dtype=np.float32)
        for s in np.unique(slots).tolist():
            sel = slots == s
            out[sel] = by_slot[s].rows.take(rows[sel])
        return out


def _sorted_map(
    opened: list[_Open],
) -> tuple[IdArray, NDArray[np.int32], NDArray[np.int64]]:
    if not opened:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
    keys = np.concatenate([o.ids for o in opened])
    slots = np.concatenate([np.full(len(o.ids), o.slot, dtype=np.int32) for o in opened])
    rows = np.concatenate([np.arange(len(o.ids), dtype=np.int64) for o in opened])
    order = np.argsort(keys, kind="stable")
    return keys[order], slots[order], rows[order]


class SegmentRows:
    """A ``RowSource`` over a segment store's row files (see the module docstring).

    ``vectors`` may run in many threads at once (the manager's shared lock); ``add``, ``remove``
    and ``commit`` only under its exclusive lock.
    """

    def __init__(self, view: SegmentView, dim: int) -> None:
        self.dim = dim
        self.view = view
        self._tail = MemoryRows(dim)
        # ids removed since the view was opened whose rows are still in its files
        self._dead: set[int] = set()

    @classmethod
    def open(cls, store: SegmentStore, manifest: Manifest) -> SegmentRows:
        return cls(SegmentView.open(store, manifest), store.dim)

    @property
    def version(self) -> int:
        """The gallery version of the manifest the segments were opened at."""
        return self.view.version

    @property
    def in_ram(self) -> int:
        """Rows held in RAM (added since the last switch)."""
        return self._tail.count()

    def close(self) -> None:
        self.view.close_except(None)

    # ---- RowSource
    def vectors(self, ids: IdArray) -> FloatArray:
        q = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(q), self.dim), dtype=np.float32)
        # the tail first: an id erased and then reused (SQLite may reuse the largest id) has its
        # new row in the tail and its old one, marked dead, still in a segment
        in_tail = self._tail.present(q)
        if in_tail.any():
            out[in_tail] = self._tail.vectors(q[in_tail])
        if not in_tail.all():
            out[~in_tail] = self.view.take(q[~in_tail])
        return out

    def _live_in_view(self, ids: IdArray) -> NDArray[np.bool_]:
        inside = self.view.present(ids)
        if self._dead:
            inside &= ~np.isin(ids, np.fromiter(self._dead, dtype=np.int64))
        return inside

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        q = np.asarray(ids, dtype=np.int64)
        if len(q) == 0:
            return
        new = ~self._live_in_view(q)  # rows already in an open segment are not copied
        if new.any():
            v = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
            self._tail.add(q[new], v[new])

    def remove(self, ids: IdArray) -> int:
        q = np.unique(np.asarray(ids, dtype=np.int64))
        n = self._tail.remove(q)  # overwrites the tail's copy
        in_view = self._live_in_view(q)
        self._dead.update(q[in_view].tolist())
        return n + int(in_view.sum())

    def count(self) -> int:
        return self.view.rows - len(self._dead) + self._tail.count()

    # ---- streaming (training, retraining, a move back to an exact index)
    def sample(self, n: int) -> FloatArray:
        """About ``n`` live rows spread over every segment, read as 16 contiguous runs per
        segment: sequential reads (65,536 scattered one-row reads took minutes on a cold disk)."""
        total = self.view.rows
        dead = np.fromiter(self._dead, dtype=np.int64) if self._dead else None
        parts: list[FloatArray] = []
        for o in self.view.segments:
            size = len(o.ids)
            want = min(size, -(-n * size // max(total, 1)))
            if want == 0:
                continue
            runs = min(16, want)
            length = -(-want // runs)
            if runs * length >= size:  # (nearly) all of it: one run, no row twice
                runs, length = 1, want
            for start in np.linspace(0, size - length, runs).astype(np.int64).tolist():
                block = np.asarray(o.rows.range(start, start + length), dtype=np.float32)
                if dead is not None:
                    block = block[~np.isin(o.ids[start : start + length], dead)]
                parts.append(block)
        if self._tail.count():
            parts.append(self._tail.all()[1][:n])
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def blocks(self) -> Iterator[tuple[IdArray, FloatArray]]:
        """Every live row as (ids, vectors) blocks of at most one segment (bounded memory)."""
        dead = np.fromiter(self._dead, dtype=np.int64) if self._dead else None
        for o in self.view.segments:
            at = 0
            for block in o.rows.blocks():
                ids = o.ids[at : at + len(block)]
                at += len(block)
                v = np.asarray(block, dtype=np.float32)
                if dead is not None:
                    keep = ~np.isin(ids, dead)
                    ids, v = ids[keep], v[keep]
                yield ids, v
        if self._tail.count():
            yield self._tail.all()

    def all(self) -> tuple[IdArray, FloatArray]:
        parts = list(self.blocks())
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    # ---- switching to a newer manifest
    def commit(self, view: SegmentView) -> bool:
        """Move to ``view`` if it holds exactly this source's live rows; under the exclusive lock.

        The caller has checked that ``view`` is at the gallery version of the in-memory state;
        this checks the ids as well. True when switched (the tail is emptied and the files no
        longer named are closed); False leaves everything as it was and closes what ``view``
        opened.
        """
        if view is self.view:
            return True
        if not self._holds_exactly(view):
            log.warning(
                "index rows: manifest v%s does not match the state; not switched", view.version
            )
            view.close_except(self.view)
            return False
        old = self.view
        self.view = view
        self._dead = set()
        self._tail = MemoryRows(self.dim)  # every tail row is in the view's segments now
        old.close_except(view)
        return True

    def _holds_exactly(self, view: SegmentView) -> bool:
        """Whether ``view``'s ids are this source's live ids: cost in proportion to the segments
        that changed, not to the gallery (a shared segment is known row by row already)."""
        if view.rows != self.count():
            return False
        shared = {o.slot for o in view.segments}
        if self._dead:
            # the segments holding a dead row must all be gone from the view
            holders, _ = self.view.locate(np.fromiter(self._dead, dtype=np.int64))
            if shared & set(holders.tolist()):
                return False
        mine = {o.slot for o in self.view.segments}
        for o in view.segments:
            if (
                o.slot not in mine
                and not (self._tail.present(o.ids) | self._live_in_view(o.ids)).all()
            ):
                return False
        # every id of the view is live and the counts agree (a manifest names no id twice)
        return True


def adopt(view: SegmentView, rows: MemoryRows) -> SegmentRows | None:
    """A ``SegmentRows`` over ``view`` in place of in-RAM rows holding exactly its ids, or None
    (under the exclusive lock: ``rows`` must not change meanwhile)."""
    ids = rows.ids()
    if len(ids) != view.rows or not view.present(ids).all():
        return None
    return SegmentRows(view, rows.dim)
