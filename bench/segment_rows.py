"""A serving process at gallery scale: lean rows in RAM (before) or read from the segments (after).

Issue #14 asks for a serving process under 8 GB of peak RSS at 10M faces. The lean index keeps
32-byte codes in RAM and re-ranks a shortlist exactly from the float32 rows; before
``search/segment_rows.py`` the product's ``IndexManager`` held those rows in RAM (2 KB per face),
after it they are read by pread from the segment store's own encrypted row files.

Setup (once, kept in ``--dir``; ``--setup`` builds it, unlocked): bench/incremental.py's synthetic
gallery, N random unit 512-d faces as template rows in SQLite (encrypted as the enroller stores
them) plus the stored segments (64k rows each).

Each measurement is a new process started like a server: it opens the data directory, builds an
``IndexManager`` (kind ``auto``: lean above 200k) and makes its first search (the load), then
searches ``--queries`` mated probes one at a time for the top 50. A mate is a gallery face plus
noise at cosine 0.5. ``before`` runs the same child on another source tree (``--before-src``,
e.g. ``git archive`` of main before this change); ``after`` on this tree.

Reported per process: load seconds, VmRSS after the load and after the searches, VmHWM (the
peak), RssFile (mapped file pages), p50/p99 of a search through ``IndexManager.reading`` (the
database version check, the index search) and of the index search alone, mates found at rank 1,
and the rows held in RAM.

    python bench/segment_rows.py --dir /tmp/x --faces 1000000 --setup          # build, ~15 min
    flock /tmp/bench.lock nice -n -15 python bench/segment_rows.py --dir /tmp/x --only after
    flock /tmp/bench.lock nice -n -15 python bench/segment_rows.py --dir /tmp/x --only before \\
        --before-src /tmp/main-src

Results are merged into ``bench/results/segment_rows.json``; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DIM = 512
K = 50


def status() -> dict[str, float]:
    """The process's memory from /proc/self/status, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) / 1024
    return out


def probes(n: int, seed: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Mated probes: faces of the first segment (bench/incremental.py's generator, same seed)
    plus noise at cosine 0.5, and their template ids."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((min(n, 65_536), DIM), dtype=np.float32)
    first = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    pick = np.random.default_rng(seed + 1).choice(len(first), queries, replace=False)
    noise = np.random.default_rng(seed + 2).standard_normal((queries, DIM)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = first[pick] + np.sqrt(3.0) * noise  # cos(face, probe) = 1 / sqrt(1 + 3) = 0.5
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32), (pick + 1).astype(np.int64)


def child(home: Path, key: str, faces: int, seed: int, queries: int) -> None:
    t0 = time.perf_counter()
    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.search.index_manager import IndexManager

    ctx = AppContext(Settings(home=home, database_url=f"sqlite:///{home / 'retroface.db'}"))
    manager = IndexManager(ctx.db, ctx.cipher, home / "index", dim=DIM, kind="auto")
    q, mates = probes(faces, seed, queries)
    opened, cpu0 = time.perf_counter(), time.process_time()
    with manager.reading(key) as loaded:
        loaded_at, load_cpu = time.perf_counter(), time.process_time() - cpu0
        index = loaded.index
        count = index.count()
    after_load = status()
    inner: Any = getattr(index, "inner", index)
    rows = getattr(inner, "rows", None)
    if rows is None:  # flat: every vector is in the FAISS index
        in_ram = count
    else:
        in_ram = rows.count() if type(rows).__name__ == "MemoryRows" else rows.in_ram
    whole, alone, cpu, hits = [], [], [], 0
    for i in range(len(q)):
        t = time.perf_counter()
        with manager.reading(key) as loaded:
            s, c = time.perf_counter(), time.thread_time()
            _, ids = loaded.index.search(q[i], K)  # one query: this thread does all the work
            e, ce = time.perf_counter(), time.thread_time()
        whole.append(time.perf_counter() - t)
        alone.append(e - s)
        cpu.append(ce - c)
        hits += int(ids[0][0] == mates[i])
    after = status()
    print(
        json.dumps(
            {
                "open_s": opened - t0,
                "load_s": loaded_at - opened,
                "count": count,
                "index": type(index).__name__ + "/" + type(inner).__name__,
                "rows": type(rows).__name__,
                "rows_in_ram": int(in_ram),
                "stats": dict(manager.stats),
                "mem_after_load_mb": after_load,
                "mem_after_search_mb": after,
                "search_ms": {
                    "p50": float(np.percentile(whole, 50) * 1000),
                    "p99": float(np.percentile(whole, 99) * 1000),
                },
                "index_search_ms": {
                    "p50": float(np.percentile(alone, 50) * 1000),
                    "p99": float(np.percentile(alone, 99) * 1000),
                },
                "index_search_cpu_ms": {
                    "p50": float(np.percentile(cpu, 50) * 1000),
                    "p99": float(np.percentile(cpu, 99) * 1000),
                },
                "load_cpu_s": load_cpu,
                "queries": len(q),
                "mates_rank1": hits,
            }
        ),
        flush=True,
    )


def run_child(src: Path, home: Path, key: str, faces: int, queries: int) -> dict[str, Any]:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)]),
        "RETROFACE_HOME": str(home),
        "RETROFACE_DATABASE_URL": f"sqlite:///{home / 'retroface.db'}",
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--home", str(home)]
    cmd += ["--key", key, "--faces", str(faces), "--queries", str(queries)]
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-4000:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=False)
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--setup", action="store_true", help="build the gallery in --dir")
    parser.add_argument("--only", choices=("before", "after"), default=None)
    parser.add_argument("--before-src", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=2, help="processes per mode")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "segment_rows.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--key", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.home, args.key, args.faces, args.seed, args.queries)
        return
    assert args.dir is not None, "--dir is required"
    home = args.dir / "home"
    if args.setup:
        sys.path.insert(0, str(HERE))
        from incremental import setup  # type: ignore[import-not-found]

        args.dir.mkdir(parents=True, exist_ok=True)
        (args.dir / "setup.json").write_text(json.dumps(setup(home, args.faces, args.seed)))
        return
    info = json.loads((args.dir / "setup.json").read_text())
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    modes = [args.only] if args.only else ["before", "after"]
    for mode in modes:
        src = ROOT / "src" if mode == "after" else args.before_src
        if src is None:
            raise SystemExit("--before-src is needed for the before measurement")
        load_before = os.getloadavg()
        runs = [
            run_child(src, home, info["model_key"], args.faces, args.queries)
            for _ in range(args.runs)
        ]
        result[mode] = {
            "faces": args.faces,
            "src": str(src),
            "runs": runs,
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "store_bytes": info["store_bytes"],
        }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    report(result)


