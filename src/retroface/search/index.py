"""Vector indexes behind one small protocol.

Exact inner-product search (FAISS flat) is the default: at 100k templates it is already fast, and
a candidate list must never silently miss a mate. The approximate modes (IVF, HNSW) are for very
large galleries; both score their shortlist exactly (IVF-Flat keeps whole vectors; HNSW re-ranks
against the stored vectors), so only which templates are looked at is approximate.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
from numpy.typing import NDArray

from retroface.storage.crypto import Cipher
from retroface.storage.rowfile import RowFile, write_rows
from retroface.vision.types import FloatArray

IdArray = NDArray[np.int64]


class VectorIndex(Protocol):
    dim: int

    def add(self, ids: IdArray, vectors: FloatArray) -> None: ...

    def remove(self, ids: IdArray) -> int: ...

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        """Top-k similarities and ids per query, best first; missing slots have id -1."""
        ...

    def count(self) -> int: ...

    def to_bytes(self) -> bytes: ...


def _as_queries(queries: FloatArray, dim: int) -> FloatArray:
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if q.shape[1] != dim:
        raise ValueError(f"query has {q.shape[1]} dimensions, index has {dim}")
    return q


class FlatIndex:
    """Exact cosine search (vectors are unit length, so inner product = cosine)."""

    kind = "flat"

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        if len(ids) == 0:
            return
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.add_with_ids(v, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: IdArray) -> int:
        if len(ids) == 0:
            return 0
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        return int(self.index.remove_ids(selector))

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        q = _as_queries(queries, self.dim)
        k = max(1, min(k, self.count()))
        if self.count() == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, ids = self.index.search(q, k)
        return scores, ids

    def count(self) -> int:
        return int(self.index.ntotal)

    def to_bytes(self) -> bytes:
        return bytes(faiss.serialize_index(self.index))

    @classmethod
    def from_bytes(cls, data: bytes) -> FlatIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index.d, index)


class HnswIndex:
    """Approximate shortlist from HNSW, then exact re-ranking against the stored vectors.

    HNSW cannot delete, so removed ids are tombstoned and filtered; the gallery version change
    that a removal causes makes the manager rebuild the index on its next load.
    """

    kind = "hnsw"

    def __init__(self, dim: int, m: int = 32, ef_search: int = 500, shortlist: int = 500) -> None:
        self.dim = dim
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = 80
        self.index.hnsw.efSearch = ef_search
        self.shortlist = shortlist
        self.ids = np.zeros((0,), dtype=np.int64)
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.removed: set[int] = set()
        self._owner: object = None

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        if len(ids) == 0:
            return
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.add(v)
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64)])
        self.vectors = np.concatenate([self.vectors, v])

    def remove(self, ids: IdArray) -> int:
        present = set(self.ids.tolist())
        new = {int(i) for i in ids if int(i) in present} - self.removed
        self.removed |= new
        return len(new)

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        q = _as_queries(queries, self.dim)
        n = len(self.ids)
        k_out = max(1, min(k, self.count()))
        if self.count() == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        # the same value every time: harmless to searches running in parallel (shared lock)
        self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, self.shortlist)
        _, rows = self.index.search(q, min(n, max(self.shortlist, k_out + len(self.removed))))
        out_s = np.full((len(q), k_out), -np.inf, dtype=np.float32)
        out_i = np.full((len(q), k_out), -1, dtype=np.int64)
        for qi in range(len(q)):
            r = rows[qi][rows[qi] >= 0]
            if self.removed:
                r = r[~np.isin(self.ids[r], np.fromiter(self.removed, dtype=np.int64))]
            exact = self.vectors[r] @ q[qi]  # exact re-rank of the shortlist
            order = np.argsort(-exact)[:k_out]
            out_s[qi, : len(order)] = exact[order]
            out_i[qi, : len(order)] = self.ids[r[order]]
        return out_s, out_i

    def count(self) -> int:
        return len(self.ids) - len(self.removed)

    def to_bytes(self) -> bytes:
        if self.removed:  # compact: a graph with tombstones is rebuilt without them
            keep = ~np.isin(self.ids, np.fromiter(self.removed, dtype=np.int64))
            fresh = HnswIndex(self.dim, shortlist=self.shortlist)
            fresh.add(self.ids[keep], self.vectors[keep])
            return fresh.to_bytes()
        buf = io.BytesIO()
        graph = np.asarray(faiss.serialize_index(self.index), dtype=np.uint8)
        np.savez(buf, graph=graph, ids=self.ids, vectors=self.vectors)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> HnswIndex:
        arrays = np.load(io.BytesIO(data))
        vectors = arrays["vectors"]
        idx = cls(int(vectors.shape[1]))
        owner = faiss.deserialize_index(arrays["graph"])
        idx.index = faiss.downcast_index(owner)  # type: ignore[assignment]
        idx._owner = owner  # the downcast view does not own the memory: keep its owner alive
        idx.ids = arrays["ids"].astype(np.int64)
        idx.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return idx


class IvfIndex:
    """Approximate inverted-file index (FAISS IVF-Flat) for very large galleries.

    The vectors in each list are stored whole, so the scores of the shortlist (every vector in
    the ``nprobe`` lists nearest the query) are exact inner products: only which vectors are
    looked at is approximate. The coarse quantiser is trained on the first batch added, which
    is the whole gallery when the index manager rebuilds; much later growth is absorbed by the
    rebuild that every gallery version change triggers on load.
    """

    kind = "ivf"

    def __init__(self, dim: int, probe_share: float = 0.125, min_probe: int = 32) -> None:
        self.dim = dim
        # Mates at cosine 0.5 often sit in a list whose centre is far from the query: probing
        # 48 of 1,264 lists lost 8% of them at 100k; probing an eighth of the lists keeps the
        # scan at an eighth of flat search's.
        self.probe_share = probe_share
        self.min_probe = min_probe
        self.index: faiss.IndexIVFFlat | None = None
        self._owner: object = None

    @staticmethod
    def lists_for(n: int) -> int:
        # about 4 sqrt(n) lists, but never fewer than 39 training points per list (FAISS's floor)
        return int(max(1, min(16384, 4 * np.sqrt(n), n // 39)))

    def _build(self, vectors: FloatArray) -> faiss.IndexIVFFlat:
        nlist = self.lists_for(len(vectors))
        quantiser = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantiser, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors
        if len(vectors) > 64 * nlist:
            sample = vectors[rng.choice(len(vectors), 64 * nlist, replace=False)]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        return index

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        if len(ids) == 0:
            return
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.index is None:
            self.index = self._build(v)
        self.index.add_with_ids(v, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: IdArray) -> int:
        if self.index is None or len(ids) == 0:
            return 0
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        return int(self.index.remove_ids(selector))

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        q = _as_queries(queries, self.dim)
        if self.index is None or self.count() == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        nlist = self.index.nlist
        # the same value every time: harmless to searches running in parallel (shared lock)
        self.index.nprobe = min(nlist, max(self.min_probe, round(nlist * self.probe_share)))
        scores, ids = self.index.search(q, max(1, min(k, self.count())))
        return scores, ids

    def count(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def to_bytes(self) -> bytes:
        if self.index is None:
            return b""
        return bytes(faiss.serialize_index(self.index))

    @classmethod
    def from_bytes(cls, data: bytes) -> IvfIndex:
        if not data:
            raise ValueError("empty IVF index")
        owner = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        out = cls(int(owner.d))
        out.index = faiss.downcast_index(owner)  # type: ignore[assignment]
        out._owner = owner  # the downcast view does not own the memory: keep its owner alive
        return out


# --------------------------------------------------------------------------------------------
# Compressed codes in RAM, exact re-rank from full-precision rows kept elsewhere
# --------------------------------------------------------------------------------------------


class RowSource(Protocol):
    """Where the full-precision vectors of a compressed index live (RAM or an encrypted file).

    The compressed codes only choose a shortlist; its order and scores come from these rows, so
    every score a caller sees is an exact cosine.
    """

    dim: int

    def vectors(self, ids: IdArray) -> FloatArray:
        """float32 rows for ``ids`` (each present), in that order."""
        ...

    def add(self, ids: IdArray, vectors: FloatArray) -> None: ...

    def remove(self, ids: IdArray) -> int:
        """Delete the rows of ``ids`` (really: no copy left in memory or in a file)."""
        ...

    def count(self) -> int: ...


class _IdMap:
    """id -> row position over an append-only id array, with a sorted view for lookups.

    A Python dict of 10M ints costs ~1 GB; a sorted copy of the ids plus its permutation costs
    160 MB and looks up a 2,000-id shortlist in ~0.1 ms (np.searchsorted).
    """

    def __init__(self, ids: IdArray) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]

    def positions(self, ids: IdArray) -> NDArray[np.int64]:
        q = np.asarray(ids, dtype=np.int64)
        at = np.searchsorted(self._sorted, q)
        at = np.minimum(at, max(0, len(self._sorted) - 1))
        if len(self._sorted) == 0 or not np.array_equal(self._sorted[at], q):
            raise KeyError("id not in the row source")
        return np.asarray(self._order[at], dtype=np.int64)

    def present(self, ids: IdArray) -> NDArray[np.bool_]:
        q = np.asarray(ids, dtype=np.int64)
        if len(self._sorted) == 0:
            return np.zeros(len(q), dtype=bool)
        at = np.minimum(np.searchsorted(self._sorted, q), len(self._sorted) - 1)
        return np.asarray(self._sorted[at] == q)


class MemoryRows:
    """Full-precision rows in RAM (small and medium galleries: 2 KB per template)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._n = 0
        self._map = _IdMap(np.zeros((0,), dtype=np.int64))

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        if len(ids) == 0:
            return
        v = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        need = self._n + len(v)
        if need > len(self._vectors):  # grow by doubling: streamed blocks stay O(n) overall
            grown = np.empty((max(need, 2 * len(self._vectors)), self.dim), dtype=np.float32)
            grown[: self._n] = self._vectors[: self._n]
            self._vectors = grown
        self._vectors[self._n : need] = v
        self._n = need
        self._map = _IdMap(np.concatenate([self._map.ids, np.asarray(ids, dtype=np.int64)]))

    def remove(self, ids: IdArray) -> int:
        gone = self._map.present(ids)
        if not gone.any():
            return 0
        keep = np.ones(self._n, dtype=bool)
        keep[self._map.positions(np.asarray(ids, dtype=np.int64)[gone])] = False
        kept = self._vectors[: self._n][keep]
        self._vectors[: self._n].fill(0)  # overwrite the erased rows, not just forget them
        self._vectors = np.ascontiguousarray(kept)
        self._n = len(kept)
        self._map = _IdMap(self._map.ids[keep])
        return int(self._n_removed(keep))

    @staticmethod
    def _n_removed(keep: NDArray[np.bool_]) -> int:
        return int((~keep).sum())

    def vectors(self, ids: IdArray) -> FloatArray:
        return self._vectors[self._map.positions(ids)]

    def present(self, ids: IdArray) -> NDArray[np.bool_]:
        """Which of ``ids`` have a row here."""
        return self._map.present(ids)

    def ids(self) -> IdArray:
        """The ids of the rows, in row order (a copy)."""
        return self._map.ids.copy()

    def count(self) -> int:
        return self._n

    def all(self) -> tuple[IdArray, FloatArray]:
        return self._map.ids.copy(), self._vectors[: self._n].copy()


