"""Fit the probe quality model (chance of finding the mate) on LFW, clean and degraded.

Runs the open-set identification evaluation with degraded probes (the same run as
``retroface eval identify DATA --degrade 40,24,16``, sharing its embedding cache), takes every
mated search with a face and an enrolled mate, fits the logistic model with identity-disjoint
folds (see :mod:`retroface.eval.quality_fit`) and prints its out-of-fold coverage and
calibration. ``--write`` replaces the shipped coefficients
(``src/retroface/vision/probe_quality.json``); the report goes to
``bench/results/probe_quality.json``.

Run: ``python bench/fit_probe_quality.py --write`` (minutes with a warm cache; the first run
embeds about 19,000 images).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from retroface.eval.dataset import resolve_protocol
from retroface.eval.degrade import parse_widths
from retroface.eval.embeddings_cache import CACHE_DIRNAME, EngineSpec
from retroface.eval.quality_fit import fit_model
from retroface.eval.runner import Evaluator, identify, quality_samples
from retroface.vision.probe_quality import MODEL_FILE

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
SHIPPED = REPO / "src" / "retroface" / "vision" / MODEL_FILE
REPORT = REPO / "bench" / "results" / "probe_quality.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "lfw")
    ap.add_argument("--widths", default="40,24,16")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--max-clean-hits-flagged", type=float, default=0.04)
    ap.add_argument("--write", action="store_true", help="replace the shipped coefficients")
    args = ap.parse_args()
    cache = Path(
        os.environ.get("RETROFACE_EVAL_CACHE")
        or Path(os.environ.get("RETROFACE_HOME", Path.home() / ".retroface")) / CACHE_DIRNAME
    )
    t0 = time.perf_counter()
    protocol = resolve_protocol(args.data)
    ev = Evaluator(EngineSpec(), cache, workers=args.workers)
    report = identify(ev, protocol, degrade_widths=parse_widths(args.widths), n_boot=10)
    samples = quality_samples(report)
    model, fit = fit_model(
        samples,
        ev.model,
        dataset=str(args.data),
        dataset_hash=protocol.dataset_hash(),
        max_clean_hits_flagged=args.max_clean_hits_flagged,
    )
    print(f"{len(samples):,} searches, poor below chance {model.poor_below:.3f}")
    print("probes            searches  misses  misses poor  hits  hits poor  rank-1  mean chance")
    for r in fit["coverage_out_of_fold"]:
        print(
            f"{r['probes']:16s} {r['searches']:9,d} {r['misses']:7,d} "
            f"{r['misses_poor'] / max(1, r['misses']):11.1%} {r['hits']:5,d} "
            f"{r['hits_poor'] / max(1, r['hits']):9.1%} {r['observed_rank1']:7.1%} "
            f"{r['mean_chance']:12.1%}"
        )
    print("calibration (out of fold):")
    for b in fit["calibration_out_of_fold"]:
        print(
            f"  chance {b['chance_from']:.2f}-{b['chance_to']:.2f}: {b['searches']:5,d} "
            f"searches, predicted {b['mean_chance']:.1%}, observed {b['observed']:.1%}"
        )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "command": "python bench/fit_probe_quality.py" + (" --write" if args.write else ""),
        "model": ev.model.key,
        "seconds": round(time.perf_counter() - t0, 1),
        "fit": fit,
        "shipped": model.to_dict(),
    }
    REPORT.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    if args.write:
        SHIPPED.write_text(json.dumps(model.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {SHIPPED}")


if __name__ == "__main__":
    main()
