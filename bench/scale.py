"""National-scale search: the lean index (PQ codes in RAM, exact re-rank from an encrypted row
file) against exact search, on synthetic galleries of 200k to 10M and on LFW faces inside them.

Synthetic gallery (seeded, generated and added in chunks: memory is bounded by one chunk):
1,000 "group" directions stand for what makes unrelated faces alike (demographics, pose,
capture); each identity is ``unit(0.5 group + 0.87 own)`` (identities of one group at cosine
~0.25, others ~0); a template is ``unit(sqrt(q) identity + sqrt(1 - q) noise)``. Gallery
templates are good photos (q ~ U(0.7, 0.95)); a probe of the same identity is made so that its
cosine to its mate is drawn from U(0.35, 0.7) (q_probe = t^2 / q_gallery): the range of ArcFace
genuine scores on LFW (docs/accuracy.md: ~0.3 to 0.8). Impostor cosines then sit around 0.13
within a group with a tail to ~0.3 at 10M, i.e. mostly below 0.3 as for real faces.

``--real``: the LFW 1:N protocol (lfw_1n_protocol.csv; 1,862 gallery images, mated probes) embedded
once with the default engine (cached under --workdir) is placed among distractors drawn from a
Gaussian fitted to the LFW embeddings (same mean and covariance, so impostor cosines match real
faces'), so the recall figure is about real mates.

Ground truth: exact top-50 of every probe, computed chunk by chunk during generation. A mate is
lost when the exact top-50 has it and the index's top-50 does not; top-1 agreement is the share of
probes whose index top-1 is the exact top-1. Serving is measured in a fresh process that loads only
what a server holds (the codes, ids; rows stay in the encrypted file): its peak RSS, single-query
p50/p99 (one thread per query) and the throughput of a batch spread over the cores.

    PYTHONPATH=src python bench/scale.py --size 1000000 --json /tmp/scale/1m.json
    PYTHONPATH=src python bench/scale.py --size 1000000 --real --json /tmp/scale/1m-lfw.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retroface.search.index import FlatIndex, LeanIndex, LeanPlan, RowFileRows, index_from_bytes
from retroface.storage.crypto import Cipher

DIM = 512
GROUPS = 1000
GROUP_WEIGHT = 0.5
K = 50
CHUNK = 100_000
KEY = bytes(range(32))  # a bench key: the data is synthetic
LFW_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", "/work/shared/data"))


def unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


class Synthetic:
    """Chunk ``c`` of the gallery, the same every time for a seed (so probes can be made first)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = np.random.default_rng([seed, 0])
        self.groups = unit(rng.standard_normal((GROUPS, DIM), dtype=np.float32))

    def chunk(self, c: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1, c])
        g = rng.integers(0, GROUPS, m)
        own = unit(rng.standard_normal((m, DIM), dtype=np.float32))
        w = GROUP_WEIGHT
        identity = unit(w * self.groups[g] + np.sqrt(1 - w * w) * own)
        q = rng.uniform(0.7, 0.95, m).astype(np.float32)
        return identity, q, self.sample(identity, q, rng)

    @staticmethod
    def sample(identity: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = unit(rng.standard_normal(identity.shape, dtype=np.float32))
        return unit(np.sqrt(q)[:, None] * identity + np.sqrt(1 - q)[:, None] * noise)


class LfwDistractors:
    """Distractors from a Gaussian with the LFW embeddings' mean and covariance."""

    def __init__(self, emb: np.ndarray, seed: int) -> None:
        self.seed = seed
        self.mean = emb.mean(0)
        cov = np.cov(emb, rowvar=False) + 1e-6 * np.eye(DIM)
        self.chol = np.linalg.cholesky(cov).astype(np.float32)

    def chunk(self, c: int, m: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 5, c])
        z = rng.standard_normal((m, DIM), dtype=np.float32)
        return unit(self.mean + z @ self.chol.T)


def lfw_embeddings(workdir: Path) -> dict[str, np.ndarray]:
    """The LFW protocol's gallery and mated images, embedded once with the default engine."""
    cached = workdir / "lfw_embeddings.npz"
    if not cached.exists():
        from retroface.eval.dataset import resolve_protocol
        from retroface.eval.embeddings_cache import EngineSpec
        from retroface.eval.runner import Evaluator

        protocol = resolve_protocol(LFW_DATA / "lfw")
        entries = [e for e in protocol.entries if e.role in ("gallery", "mated")]
        ev = Evaluator(EngineSpec(backend="arcface"), workdir / "eval-cache", None, None)
        s = ev.embed([e.path for e in entries], "lfw")
        np.savez(
            cached,
            emb=s.embeddings,
            found=s.found,
            identity=np.array([e.identity for e in entries]),
            role=np.array([e.role for e in entries]),
        )
    return dict(np.load(cached))