class RowFileRows:
    """Full-precision rows encrypted on disk (``storage.rowfile``), read only for a shortlist.

    At 10M templates the vectors are 20 GB: they stay in the file, encrypted in chunks of
    ``chunk_rows`` rows, and a search decrypts only the chunks its shortlist falls in. The ids
    (8 bytes per row) stay in RAM. Rows added after the file was written are kept in RAM until
    ``compact``; a removal rewrites the file without the removed rows (streamed, bounded memory)
    and deletes the old one, so an erased vector is not left on disk behind a flag.
    """

    def __init__(
        self,
        path: Path,
        cipher: Cipher,
        *,
        context: bytes = b"",
        chunk_rows: int = 1,
    ) -> None:
        self.path = path
        self.cipher = cipher
        self.context = context
        self.chunk_rows = chunk_rows
        self._file: RowFile | None = None
        self._map = _IdMap(np.zeros((0,), dtype=np.int64))
        self._tail = MemoryRows(0)
        self.dim = 0
        if path.exists():
            self._open()

    def _ids_path(self) -> Path:
        return self.path.with_name(self.path.name + ".ids")

    def _open(self) -> None:
        self._file = RowFile(self.path, self.cipher, context=self.context)
        with RowFile(self._ids_path(), self.cipher, context=self.context + b":ids") as f:
            ids = np.asarray(f.read_all(), dtype=np.int64).reshape(-1)
        if len(ids) != self._file.rows:
            raise ValueError(f"{self.path.name}: ids and rows differ in count")
        self.dim = self._file.dim
        self._map = _IdMap(ids)
        if self._tail.dim != self.dim:
            self._tail = MemoryRows(self.dim)

    @classmethod
    def write(
        cls,
        path: Path,
        cipher: Cipher,
        blocks: Iterable[tuple[IdArray, FloatArray]],
        *,
        dim: int,
        context: bytes = b"",
        chunk_rows: int = 1,
    ) -> RowFileRows:
        """Write (ids, vectors) blocks as a new row file; memory bounded by one block."""
        id_blocks: list[IdArray] = []

        def rows() -> Iterator[FloatArray]:
            for ids, vectors in blocks:
                id_blocks.append(np.asarray(ids, dtype=np.int64))
                yield np.asarray(vectors, dtype=np.float32)

        write_rows(path, cipher, rows(), dim=dim, context=context, chunk_rows=chunk_rows)
        all_ids = np.concatenate(id_blocks) if id_blocks else np.zeros((0,), np.int64)
        write_rows(
            path.with_name(path.name + ".ids"),
            cipher,
            [all_ids.reshape(-1, 1)],
            dim=1,
            dtype=np.int64,
            context=context + b":ids",
            chunk_rows=65536,
        )
        return cls(path, cipher, context=context, chunk_rows=chunk_rows)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        if len(ids) == 0:
            return
        if self.dim == 0:
            self.dim = int(np.asarray(vectors).shape[1])
            self._tail = MemoryRows(self.dim)
        self._tail.add(ids, vectors)

    def vectors(self, ids: IdArray) -> FloatArray:
        q = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(q), self.dim), dtype=np.float32)
        in_file = self._map.present(q)
        if in_file.any():
            assert self._file is not None
            out[in_file] = self._file.take(self._map.positions(q[in_file]))
        if not in_file.all():
            out[~in_file] = self._tail.vectors(q[~in_file])
        return out

    def _blocks(self, drop: NDArray[np.bool_] | None) -> Iterator[tuple[IdArray, FloatArray]]:
        if self._file is not None:
            at = 0
            for block in self._file.blocks():
                n = len(block)
                keep = slice(None) if drop is None else ~drop[at : at + n]
                yield self._map.ids[at : at + n][keep], np.asarray(block, np.float32)[keep]
                at += n
        if self._tail.count():
            yield self._tail.all()

    def compact(self, drop: NDArray[np.bool_] | None = None) -> None:
        """Rewrite the file with the rows added since (and without ``drop``), then swap it in."""
        new = self.path.with_name(self.path.name + ".new")
        RowFileRows.write(
            new,
            self.cipher,
            self._blocks(drop),
            dim=self.dim,
            context=self.context,
            chunk_rows=self.chunk_rows,
        )
        self.close()
        os.replace(new.with_name(new.name + ".ids"), self._ids_path())
        os.replace(new, self.path)  # the old file's blocks are freed: the erased rows are gone
        self._tail = MemoryRows(self.dim)
        self._open()

    def remove(self, ids: IdArray) -> int:
        q = np.asarray(ids, dtype=np.int64)
        n = self._tail.remove(q)
        in_file = self._map.present(q)
        if in_file.any():
            drop = np.zeros(len(self._map.ids), dtype=bool)
            drop[self._map.positions(q[in_file])] = True
            n += int(drop.sum())
            self.compact(drop)
        return n

    def count(self) -> int:
        return len(self._map.ids) + self._tail.count()