def report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="serving process, lean index: rows in RAM (before) or from segments")
    table.add_column("measure")
    for mode in ("before", "after"):
        for i, _ in enumerate(r.get(mode, {}).get("runs", [])):
            table.add_column(f"{mode} #{i + 1}", justify="right")

    def row(label: str, fn: Any) -> None:
        cells = [fn(run) for mode in ("before", "after") for run in r.get(mode, {}).get("runs", [])]
        table.add_row(label, *cells)

    row("faces", lambda x: f"{x['count']:,}")
    row("rows held in RAM", lambda x: f"{x['rows_in_ram']:,}")
    row("load (first search waits)", lambda x: f"{x['load_s']:.1f} s")
    row("VmRSS after load", lambda x: f"{x['mem_after_load_mb']['VmRSS']:,.0f} MB")
    row("VmRSS after searches", lambda x: f"{x['mem_after_search_mb']['VmRSS']:,.0f} MB")
    row("  of which file pages", lambda x: f"{x['mem_after_search_mb']['RssFile']:,.0f} MB")
    row("VmHWM (peak)", lambda x: f"{x['mem_after_search_mb']['VmHWM']:,.0f} MB")
    row("search p50 / p99 (reading + search)", lambda x: _pp(x["search_ms"]))
    row("index search alone p50 / p99", lambda x: _pp(x["index_search_ms"]))
    row("  its CPU time p50 / p99", lambda x: _pp(x.get("index_search_cpu_ms")))
    row("load CPU time", lambda x: f"{x['load_cpu_s']:.1f} s" if "load_cpu_s" in x else "-")
    row("mates at rank 1", lambda x: f"{x['mates_rank1']} / {x['queries']}")
    Console().print(table)
    for mode in ("before", "after"):
        if mode in r:
            lb, la = r[mode]["load_before"][0], r[mode]["load_after"][0]
            print(f"{mode}: load average {lb:.1f} before, {la:.1f} after")


def _pp(d: dict[str, float] | None) -> str:
    if d is None:
        return "-"
    return f"{d['p50']:.1f} / {d['p99']:.1f} ms"


if __name__ == "__main__":
    main()
