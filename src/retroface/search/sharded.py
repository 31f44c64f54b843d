"""The gallery split over Ray actors, behind the same ``VectorIndex`` protocol as one index.

Capacity beyond one machine on an existing engine: each shard is a Ray actor holding an ordinary
index (``new_index(inner, dim)``, exact ``flat`` by default) for the templates whose id falls to
it (``id mod N``, so an id's shard never depends on the order of enrolment). A search goes to
every shard at once and the per-shard top-k lists are merged by exact score, ties broken by the
lower template id: each shard's list holds its k best, so the k best of the union are the k best
of the gallery, and for flat shards the candidate list equals the single flat index's, bit for
bit when that one also searches with one FAISS thread as each shard does (FAISS's single-query
scores move by up to 2.4e-7 with its thread count). ``tests/test_sharded_index.py`` holds them
equal on real faces, on a multi-node cluster.
Removal goes to the shard holding the id and removes the vector there (FAISS ``remove_ids``).

The shards are derived state: the database stays the system of record, and the index manager
rebuilds them from it exactly as it rebuilds a local index. A shard whose actor or node died is
never restarted empty (``max_restarts=0``): every later call raises ``ShardUnavailableError``
(code ``index_unavailable``) rather than return a list silently missing that shard's faces.

Ray is joined at ``RETROFACE_RAY_ADDRESS`` (``ray start --head`` on a private interface, see
docs/scale.md) or, unset, started here on loopback only. Kind names: ``sharded{N}-{inner}``
(``sharded4-flat``); importing this module registers them with ``search.index``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from retroface.core.errors import RetrofaceError
from retroface.search.index import (
    IdArray,
    VectorIndex,
    index_from_bytes,
    new_index,
    register_kind,
    stored_vectors,
)
from retroface.vision.types import FloatArray

if TYPE_CHECKING:
    from ray.actor import ActorHandle

log = logging.getLogger(__name__)

PREFIX = "sharded"
_KIND = re.compile(r"sharded(\d+)-(\w+)\Z")
_FORMAT = "retroface-sharded/1"
#: Rows per ``add`` call to one shard: 8,192 x 512 float32 is 16 MiB, so an enrolment of the whole
#: gallery streams through Ray's object store instead of filling it.
ADD_CHUNK = 8192
#: How long a shard may take to be placed and start (a worker process importing FAISS: 2-5 s
#: here; a cluster short of CPUs never places it, and that must be an error, not a hang).
START_TIMEOUT_S = 120.0
#: How long one call to the shards may take before the search fails (a flat search of 1M
#: templates is about 0.4 s on one core; a hung node must not hold a request for ever).
CALL_TIMEOUT_S = 60.0


class ShardUnavailableError(RetrofaceError):
    """A shard's actor or node is gone or does not answer: no candidate list can be complete."""

    code = "index_unavailable"


def sharded_kind(inner: str, shards: int) -> str:
    """The kind name of ``shards`` shards each holding an index of kind ``inner``."""
    if shards < 1:
        raise ValueError("a sharded index needs at least one shard")
    return f"{PREFIX}{shards}-{inner}"


def parse_kind(kind: str) -> tuple[int, str]:
    """``sharded4-flat`` -> (4, "flat")."""
    m = _KIND.match(kind)
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"not a sharded index kind: {kind!r} (sharded<N>-<kind>)")
    return int(m.group(1)), m.group(2)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RetrofaceError(
            "Ray is not installed: pip install 'retroface[ray]' (or set RETROFACE_INDEX_SHARDS=0)"
        ) from None
    return ray


def connect(address: str | None = None, min_cpus: int = 1) -> None:
    """Join the Ray cluster at ``address``, or with none start one here on loopback only.

    Ray is process-wide: a process already connected (a test's cluster, a batch job) stays so.
    Started here, every Ray server binds 127.0.0.1: Ray otherwise swaps a loopback node address
    for the host's routable one, which is why the switch below is set before Ray is imported.
    """
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        return
    common = {"log_to_driver": False, "logging_level": "WARNING", "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            from ray._private import ray_constants

            if ray_constants.ENABLE_RAY_CLUSTER:  # ray was imported before the switch was set
                raise RetrofaceError(
                    "cannot start Ray on loopback in this process: set "
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported, or set "
                    "RETROFACE_RAY_ADDRESS to a running cluster"
                )
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, min_cpus),
                include_dashboard=False,
                **common,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "loopback"
        raise ShardUnavailableError(f"cannot join the Ray cluster at {where}: {exc}") from None


