"""Full LFW evaluation with the product's evaluation runner: 1:N, 1:1 pairs, degraded probes.

A thin wrapper over :mod:`retroface.eval.runner` (the code behind ``retroface eval``), so the
benchmark and the CLI can never disagree. Embeddings are cached under
``$RETROFACE_HOME/eval-cache`` (or ``RETROFACE_EVAL_CACHE``): the first run embeds the 6,175
images once per backend (minutes on 2 cores), reruns take seconds.

Run: ``python bench/eval_lfw.py --backend arcface,dlib --degrade 40,24,16``; ``--limit 100``
for a quick look. Output: ``bench/results/eval_lfw.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retroface.config import get_settings
from retroface.core.errors import InvalidInputError
from retroface.eval.dataset import identity_folders, load_pairs, resolve_protocol
from retroface.eval.degrade import parse_widths
from retroface.eval.embeddings_cache import CACHE_DIRNAME, EngineSpec
from retroface.eval.runner import Evaluator, identify, verify_all_pairs, verify_pairs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
DEFAULT_JSON = REPO / "bench" / "results" / "eval_lfw.json"


def _progress(label: str, done: int, total: int) -> None:
    step = max(1, total // 10)
    if done % step == 0 or done == total:
        print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--backend", default="arcface", help="comma-separated backends")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with lfw/")
    ap.add_argument("--degrade", default="40,24,16", help="probe face widths ('' for none)")
    ap.add_argument("--limit", type=int, default=None, help="first N identities only")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates")
    ap.add_argument("--workers", type=int, default=None, help="embedding processes")
    ap.add_argument("--all-pairs", action="store_true", help="also all-pairs TAR at FAR")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = ap.parse_args(argv)

    cache = Path(os.environ.get("RETROFACE_EVAL_CACHE", get_settings().home / CACHE_DIRNAME))
    lfw = args.data / "lfw"
    protocol = resolve_protocol(lfw, None, args.limit)
    allowed = [d.name for d in identity_folders(lfw, args.limit)] if args.limit else None
    pairs = load_pairs(args.data / "lfw_pairs.txt", lfw, allowed)
    widths = parse_widths(args.degrade) if args.degrade.strip() else []
    results: dict[str, Any] = {}
    for backend in [b.strip() for b in args.backend.split(",") if b.strip()]:
        start = time.perf_counter()
        ev = Evaluator(EngineSpec(backend=backend), cache, args.workers, _progress)
        ident = identify(
            ev,
            protocol,
            degrade_widths=widths if backend == "arcface" else [],
            n_boot=args.n_boot,
        )
        entry: dict[str, Any] = {"identification": ident.to_dict(), "pairs": None}
        try:
            entry["pairs"] = verify_pairs(ev, pairs, n_boot=args.n_boot).to_dict()
        except InvalidInputError as exc:  # a --limit subset may hold only one kind of pair
            print(f"{backend}: pairs skipped: {exc}", file=sys.stderr)
        if args.all_pairs:
            entry["all_pairs"] = verify_all_pairs(ev, lfw, limit=args.limit).to_dict()
        entry["seconds"] = round(time.perf_counter() - start, 1)
        results[backend] = entry
        i, p = entry["identification"], entry["pairs"]
        pairs_text = f", pairs accuracy {100 * p['accuracy']:.2f}%" if p else ""
        print(
            f"{backend}: rank-1 {100 * i['rank1']:.2f}%, FNIR @ FPIR 1% "
            f"{100 * i['fnir_at_fpir']['0.01']['fnir']:.2f}% (n_nonmated {i['n_nonmated']})"
            + pairs_text,
            file=sys.stderr,
        )
    report = {
        "bench": "eval_lfw",
        "data": str(args.data),
        "limit_identities": args.limit,
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count()},
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
