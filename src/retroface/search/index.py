"""Vector indexes behind one small protocol.

Exact inner-product search (FAISS flat) is the default: at 100k templates it is already fast, and
a candidate list must never silently miss a mate. The approximate modes (IVF, HNSW) are for very
large galleries; both score their shortlist exactly (IVF-Flat keeps whole vectors; HNSW re-ranks
against the stored vectors), so only which templates are looked at is approximate.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Protocol

import faiss
import numpy as np
from numpy.typing import NDArray

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
    raise ValueError(f"unknown index kind {kind!r}: choose flat, ivf or hnsw")


def index_from_bytes(kind: str, data: bytes) -> VectorIndex:
    if (plugin := _plugin(kind)) is not None:
        return plugin[1](kind, data)
    if kind == "flat":
        return FlatIndex.from_bytes(data)
    if kind == "hnsw":
        return HnswIndex.from_bytes(data)
    if kind == "ivf":
        return IvfIndex.from_bytes(data)
    raise ValueError(f"unknown index kind {kind!r}")