class Shard:
    """One shard: an ordinary index in a Ray actor. Every change answers the shard's count."""

    def __init__(self, inner: str, dim: int, data: bytes = b"") -> None:
        # one thread per search, parallelism across queries and shards (2 FAISS threads for a
        # single query were slower here, docs/gallery.md); Ray sets no thread limit for an
        # actor that reserves no CPU
        faiss.omp_set_num_threads(1)
        self.index = index_from_bytes(inner, data) if data else new_index(inner, dim)

    def add(self, ids: IdArray, vectors: FloatArray) -> int:
        self.index.add(ids, vectors)
        return self.index.count()

    def remove(self, ids: IdArray) -> tuple[int, int]:
        return self.index.remove(ids), self.index.count()

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        if self.index.count() == 0:
            empty = np.zeros((len(queries), 0), np.float32)
            return empty, np.zeros((len(queries), 0), np.int64)
        return self.index.search(queries, k)

    def count(self) -> int:
        return self.index.count()

    def vectors(self, ids: IdArray) -> FloatArray | None:
        """The stored vectors of ``ids`` (all on this shard), for fused subject scoring."""
        return stored_vectors(self.index, np.asarray(ids, dtype=np.int64))

    def to_bytes(self) -> bytes:
        return self.index.to_bytes() if self.index.count() else b""

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


def merge_top_k(
    parts: Sequence[tuple[FloatArray, IdArray]], n_queries: int, k: int
) -> tuple[FloatArray, IdArray]:
    """The k best of the shards' lists per query: higher score first, then lower id.

    Empty slots (id -1) go last. Exact because each part holds its shard's k best.
    """
    width = min(k, sum(p[1].shape[1] for p in parts))
    if width == 0:
        return np.zeros((n_queries, 0), np.float32), np.zeros((n_queries, 0), np.int64)
    scores = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32, copy=False)
    ids = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64, copy=False)
    empty = ids < 0
    key_score = np.where(empty, np.inf, -scores)
    key_id = np.where(empty, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_id, key_score), axis=-1)[:, :width]
    return (
        np.take_along_axis(scores, order, axis=1),
        np.take_along_axis(ids, order, axis=1),
    )