class Topk:
    """Running exact top-K of each probe over gallery chunks."""

    def __init__(self, probes: np.ndarray) -> None:
        self.probes = probes
        self.scores = np.full((len(probes), 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(probes), 0), dtype=np.int64)

    def update(self, first_id: int, block: np.ndarray) -> None:
        s = self.probes @ block.T
        kk = min(K, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([self.scores, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([self.ids, part + first_id], 1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :K]
        self.scores = np.take_along_axis(cand_s, keep, 1)
        self.ids = np.take_along_axis(cand_i, keep, 1)


def build(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.workdir / f"{args.size}{'-lfw' if args.real else ''}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = args.size
    rng = np.random.default_rng([args.seed, 9])
    n_chunks = -(-n // CHUNK)
    syn = Synthetic(args.seed)
    inserts: dict[int, np.ndarray] = {}  # gallery position -> real vector (--real)
    distractors: LfwDistractors | None = None
    if args.real:
        lfw = lfw_embeddings(args.workdir)
        ok = lfw["found"].astype(bool)
        emb, ident, role = lfw["emb"][ok], lfw["identity"][ok], lfw["role"][ok]
        gal = np.flatnonzero(role == "gallery")
        positions = np.sort(rng.choice(n, len(gal), replace=False))
        pos_of = {str(ident[g]): int(p) for g, p in zip(gal, positions, strict=True)}
        inserts = {int(p): emb[g] for g, p in zip(gal, positions, strict=True)}
        mated = [i for i in np.flatnonzero(role == "mated") if str(ident[i]) in pos_of]
        probes = unit(emb[mated])
        mates = np.array([pos_of[str(ident[i])] for i in mated], dtype=np.int64)
        distractors = LfwDistractors(emb, args.seed)
    else:
        # mates spread over 20 chunks across the gallery (regenerated here to make the probes)
        picked = np.unique(np.linspace(0, n_chunks - 1, min(20, n_chunks)).astype(int))
        per = -(-args.queries // len(picked))
        probes_l, mates_l = [], []
        for c in picked:
            m = min(CHUNK, n - c * CHUNK)
            identity, q, _ = syn.chunk(int(c), m)
            r = np.sort(rng.choice(m, min(per, m), replace=False))
            t = rng.uniform(0.35, 0.7, len(r)).astype(np.float32)
            probes_l.append(Synthetic.sample(identity[r], t * t / q[r], rng))
            mates_l.append(r + c * CHUNK)
        probes = np.concatenate(probes_l)[: args.queries]
        mates = np.concatenate(mates_l)[: args.queries]

    truth = Topk(probes)
    mate_cos = np.zeros(len(probes), dtype=np.float32)
    cipher = Cipher(KEY)
    lean = LeanIndex(DIM)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    timing = {"generate_and_truth_s": 0.0, "train_s": 0.0, "add_codes_s": 0.0}
    train_rows = LeanIndex.TRAIN_ROWS

    def add_codes(ids: np.ndarray, v: np.ndarray) -> None:
        t = time.perf_counter()
        lean.add_codes_only(ids, v)
        timing["add_codes_s"] += time.perf_counter() - t

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for c in range(n_chunks):
            t = time.perf_counter()
            m = min(CHUNK, n - c * CHUNK)
            v = distractors.chunk(c, m) if distractors is not None else syn.chunk(c, m)[2]
            for p in [p for p in inserts if c * CHUNK <= p < c * CHUNK + m]:
                v[p - c * CHUNK] = inserts[p]
            ids = np.arange(c * CHUNK, c * CHUNK + m, dtype=np.int64)
            truth.update(c * CHUNK, v)
            here = (mates >= c * CHUNK) & (mates < c * CHUNK + m)
            mate_cos[here] = (probes[here] * v[mates[here] - c * CHUNK]).sum(1)
            timing["generate_and_truth_s"] += time.perf_counter() - t
            if lean.index is None:
                pending.append((ids, v))
                if sum(len(p[0]) for p in pending) >= min(train_rows, n) or c == n_chunks - 1:
                    t = time.perf_counter()
                    lean.train(np.concatenate([p[1] for p in pending]))
                    lean.trained_on = n
                    timing["train_s"] += time.perf_counter() - t
                    for pi, pv in pending:
                        add_codes(pi, pv)
                    pending.clear()
            else:
                add_codes(ids, v)
            if c % 10 == 9 or c == n_chunks - 1:
                print(f"{time.strftime('%H:%M:%S')} chunk {c + 1}/{n_chunks}", file=sys.stderr)
            yield ids, v

    t0 = time.perf_counter()
    rows = RowFileRows.write(
        work / "rows.enc", cipher, blocks(), dim=DIM, chunk_rows=args.chunk_rows
    )
    lean.rows = rows
    (work / "lean.idx").write_bytes(lean.to_bytes())
    build_s = time.perf_counter() - t0
    np.save(work / "probes.npy", probes)
    np.save(work / "mates.npy", mates)
    np.save(work / "truth.npy", truth.ids)
    np.save(work / "truth_scores.npy", truth.scores)
    assert lean.index is not None
    files = [work / "rows.enc", work / "rows.enc.ids", work / "lean.idx"]
    return {
        "build_s": round(build_s, 1),
        **{k: round(v, 1) for k, v in timing.items()},
        "build_peak_rss_mb": peak_rss_mb(),
        "disk_mb": {f.name: round(f.stat().st_size / 2**20, 1) for f in files},
        "mate_cosine_p1_p50_p99": np.percentile(mate_cos, [1, 50, 99]).round(3).tolist(),
        "exact_kth_score_p50": round(float(np.median(truth.scores[:, -1])), 3),
        "mates_in_exact_top50": int((truth.ids == mates[:, None]).any(1).sum()),
        "probes": len(probes),
        "workdir": str(work),
    }


def peak_rss_mb() -> int:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def cached_share(path: Path) -> float | None:
    """Share of ``path`` in the page cache (util-linux ``fincore``; None where it is missing)."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
    ).stdout.split()
    return round(int(out[0]) / max(1, path.stat().st_size), 3) if out else None


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (clean pages: the file is written and synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def serve(
    work: Path,
    kind: str,
    max_queries: int,
    shortlist: int = 0,
    cold: bool = False,
    prefetch: bool = True,
) -> dict[str, Any]:
    """In a fresh process: load what a server holds, search every probe once, measure.

    ``cold``: the row file is dropped from the page cache before every query (not timed), so
    each re-rank reads its rows from the disk; otherwise the rows are wherever the page cache
    left them (``row_file_cached_share`` at the start says how much of the file that was).
    """
    import faiss

    from retroface.storage.rowfile import RowFile

    RowFile.prefetch = prefetch
    load_before = os.getloadavg()
    cached_at_start = cached_share(work / "rows.enc")

    probes = np.load(work / "probes.npy")[:max_queries]
    mates = np.load(work / "mates.npy")[:max_queries]
    truth = np.load(work / "truth.npy")[:max_queries]
    rss0 = peak_rss_mb()
    t = time.perf_counter()
    rows = RowFileRows(work / "rows.enc", Cipher(KEY))
    index: Any
    if kind == "flat":
        index = FlatIndex(DIM)
        rf = rows._file
        assert rf is not None
        at = 0
        for block in rf.blocks():
            index.add(np.arange(at, at + len(block)), np.asarray(block, np.float32))
            at += len(block)
    else:
        index = index_from_bytes("lean", (work / "lean.idx").read_bytes(), rows=rows)
    load_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    plan = index.plan() if kind == "lean" else None
    if plan is not None and shortlist:
        plan = LeanPlan(shortlist=shortlist)
    got = np.full((len(probes), K), -1, dtype=np.int64)
    times, cpu = [], []
    for i, q in enumerate(probes):
        if cold:
            evict(work / "rows.enc")
        t, c = time.perf_counter(), time.thread_time()
        _, ids = index.search(q[None], K, plan) if plan else index.search(q[None], K)
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        got[i, : ids.shape[1]] = ids[0]
    t = time.perf_counter()
    index.search(probes[: min(200, len(probes))], K)  # a batch: queries in parallel
    batch_qps = min(200, len(probes)) / (time.perf_counter() - t)
    in_truth = (truth == mates[:, None]).any(1)
    found = (got == mates[:, None]).any(1)
    lost = int((in_truth & ~found).sum())
    return {
        "kind": kind,
        "queries": len(probes),
        "load_s": round(load_s, 1),
        "serve_peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss0,
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 1),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 1),
        # CPU time of the searching thread: what the query costs, less the waits for a core
        # that a loaded shared machine adds to the wall-clock figures above
        "cpu_p50_ms": round(float(np.percentile(cpu, 50)) * 1e3, 1),
        "cpu_p99_ms": round(float(np.percentile(cpu, 99)) * 1e3, 1),
        "batch_qps": round(batch_qps, 1),
        "mates_in_exact_top50": int(in_truth.sum()),
        "mates_lost": lost,
        "mates_lost_pct": round(100 * lost / max(1, int(in_truth.sum())), 3),
        "top1_agreement_pct": round(100 * float((got[:, 0] == truth[:, 0]).mean()), 2),
        "top50_overlap_pct": round(
            100
            * float(np.mean([len(set(a) & set(b)) / K for a, b in zip(got, truth, strict=True)])),
            2,
        ),
        "plan": None if plan is None else {"shortlist": plan.shortlist},
        "row_file_cached_share": cached_at_start,
        "cold": cold,
        "prefetch": prefetch,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def code_ranks(work: Path, longest: int = 8000) -> dict[str, Any]:
    """Mates lost at each shortlist length, from the codes alone (no row is read, no timing).

    A mate in the exact top-50 is returned by the lean index exactly when it is in the code
    shortlist: the re-rank is exact, and among a subset of the gallery its exact rank can only
    improve. So the loss at shortlist S is the share of exact-top-50 mates whose rank by code
    score is above S; one scan per probe for the ``longest`` best gives every S at once.
    """
    import faiss

    faiss.omp_set_num_threads(1)
    arrays = np.load(work / "lean.idx")
    owner = faiss.deserialize_index(arrays["codes"])
    scan = faiss.IndexPQFastScan(faiss.downcast_index(owner))
    ids = np.asarray(arrays["code_ids"])
    probes, mates = np.load(work / "probes.npy"), np.load(work / "mates.npy")
    in_truth = (np.load(work / "truth.npy") == mates[:, None]).any(1)
    rank = np.full(len(probes), longest + 1)
    for at in range(0, len(probes), 50):
        _, cand = scan.search(probes[at : at + 50], longest)
        for j, row in enumerate(ids[cand]):
            hit = np.flatnonzero(row == mates[at + j])
            if len(hit):
                rank[at + j] = hit[0] + 1
    r = rank[in_truth]
    return {
        "size": len(ids),
        "mates_in_exact_top50": int(in_truth.sum()),
        "mates_lost_at_shortlist": {
            str(s): int((r > s).sum()) for s in (250, 500, 1000, 2000, 4000, longest)
        },
        "mate_code_rank_p50_p99_max": [
            int(np.percentile(r, 50)),
            int(np.percentile(r, 99)),
            int(r.max()),
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000, help="synthetic mated probes")
    ap.add_argument("--real", action="store_true", help="LFW mates among LFW-like distractors")
    ap.add_argument("--kinds", default="lean,flat", help="lean and/or flat (exact baseline)")
    ap.add_argument("--flat-queries", type=int, default=300, help="queries timed for flat")
    ap.add_argument("--chunk-rows", type=int, default=1, help="rows per encrypted chunk")
    ap.add_argument("--shortlist", type=int, default=0, help="override LeanIndex.plan_for")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scale"))
    ap.add_argument("--keep", action="store_true", help="keep the gallery files")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--serve-kind", default="lean", help=argparse.SUPPRESS)
    ap.add_argument("--serve-max", type=int, default=10**9, help=argparse.SUPPRESS)
    ap.add_argument(
        "--code-ranks", type=Path, default=None, help="a kept gallery: mates lost per shortlist"
    )
    ap.add_argument(
        "--serve-cold", action="store_true", help="drop the row file from the cache per query"
    )
    ap.add_argument(
        "--no-prefetch", action="store_true", help="no read-ahead hint for the re-rank rows"
    )
    args = ap.parse_args()
    if args.code_ranks is not None:
        print(json.dumps(code_ranks(args.code_ranks)))
        return 0
    if args.serve is not None:
        result = serve(
            args.serve,
            args.serve_kind,
            args.serve_max,
            args.shortlist,
            cold=args.serve_cold,
            prefetch=not args.no_prefetch,
        )
        print(json.dumps(result))
        return 0
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "bench": "scale",
        "size": args.size,
        "real": args.real,
        "chunk_rows": args.chunk_rows,
        "machine": f"{os.cpu_count()} cores; load average before {load_before}",
    }
    report["build"] = build(args)
    print(json.dumps(report["build"]), file=sys.stderr, flush=True)
    work = Path(report["build"]["workdir"])
    report["serve"] = []
    for kind in args.kinds.split(","):
        cmd = [sys.executable, __file__, "--serve", str(work), "--serve-kind", kind]
        cmd += ["--shortlist", str(args.shortlist)]
        if kind == "flat":
            cmd += ["--serve-max", str(args.flat_queries)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        report["serve"].append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(report["serve"][-1]), file=sys.stderr, flush=True)
    report["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(
        f"{'kind':6} {'RSS MB':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu p99':>7} "
        f"{'lost':>12} {'top1 %':>7}"
    )
    for s in report["serve"]:
        lost = f"{s['mates_lost']}/{s['mates_in_exact_top50']}"
        print(
            f"{s['kind']:6} {s['serve_peak_rss_mb']:7} {s['p50_ms']:7} {s['p99_ms']:7} "
            f"{s['cpu_p99_ms']:7} "
            f"{lost:>12} {s['top1_agreement_pct']:7}"
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
