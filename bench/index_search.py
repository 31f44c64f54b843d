"""Search latency and mate recall of the vector indexes on synthetic 512-d galleries.

Gallery vectors are drawn around 2,000 cluster centres (so that, as with real faces, unrelated
templates are not uniformly spread: same-cluster cosine is about 0.2), and each query is a mate of
one gallery vector at a cosine drawn uniformly from 0.5 to 0.8. Exact search (flat) is the ground
truth; for the approximate index we report the share of mates found at rank 1 by exact search
that it loses. Single-query latency p50/p99, build time and memory are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from retroface.search.index import HnswIndex, new_index

DIM = 512


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_gallery(n: int, rng: np.random.Generator, clusters: int = 2000) -> np.ndarray:
    centres = unit(rng.standard_normal((clusters, DIM), dtype=np.float32))
    out = np.empty((n, DIM), np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        c = centres[rng.integers(0, clusters, m)]
        out[i : i + m] = unit(0.45 * c + unit(rng.standard_normal((m, DIM), dtype=np.float32)))
    return out


def make_mates(
    gallery: np.ndarray, q: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.choice(len(gallery), q, replace=False)
    target = rng.uniform(0.5, 0.8, q).astype(np.float32)
    g = gallery[idx]
    noise = unit(rng.standard_normal((q, DIM), dtype=np.float32))
    noise = unit(noise - (noise * g).sum(1, keepdims=True) * g)  # orthogonal to the mate
    mates = g * target[:, None] + noise * np.sqrt(1 - target**2)[:, None]
    return unit(mates), idx


def latency(index: object, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    times, top = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q[None], k)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t)
        top.append(ids[0])
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), np.array(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--kinds", default="flat,ivf,hnsw")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--hnsw-ef", default="200", help="HNSW shortlists (efSearch) to measure")
    ap.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results/index_search.json"
    )
    args = ap.parse_args()
    console = Console()
    rng = np.random.default_rng(0)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        with console.status(f"Generating {n:,} gallery vectors…"):
            gallery = make_gallery(n, rng)
            queries, truth = make_mates(gallery, args.queries, rng)
        ids = np.arange(n, dtype=np.int64)
        exact_top1: np.ndarray | None = None
        for kind in args.kinds.split(","):
            index = new_index(kind, DIM)
            t = time.perf_counter()
            with console.status(f"Building {kind} over {n:,}…"):
                index.add(ids, gallery)
            build_s = time.perf_counter() - t
            settings = [None]
            if isinstance(index, HnswIndex):
                settings = [int(e) for e in args.hnsw_ef.split(",")]
            for ef in settings:
                if isinstance(index, HnswIndex) and ef is not None:
                    index.shortlist = ef
                    index.index.hnsw.efSearch = ef
                latency(index, queries[:50], args.k)  # warm-up
                p50, p99, top = latency(index, queries, args.k)
                found1 = top[:, 0] == truth
                found_k = (top == truth[:, None]).any(1)
                row = {
                    "gallery": n,
                    "kind": kind,
                    "build_s": round(build_s, 1),
                    "p50_ms": round(p50, 2),
                    "p99_ms": round(p99, 2),
                    "mate_rank1": round(float(found1.mean()), 5),
                    f"mate_in_top{args.k}": round(float(found_k.mean()), 5),
                    "max_rss_gb": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
                    ),
                }
                if kind == "flat":
                    exact_top1 = found1
                elif exact_top1 is not None:
                    lost = exact_top1 & ~found1
                    row["mates_lost_vs_exact"] = round(
                        float(lost.sum() / max(1, exact_top1.sum())), 5
                    )
                if ef is not None:
                    row["hnsw_ef"] = ef
                results.append(row)
                console.print(row)
            del index
    table = Table(
        title=f"Vector index, {args.queries} single queries, k={args.k}, {os.cpu_count()} cores"
    )
    for col in results[0]:
        table.add_column(col)
    for row in results:
        table.add_row(*(str(row.get(c, "")) for c in results[0]))
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
