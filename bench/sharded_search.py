"""Search latency of the gallery index sharded over Ray actors against one flat index.

The same synthetic clustered 512-d gallery (as ``index_search.py``: 2,000 cluster centres,
mates at cosine 0.5-0.8) is held once by a ``FlatIndex`` in this process and once by a
``ShardedIndex`` of N flat shards on a Ray instance started here on loopback. Each query is
searched alone (top-k), as the search service does; reported are p50/p99 latency, the time to
load the gallery into the shards, and whether every candidate list equals the flat index's
(FAISS with one thread on both sides, as the shards search).

On a machine of 2 cores sharding cannot make a search faster: the shards' work is the flat
scan divided N ways plus a Ray round trip per shard, on the same two cores. What sharding buys is
capacity: the gallery's vectors live in the shards' processes, on as many machines as the
cluster has, not in the serving process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only (see sharded.py)
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

from retroface.search.index import FlatIndex
from retroface.search.sharded import ShardedIndex, connect

DIM = 512


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_gallery(n: int, rng: np.random.Generator, clusters: int = 2000) -> np.ndarray:
    centres = unit(rng.standard_normal((clusters, DIM), dtype=np.float32))
    out = np.empty((n, DIM), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        c = centres[rng.integers(0, clusters, m)]
        out[i : i + m] = unit(0.45 * c + unit(rng.standard_normal((m, DIM), dtype=np.float32)))
    return out


def make_mates(gallery: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.choice(len(gallery), q, replace=False)
    target = rng.uniform(0.5, 0.8, q).astype(np.float32)
    g = gallery[idx]
    noise = unit(rng.standard_normal((q, DIM), dtype=np.float32))
    noise = unit(noise - (noise * g).sum(1, keepdims=True) * g)
    return unit(g * target[:, None] + noise * np.sqrt(1 - target**2)[:, None])


def timed(index: object, queries: np.ndarray, k: int) -> tuple[list[float], list[np.ndarray]]:
    times, lists = [], []
    for q in queries:
        t = time.perf_counter()
        scores, ids = index.search(q[None], k)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - t) * 1000)
        lists.append(np.concatenate([ids[0].astype(np.float64), scores[0].astype(np.float64)]))
    return times, lists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100000,200000")
    ap.add_argument("--shards", default="2,4")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results/sharded_search.json"
    )
    args = ap.parse_args()
    console = Console()
    faiss.omp_set_num_threads(1)  # one thread per query, as each shard (and the issue) has it
    shard_counts = [int(s) for s in args.shards.split(",")]
    connect(None, min_cpus=max(shard_counts))
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        gallery = make_gallery(n, rng)
        ids = np.arange(1, n + 1, dtype=np.int64)
        queries = make_mates(gallery, args.queries, rng)
        flat = FlatIndex(DIM)
        flat.add(ids, gallery)
        timed(flat, queries[:20], args.k)  # warm up
        t_flat, ref = timed(flat, queries, args.k)
        rows.append(
            {
                "n": n,
                "index": "flat (this process)",
                "shards": 0,
                "load_s": None,
                "p50_ms": float(np.percentile(t_flat, 50)),
                "p99_ms": float(np.percentile(t_flat, 99)),
                "same_lists": None,
            }
        )
        for shards in shard_counts:
            t0 = time.perf_counter()
            index = ShardedIndex(DIM, shards)
            index.add(ids, gallery)
            load_s = time.perf_counter() - t0
            timed(index, queries[:20], args.k)
            t_sh, got = timed(index, queries, args.k)
            same = all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
            rows.append(
                {
                    "n": n,
                    "index": f"{shards} flat shards (Ray actors)",
                    "shards": shards,
                    "load_s": load_s,
                    "p50_ms": float(np.percentile(t_sh, 50)),
                    "p99_ms": float(np.percentile(t_sh, 99)),
                    "same_lists": same,
                }
            )
            index.close()
        del flat, gallery
    table = Table(title=f"single-query top-{args.k}, {args.queries} queries")
    for col in ("gallery", "index", "load into shards", "p50", "p99", "same lists as flat"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            f"{r['n']:,}",
            r["index"],
            "" if r["load_s"] is None else f"{r['load_s']:.1f} s",
            f"{r['p50_ms']:.1f} ms",
            f"{r['p99_ms']:.1f} ms",
            "" if r["same_lists"] is None else str(r["same_lists"]),
        )
    console.print(table)
    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "queries": args.queries,
        "k": args.k,
        "peak_rss_driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {args.json}; load average {load_before} -> {os.getloadavg()}")


if __name__ == "__main__":
    main()