def _one_thread() -> None:
    """FAISS's OpenMP thread count: one, for searching and for building.

    One query gets one thread: measured here, faiss with 2 threads per single query was slower
    than 1, and parallelism comes from queries searched at the same time (threads; faiss releases
    the GIL). Building too: on this 2-core machine under load, training the product quantiser
    took 79 s with 2 OpenMP threads (their spin-waits compete with every other process) and
    2.3 s with one.
    """
    faiss.omp_set_num_threads(1)


@dataclass(frozen=True)
class LeanPlan:
    """How many code-ranked candidates the lean index re-ranks exactly (bench/scale.py)."""

    shortlist: int


class LeanIndex:
    """Every template as a 32-byte product-quantised code (FAISS 4-bit fast-scan), all of them
    scanned per query, then an exact re-rank of a generous shortlist from full-precision rows.

    RAM holds 33 bytes of code and 8 of id per template (1M: 41 MB; 10M: 410 MB) instead of 2 KB
    of float32. No coarse partition (IVF) at all: measured on clustered galleries with mates at
    cosine 0.35-0.7, probing an eighth of IVF lists lost 9% of mates at 50k (a low-similarity
    probe's nearest lists are often not its mate's), whereas scanning all the 4-bit codes in
    fast-scan layout costs ~3.5 ns per template on one core (0.7 ms at 200k) and kept every mate
    in a 500-long shortlist. The codes only choose the shortlist (best ``shortlist`` by code
    score); its full-precision rows come from a ``RowSource`` (RAM, or an encrypted row file on
    disk) and are scored exactly, so every score returned is a true cosine and only which
    templates are looked at is approximate. ``plan_for`` sets the shortlist from the gallery size
    as measured by bench/scale.py.
    """

    kind = "lean"
    #: product quantiser: 64 sub-vectors of 8 dimensions, 4 bits each (fast-scan layout)
    PQ_M = 64
    PQ_BITS = 4
    #: rows the quantiser is trained on (16 centroids per sub-quantiser: 64k points is plenty)
    TRAIN_ROWS = 65_536
    #: below this many rows (in RAM) there are no codes yet and every search is exact
    TRAIN_MIN = 1024

    def __init__(self, dim: int, rows: RowSource | None = None) -> None:
        self.dim = dim
        self.rows: RowSource = rows if rows is not None else MemoryRows(dim)
        #: the codes in plain layout, row order = ``ids`` order; the source of truth
        self.codes: faiss.IndexPQ | None = None
        #: the same codes in fast-scan layout, what a search scans (rebuilt from ``codes``)
        self.index: faiss.IndexPQFastScan | None = None
        self.ids = np.zeros((0,), dtype=np.int64)
        self.trained_on = 0
        self._owner: object = None

    @staticmethod
    def plan_for(n: int) -> LeanPlan:
        # Measured (docs/performance.md, "National scale"), LFW mates among 1M LFW-like
        # distractors: shortlist 1,000 lost 4 of 3,283 mates (0.12%), 2,000 lost 3 (0.09%) at
        # 24 ms CPU per query; synthetic 1M lost none at 1,000. The shortlist grows with the
        # gallery (more impostors come near a weak mate once code error is added). Synthetic
        # 10M (bench/scale.py --code-ranks): 4,000 lost 1 of 1,000 mates (0.1%, the target's
        # limit; that mate ranks beyond 8,000 by code), 2,000 lost 2, 1,000 lost 5; a 10M query
        # costs 101 / 149 ms of CPU (p50 / p99), plus the disk reads of rows not in the cache.
        shortlist = 2000 if n <= 2_000_000 else 4000
        return LeanPlan(shortlist=min(shortlist, max(n, 1)))

    def train(self, sample: FloatArray) -> None:
        """Train the product quantiser on ``sample`` (before any add)."""
        v = np.ascontiguousarray(sample, dtype=np.float32)
        codes = faiss.IndexPQ(self.dim, self.PQ_M, self.PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        if len(v) > self.TRAIN_ROWS:
            v = v[np.random.default_rng(0).choice(len(v), self.TRAIN_ROWS, replace=False)]
        _one_thread()
        codes.train(v)
        self.codes = codes
        self.index = faiss.IndexPQFastScan(codes)  # type: ignore[arg-type]
        self.ids = np.zeros((0,), dtype=np.int64)
        self.trained_on = len(sample)

    def _encode(self, ids: IdArray, vectors: FloatArray) -> NDArray[np.int64]:
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.codes is None:
            self.train(v)
        assert self.codes is not None and self.index is not None
        i = np.ascontiguousarray(ids, dtype=np.int64)
        _one_thread()
        self.codes.add(v)
        self.index.add(v)
        self.ids = np.concatenate([self.ids, i])
        return i

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        if len(ids) == 0:
            return
        if self.codes is None and isinstance(self.rows, MemoryRows):
            # a tiny gallery is searched exactly until there is enough to train the codes on
            self.rows.add(ids, np.ascontiguousarray(vectors, dtype=np.float32))
            if self.rows.count() >= self.TRAIN_MIN:
                all_ids, all_vectors = self.rows.all()
                self._encode(all_ids, all_vectors)
            return
        i = self._encode(ids, vectors)
        if not isinstance(self.rows, RowFileRows) or not self.rows._map.present(i).all():
            self.rows.add(i, np.ascontiguousarray(vectors, dtype=np.float32))

    def add_codes_only(self, ids: IdArray, vectors: FloatArray) -> None:
        """Add to the codes only: for rows already in the row source (a file written first)."""
        if len(ids):
            self._encode(ids, vectors)

    def remove(self, ids: IdArray) -> int:
        if len(ids) == 0:
            return 0
        if self.codes is None:
            return self.rows.remove(np.asarray(ids, dtype=np.int64))
        drop = np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        if not drop.any():
            return 0
        # The plain codes shift down in order (IndexFlatCodes.remove_ids), so ``ids`` stays
        # aligned; the fast-scan copy is rebuilt from them (0.08 s per 200k), because adding to
        # a fast-scan index after removing from it misplaced ids in FAISS 1.15 (reproduced in
        # tests/test_lean_index.py: remove, then add, then search for the added).
        self.codes.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(drop).astype(np.int64)))
        self.ids = self.ids[~drop]
        self.index = faiss.IndexPQFastScan(self.codes)  # type: ignore[arg-type]
        self.rows.remove(np.asarray(ids, dtype=np.int64))
        return int(drop.sum())

    def plan(self) -> LeanPlan:
        return self.plan_for(self.count())

    def search(
        self, queries: FloatArray, k: int, plan: LeanPlan | None = None
    ) -> tuple[FloatArray, IdArray]:
        q = _as_queries(queries, self.dim)
        if self.count() == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.index is None:  # no codes yet (a tiny gallery): exact search of every row
            assert isinstance(self.rows, MemoryRows)
            all_ids, all_vectors = self.rows.all()
            exact = FlatIndex(self.dim)
            exact.add(all_ids, all_vectors)
            return exact.search(q, k)
        p = plan or self.plan()
        k_out = max(1, min(k, self.count()))
        return _per_query(q, k_out, lambda one: self._search_one(one, k_out, p))

    def _search_one(self, q: FloatArray, k: int, plan: LeanPlan) -> tuple[FloatArray, IdArray]:
        assert self.index is not None
        _one_thread()
        _, cand = self.index.search(q[None], max(k, plan.shortlist))
        ids = self.ids[cand[0][cand[0] >= 0]]
        exact = self.rows.vectors(ids) @ q  # the exact re-rank: true cosines
        order = np.argsort(-exact, kind="stable")[:k]
        return exact[order], ids[order]

    def count(self) -> int:
        return len(self.ids) if self.codes is not None else self.rows.count()

    def to_bytes(self) -> bytes:
        """Codes and parameters; with rows in RAM, the rows too (the caller encrypts it all).

        With rows in a row file only the codes are written: the rows are already encrypted on
        disk, and ``from_bytes`` must be given the same ``RowFileRows`` back.
        """
        buf = io.BytesIO()
        arrays: dict[str, NDArray[Any]] = {"dim": np.array([self.dim, self.trained_on])}
        if self.codes is not None:
            arrays["codes"] = np.asarray(faiss.serialize_index(self.codes), dtype=np.uint8)
            arrays["code_ids"] = self.ids
        if isinstance(self.rows, MemoryRows):
            arrays["ids"], arrays["vectors"] = self.rows.all()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, rows: RowSource | None = None) -> LeanIndex:
        arrays = np.load(io.BytesIO(data))
        dim = int(arrays["dim"][0])
        if "vectors" in arrays:
            rows = MemoryRows(dim)
            rows.add(arrays["ids"], arrays["vectors"])
        elif rows is None:
            raise ValueError("this lean index keeps its rows in a row file: pass rows=")
        out = cls(dim, rows)
        out.trained_on = int(arrays["dim"][1])
        if "codes" in arrays:
            owner = faiss.deserialize_index(arrays["codes"])
            codes = faiss.downcast_index(owner)
            if not isinstance(codes, faiss.IndexPQ):
                raise ValueError("not a lean index")
            out._owner = owner  # the downcast view does not own the memory: keep its owner
            out.codes = codes
            out.index = faiss.IndexPQFastScan(codes)  # type: ignore[arg-type]
            out.ids = np.asarray(arrays["code_ids"], dtype=np.int64)
        return out


