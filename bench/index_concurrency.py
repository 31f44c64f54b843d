"""Search latency through the IndexManager and Matcher on a synthetic flat gallery, alone and while
another thread enrols and erases.

A temporary SQLite gallery holds ``--size`` synthetic 512-d templates (encrypted, as in a real
gallery; the vectors are those of ``index_search.py``). Measured, single queries, top 20:

- ``raw``: FAISS flat search alone (the floor);
- ``quiet``: ``Matcher.match`` with nobody writing (the database version check, the lock, the
  search, the grouping);
- ``apply``: how long ``apply`` of one enrolment batch (32 templates) and of one erasure (2
  templates) takes, which is how long it holds searches back;
- ``ab`` (with ``--ab DIR``, a folder holding another ``index_manager.py`` and ``matcher.py``,
  e.g. from the commit before the lock): both managers on the same gallery, queried alternately
  in one process, so that a busy machine's noise falls on both alike;
- ``writing`` (skip with ``--quiet-only``, which the unlocked manager needs: searching while it
  applies is unsafe): ``Matcher.match`` while a thread commits and applies a batch of 32 every
  ``--every`` seconds and erases a subject every fifth time.

Run it from the project root: ``python bench/index_concurrency.py``; JSON goes to
``bench/results/index_concurrency.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert

sys.path.insert(0, str(Path(__file__).parent))
from index_search import make_gallery, make_mates
from retroface.search.index_manager import IndexManager
from retroface.search.matcher import Matcher
from retroface.storage.crypto import Cipher, template_aad
from retroface.storage.db import Database
from retroface.storage.tables import FaceTemplate, ReferenceImage, Subject
from retroface.storage.versions import bump_gallery_version

KEY = "bench/synthetic"


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "n": len(a)}


def load_module(name: str, path: Path) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def add_rows(db: Database, cipher: Cipher, start: int, vectors: np.ndarray) -> tuple[int, list]:
    """Commit one subject, image and template per vector; returns the version and ``added``."""
    n = len(vectors)
    ids = list(range(start, start + n))
    hashes = [f"{i:064x}" for i in ids]
    with db.session() as s:
        s.execute(
            insert(Subject),
            [{"id": i, "reference": f"S{i}", "inclusion_reason": "bench"} for i in ids],
        )
        s.execute(
            insert(ReferenceImage),
            [
                {"id": i, "subject_id": i, "content_hash": h, "width": 112, "height": 112}
                for i, h in zip(ids, hashes, strict=True)
            ],
        )
        s.execute(
            insert(FaceTemplate),
            [
                {
                    "id": i,
                    "image_id": i,
                    "subject_id": i,
                    "model_key": KEY,
                    "embedding_enc": cipher.encrypt(v.tobytes(), aad=template_aad(h, KEY)),
                    "det_score": 0.9,
                    "box": {},
                    "quality": {},
                }
                for i, h, v in zip(ids, hashes, vectors, strict=True)
            ],
        )
        version = bump_gallery_version(s)
    return version, [(i, i, i, v) for i, v in zip(ids, vectors, strict=True)]


def erase_rows(db: Database, ids: list[int]) -> int:
    with db.session() as s:
        s.execute(delete(FaceTemplate).where(FaceTemplate.id.in_(ids)))
        s.execute(delete(ReferenceImage).where(ReferenceImage.id.in_(ids)))
        s.execute(delete(Subject).where(Subject.id.in_(ids)))
        return bump_gallery_version(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--every", type=float, default=0.25, help="seconds between enrolment batches")
    ap.add_argument("--quiet-only", action="store_true")
    ap.add_argument("--ab", type=Path, help="folder with index_manager.py, matcher.py to compare")
    ap.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results/index_concurrency.json"
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    gallery = make_gallery(args.size + 20_000, rng)
    queries, _ = make_mates(gallery[: args.size], args.queries, rng)
    out: dict[str, object] = {"size": args.size, "queries": args.queries}
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/bench.db")
        db.migrate()
        cipher = Cipher(os.urandom(32))
        t = time.perf_counter()
        add_rows(db, cipher, 1, gallery[: args.size])
        out["insert_s"] = time.perf_counter() - t
        manager = IndexManager(db, cipher, Path(tmp) / "index", 512, "flat")
        matcher = Matcher(manager)
        t = time.perf_counter()
        loaded = manager.get(KEY)
        out["rebuild_s"] = time.perf_counter() - t

        raw, quiet = [], []
        for q in queries:
            t = time.perf_counter()
            loaded.index.search(q[None], 80)
            raw.append((time.perf_counter() - t) * 1000)
        for q in queries:
            t = time.perf_counter()
            matcher.match(q, KEY, top_k=20)
            quiet.append((time.perf_counter() - t) * 1000)
        out["raw_ms"], out["quiet_ms"] = percentiles(raw), percentiles(quiet)

        if args.ab:
            other_im: Any = load_module("other_index_manager", args.ab / "index_manager.py")
            other_matcher: Any = load_module("other_matcher", args.ab / "matcher.py")
            other = other_matcher.Matcher(
                other_im.IndexManager(db, cipher, Path(tmp) / "index_ab", 512, "flat")
            )
            other.index.get(KEY)
            this_ms, other_ms = [], []
            for i, q in enumerate(queries):
                for m, times in [(matcher, this_ms), (other, other_ms)][:: 1 if i % 2 else -1]:
                    t = time.perf_counter()
                    m.match(q, KEY, top_k=20)
                    times.append((time.perf_counter() - t) * 1000)
            out["ab_this_ms"], out["ab_other_ms"] = percentiles(this_ms), percentiles(other_ms)
            del other

        next_id = args.size + 1
        add_ms, erase_ms = [], []
        for _ in range(10):
            version, added = add_rows(db, cipher, next_id, gallery[next_id - 1 : next_id + 31])
            t = time.perf_counter()
            manager.apply(KEY, version, added=added)
            add_ms.append((time.perf_counter() - t) * 1000)
            version = erase_rows(db, [next_id, next_id + 1])
            t = time.perf_counter()
            manager.apply(KEY, version, removed=[next_id, next_id + 1])
            erase_ms.append((time.perf_counter() - t) * 1000)
            next_id += 32
        out["apply_add32_ms"], out["apply_erase2_ms"] = percentiles(add_ms), percentiles(erase_ms)

        if not args.quiet_only:
            stop = threading.Event()
            writes = [0]

            def write() -> None:
                nid = next_id
                while not stop.wait(args.every) and nid + 32 < args.size + 20_000:
                    version, added = add_rows(db, cipher, nid, gallery[nid - 1 : nid + 31])
                    manager.apply(KEY, version, added=added)
                    if writes[0] % 5 == 4:
                        manager.apply(KEY, erase_rows(db, [nid]), removed=[nid])
                    writes[0] += 1
                    nid += 32

            writer = threading.Thread(target=write)
            writer.start()
            busy = []
            for q in queries:
                t = time.perf_counter()
                matcher.match(q, KEY, top_k=20)
                busy.append((time.perf_counter() - t) * 1000)
            stop.set()
            writer.join()
            out["writing_ms"] = percentiles(busy)
            out["writes"] = writes[0]
        db.dispose()
    print(json.dumps(out, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