class ShardedIndex:
    """``VectorIndex`` over ``shards`` Ray actors (see the module docstring).

    Thread-safety is the single index's: many searches at once, no search during add/remove
    (the index manager's lock guarantees it); every call waits for all shards before returning.
    """

    def __init__(
        self,
        dim: int,
        shards: int,
        inner: str = "flat",
        *,
        blobs: Sequence[bytes] | None = None,
        cpus: float = 0.0,
        start_timeout_s: float = START_TIMEOUT_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        if shards < 1:
            raise ValueError("a sharded index needs at least one shard")
        if blobs is not None and len(blobs) != shards:
            raise ValueError(f"{len(blobs)} shard files for {shards} shards")
        self.dim = dim
        self.shards = shards
        self.inner = inner
        self.kind = sharded_kind(inner, shards)
        self.call_timeout_s = call_timeout_s
        self._broken: str | None = None
        ray = _ray()
        if not ray.is_initialized():
            connect(None, min_cpus=shards)
        actor = ray.remote(Shard).options(
            # No CPU reserved by default: a shard is memory that searches visit briefly, and a
            # new set of shards (a rebuild, a file load) starts while the old set still serves,
            # so shards reserving CPUs deadlock a cluster that fits exactly one set.
            num_cpus=cpus,
            # a restarted shard would come back empty: a search must fail, not miss its faces
            max_restarts=0,
            max_task_retries=0,
            # one shard per node while nodes last: a node's loss takes as few shards as possible
            scheduling_strategy="SPREAD",
        )
        self._actors: list[ActorHandle] = [
            actor.remote(inner, dim, blobs[i] if blobs is not None else b"") for i in range(shards)
        ]
        try:
            self._counts: list[int] = self._call(
                lambda a: a.count.remote(), timeout=start_timeout_s, doing="start"
            )
        except ShardUnavailableError:
            self.close()  # shards still waiting for a place must not take one later
            raise

    # -------------------------------------------------------------- calls to the shards

    def _get(self, refs: list[Any], timeout: float, doing: str) -> list[Any]:
        ray = _ray()
        try:
            return list(ray.get(refs, timeout=timeout))
        except ray.exceptions.GetTimeoutError:
            self._fail(f"a shard did not answer within {timeout:g} s ({doing})", refs)
        except ray.exceptions.RayActorError as exc:  # the actor, its worker or its node died
            self._fail(f"a shard's actor is gone ({doing}): {type(exc).__name__}", refs)
        except ray.exceptions.RayTaskError as exc:  # the shard's own code raised: a bug
            self._fail(f"a shard failed ({doing}): {exc.cause!r}", refs)
        except ray.exceptions.RayError as exc:  # anything else Ray reports: no partial answer
            self._fail(f"a shard is unreachable ({doing}): {type(exc).__name__}", refs)
        raise AssertionError("unreachable")

    def _fail(self, message: str, refs: list[Any]) -> None:
        ray = _ray()
        for ref in refs:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # best effort: the error raised below is what matters
                log.debug("could not cancel a shard call", exc_info=True)
        # Every later call fails too: a failed add or remove may have reached some shards only,
        # so the vectors no longer match the database until the manager rebuilds.
        self._broken = message
        raise ShardUnavailableError(
            f"sharded gallery index unavailable: {message}; the next search rebuilds it from "
            "the database"
        )

    def _call(
        self, method: Callable[[Any], Any], *, timeout: float | None = None, doing: str
    ) -> list[Any]:
        self._check()
        refs = [method(a) for a in self._actors]
        return self._get(refs, self.call_timeout_s if timeout is None else timeout, doing)

    def _check(self) -> None:
        if self._broken is not None:
            raise ShardUnavailableError(f"sharded gallery index unavailable: {self._broken}")

    def shard_of(self, ids: IdArray) -> IdArray:
        """The shard each id lives on (fixed by the id alone)."""
        return np.mod(np.asarray(ids, dtype=np.int64), self.shards)

    # -------------------------------------------------------------- VectorIndex

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        if len(ids) == 0:
            return
        self._check()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim or len(v) != len(ids):
            raise ValueError(f"expected {len(ids)} vectors of {self.dim} dimensions")
        where = self.shard_of(ids)
        per_shard = [np.flatnonzero(where == s) for s in range(self.shards)]
        # one chunk per shard in flight at a time: bounded object-store use, shards in parallel
        start = 0
        while any(start < len(rows) for rows in per_shard):
            refs: list[Any] = []
            owners: list[int] = []
            for s, rows in enumerate(per_shard):
                part = rows[start : start + ADD_CHUNK]
                if len(part):
                    refs.append(self._actors[s].add.remote(ids[part], v[part]))
                    owners.append(s)
            for s, count in zip(owners, self._get(refs, self.call_timeout_s, "add"), strict=True):
                self._counts[s] = int(count)
            start += ADD_CHUNK

    def remove(self, ids: IdArray) -> int:
        if len(ids) == 0:
            return 0
        self._check()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        where = self.shard_of(ids)
        refs: list[Any] = []
        owners: list[int] = []
        for s in range(self.shards):
            part = ids[where == s]
            if len(part):
                refs.append(self._actors[s].remove.remote(part))
                owners.append(s)
        removed = 0
        for s, (gone, count) in zip(
            owners, self._get(refs, self.call_timeout_s, "remove"), strict=True
        ):
            removed += int(gone)
            self._counts[s] = int(count)
        return removed

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IdArray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, index has {self.dim}")
        total = self.count()
        if total == 0:
            self._check()
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = max(1, min(k, total))  # as FlatIndex: at least one, at most the gallery
        parts = self._call(lambda a: a.search.remote(q, k), doing="search")
        return merge_top_k(parts, len(q), k)

    def count(self) -> int:
        return sum(self._counts)

    def stored_vectors(self, ids: IdArray) -> FloatArray | None:
        """The vectors of ``ids`` from the shards that hold them, in the order of ``ids``
        (``search.index.stored_vectors``: the matcher's fused subject scores); None if a
        shard's index kind keeps none."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if len(ids) == 0:
            return out
        self._check()
        where = self.shard_of(ids)
        refs: list[Any] = []
        rows: list[IdArray] = []
        for s in range(self.shards):
            mine = np.flatnonzero(where == s)
            if len(mine):
                refs.append(self._actors[s].vectors.remote(ids[mine]))
                rows.append(mine)
        for mine, part in zip(rows, self._get(refs, self.call_timeout_s, "read"), strict=True):
            if part is None:
                return None
            out[mine] = part
        return out

    def nodes(self) -> list[str]:
        """The Ray node id each shard runs on (tests and operators: where the shards are)."""
        return [str(n) for n in self._call(lambda a: a.node.remote(), doing="locate")]

    def to_bytes(self) -> bytes:
        """Every shard's index, gathered: a header then the shards' own serialisations."""
        blobs: list[bytes] = self._call(lambda a: a.to_bytes.remote(), doing="save")
        header = json.dumps(
            {
                "format": _FORMAT,
                "inner": self.inner,
                "dim": self.dim,
                "sizes": [len(b) for b in blobs],
            }
        ).encode()
        return len(header).to_bytes(4, "big") + header + b"".join(blobs)

    @classmethod
    def from_bytes(cls, kind: str, data: bytes) -> ShardedIndex:
        """Shards from ``to_bytes``; a file of another layout is a ``ValueError`` (the index
        manager then rebuilds from the database, as for any unreadable index file)."""
        shards, inner = parse_kind(kind)
        try:
            n = int.from_bytes(data[:4], "big")
            header = json.loads(data[4 : 4 + n])
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a sharded index file: {exc}") from None
        if header.get("format") != _FORMAT or header.get("inner") != inner:
            raise ValueError(f"index file is {header.get('format')}/{header.get('inner')}")
        sizes = header["sizes"]
        if len(sizes) != shards:
            raise ValueError(f"index file has {len(sizes)} shards, {shards} configured")
        blobs, at = [], 4 + n
        for size in sizes:
            blobs.append(data[at : at + size])
            at += size
        if at != len(data):
            raise ValueError("index file truncated or too long")
        return cls(int(header["dim"]), shards, inner, blobs=blobs)

    def close(self) -> None:
        """Stop the shard actors now (they also stop when the last handle goes)."""
        ray = _ray()
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # already gone with its node: nothing to stop
                log.debug("could not kill a shard actor", exc_info=True)
        self._broken = self._broken or "closed"


def _make(kind: str, dim: int) -> VectorIndex:
    shards, inner = parse_kind(kind)
    return ShardedIndex(dim, shards, inner)


register_kind(PREFIX, _make, ShardedIndex.from_bytes)