def _per_query(
    q: FloatArray, k: int, one: Callable[[FloatArray], tuple[FloatArray, IdArray]]
) -> tuple[FloatArray, IdArray]:
    """Search each query on one thread; several queries run in parallel across the cores."""
    out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    if len(q) == 1:
        results = [one(q[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(len(q), os.cpu_count() or 1)) as pool:
            results = list(pool.map(one, q))
    for qi, (s, i) in enumerate(results):
        out_s[qi, : len(s)] = s
        out_i[qi, : len(i)] = i
    return out_s, out_i


class AutoIndex:
    """Exact ``flat`` for small galleries, the ``lean`` index above ``switch_at`` templates.

    Flat search reads every template per query (memory-bound): measured here, its p99 passes the
    50 ms a single search may take at about 200k templates. Up to ``switch_at`` every search is
    exact; at the add that crosses it the gallery is moved into a lean index trained on all of
    it, and the lean index is retrained on the whole gallery whenever it has grown to 4x the size
    it was trained at (list count and quantiser follow the gallery; amortised O(1) per add).
    Below half of ``switch_at`` (erasures) it goes back to exact flat. Probe count and shortlist
    follow the size at every search (``LeanIndex.plan_for``).
    """

    kind = "auto"
    #: bench/scale.py: flat p99 at 200k is at the 50 ms target on 2 cores; above, use lean
    SWITCH_AT = 200_000
    #: retrain the lean index when the gallery has grown to this multiple of its training size
    REGROW = 4

    def __init__(self, dim: int, switch_at: int = SWITCH_AT) -> None:
        self.dim = dim
        self.switch_at = switch_at
        self.inner: FlatIndex | LeanIndex = FlatIndex(dim)

    @property
    def chosen(self) -> str:
        """The kind serving now: ``flat`` or ``lean``."""
        return self.inner.kind

    def _all(self) -> tuple[IdArray, FloatArray]:
        if isinstance(self.inner, FlatIndex):
            n = self.inner.count()
            idmap: Any = self.inner.index
            ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
            vectors = faiss.downcast_index(idmap.index).reconstruct_n(0, n)
            return ids, np.asarray(vectors, dtype=np.float32)
        # in RAM, or the segment store's row files (search/segment_rows.py): both list them all
        everything: Callable[[], tuple[IdArray, FloatArray]] | None = getattr(
            self.inner.rows, "all", None
        )
        assert everything is not None, "this row source cannot list its rows"
        return everything()

    def _release(self) -> None:
        """Close the files of a lean index's row source that is being replaced (an open file
        keeps a deleted segment, and any erased vector in it, on disk)."""
        inner = self.inner
        close = getattr(inner.rows, "close", None) if isinstance(inner, LeanIndex) else None
        if close is not None:
            close()

    def _to_lean(self) -> None:
        ids, vectors = self._all()
        self._release()
        self.inner = FlatIndex(self.dim)  # free the flat copy before the lean one is built
        lean = LeanIndex(self.dim)
        lean.train(vectors)
        step = 262_144  # add in blocks: the residual encoding allocates per block
        for at in range(0, len(ids), step):
            lean.add(ids[at : at + step], vectors[at : at + step])
        self.inner = lean

    def _to_flat(self) -> None:
        ids, vectors = self._all()
        flat = FlatIndex(self.dim)
        flat.add(ids, vectors)
        self._release()
        self.inner = flat

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        self.inner.add(ids, vectors)
        n = self.inner.count()
        if isinstance(self.inner, FlatIndex):
            if n >= self.switch_at:
                self._to_lean()
        elif n >= self.REGROW * self.inner.trained_on:
            self._to_lean()

    def remove(self, ids: IdArray) -> int:
        n = self.inner.remove(ids)
        if isinstance(self.inner, LeanIndex) and self.inner.count() < self.switch_at // 2:
            self._to_flat()
        return n

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        _one_thread()
        if isinstance(self.inner, FlatIndex) and len(np.atleast_2d(queries)) > 1:
            q = _as_queries(queries, self.dim)
            k_out = max(1, min(k, self.count()))
            return _per_query(q, k_out, lambda one: self._flat_one(one, k_out))
        return self.inner.search(queries, k)

    def _flat_one(self, q: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        s, i = self.inner.search(q[None], k)
        return s[0], i[0]

    def count(self) -> int:
        return self.inner.count()

    def to_bytes(self) -> bytes:
        tag = b"F" if isinstance(self.inner, FlatIndex) else b"L"
        return b"AUTO1" + tag + self.switch_at.to_bytes(8, "little") + self.inner.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> AutoIndex:
        if data[:5] != b"AUTO1" or data[5:6] not in (b"F", b"L"):
            raise ValueError("not an auto index")
        body = data[14:]
        inner: FlatIndex | LeanIndex
        inner = FlatIndex.from_bytes(body) if data[5:6] == b"F" else LeanIndex.from_bytes(body)
        out = cls(inner.dim, int.from_bytes(data[6:14], "little"))
        out.inner = inner
        return out


#: Index kinds built by other modules, by the prefix of their kind name: ``search/sharded.py``
#: registers ``sharded`` (it builds on this module, so this one may not import it).
_PLUGINS: dict[
    str, tuple[Callable[[str, int], VectorIndex], Callable[[str, bytes], VectorIndex]]
] = {}


def register_kind(
    prefix: str,
    make: Callable[[str, int], VectorIndex],
    load: Callable[[str, bytes], VectorIndex],
) -> None:
    """Let ``new_index``/``index_from_bytes`` build kinds named ``prefix...`` with these."""
    _PLUGINS[prefix] = (make, load)


def _plugin(
    kind: str,
) -> tuple[Callable[[str, int], VectorIndex], Callable[[str, bytes], VectorIndex]] | None:
    return next((p for prefix, p in _PLUGINS.items() if kind.startswith(prefix)), None)


def new_index(kind: str, dim: int) -> VectorIndex:
    if (plugin := _plugin(kind)) is not None:
        return plugin[0](kind, dim)
    if kind == "flat":
        return FlatIndex(dim)
    if kind == "hnsw":
        return HnswIndex(dim)
    if kind == "ivf":
        return IvfIndex(dim)
    if kind == "lean":
        return LeanIndex(dim)
    if kind == "auto":
        return AutoIndex(dim)
    raise ValueError(f"unknown index kind {kind!r}: choose auto, flat, lean, ivf or hnsw")


def index_from_bytes(kind: str, data: bytes, rows: RowSource | None = None) -> VectorIndex:
    """The index ``to_bytes`` wrote; ``rows``: a lean index's row file, if it keeps one."""
    if (plugin := _plugin(kind)) is not None:
        return plugin[1](kind, data)
    if kind == "flat":
        return FlatIndex.from_bytes(data)
    if kind == "hnsw":
        return HnswIndex.from_bytes(data)
    if kind == "ivf":
        return IvfIndex.from_bytes(data)
    if kind == "lean":
        return LeanIndex.from_bytes(data, rows)
    if kind == "auto":
        return AutoIndex.from_bytes(data)
    raise ValueError(f"unknown index kind {kind!r}")


def stored_vectors(index: VectorIndex, ids: NDArray[np.int64]) -> FloatArray | None:
    """``LoadedIndex.vectors``: the full-precision rows an index keeps, by template id.

    Flat (FAISS ``IndexIDMap2`` keeps id -> row), lean (its row source: RAM or the encrypted row
    file), HNSW (its re-ranking copy) and auto (whichever it holds) can; IVF-Flat would need
    FAISS's direct map (not kept): None, and the matcher falls back to ``max`` and says so. An
    index that keeps its vectors elsewhere answers itself (``stored_vectors`` method: the
    sharded index asks its shard actors).
    """
    own = getattr(index, "stored_vectors", None)
    if callable(own):
        result: FloatArray | None = own(ids)
        return result
    inner = index.inner if isinstance(index, AutoIndex) else getattr(index, "inner", None)
    if inner is not None:  # an index wrapping another (auto; a wrapper in the tests)
        return stored_vectors(inner, ids)
    if len(ids) == 0:
        return np.zeros((0, index.dim), dtype=np.float32)
    if isinstance(index, FlatIndex):
        if not isinstance(index.index, faiss.IndexIDMap2):
            return None
        return np.asarray(index.index.reconstruct_batch(ids), dtype=np.float32)
    if isinstance(index, LeanIndex):
        return np.asarray(index.rows.vectors(ids), dtype=np.float32)
    if isinstance(index, HnswIndex):
        live = np.flatnonzero(np.isin(index.ids, ids))
        at = {int(index.ids[p]): int(p) for p in live if int(index.ids[p]) not in index.removed}
        return index.vectors[[at[int(i)] for i in ids]]
    return None
