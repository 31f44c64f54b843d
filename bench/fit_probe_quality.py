"""Fit the probe quality model (chance of finding the mate) on LFW, clean and degraded.

Runs the open-set identification evaluation with degraded probes (the same run as
``retroface eval identify DATA --degrade 40,24,16``, sharing its embedding cache), takes every
mated search with a face and an enrolled mate, fits the logistic model with identity-disjoint
folds (see :mod:`retroface.eval.quality_fit`) and prints its out-of-fold coverage and
calibration. ``--write`` replaces the shipped coefficients
(``src/retroface/vision/probe_quality.json``); the report goes to
``bench/results/probe_quality.json``.

Run: ``python bench/fit_probe_quality.py --write`` (minutes with a warm cache; the first run
embeds about 19,000 images). ``--sample 700,250`` keeps the whole gallery but searches with a
seeded sample of 700 mated and 250 non-mated probes (numpy ``default_rng(0)``), for a quick
fit on a shared machine; the sample is recorded with the coefficients. ``--backend fused``
fits the fused backend's own model (``probe_quality_fused.json``; report
``bench/results/probe_quality_fused.json``): each backend's chance of a hit is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from retroface.eval.dataset import Protocol, resolve_protocol
from retroface.eval.degrade import parse_widths
from retroface.eval.embeddings_cache import CACHE_DIRNAME, EngineSpec
from retroface.eval.quality_fit import fit_model
from retroface.eval.runner import Evaluator, identify, quality_samples
from retroface.vision.probe_quality import model_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
VISION = REPO / "src" / "retroface" / "vision"
RESULTS = REPO / "bench" / "results"


def sample_protocol(protocol: Protocol, mated: int, nonmated: int) -> Protocol:
    """The whole gallery with a seeded sample of the mated and non-mated searches."""
    gal, mat, non = protocol.role("gallery"), protocol.role("mated"), protocol.role("nonmated")
    rng = np.random.default_rng(0)
    mi = np.sort(rng.choice(len(mat), min(mated, len(mat)), replace=False))
    ni = np.sort(rng.choice(len(non), min(nonmated, len(non)), replace=False))
    return Protocol(
        protocol.dataset,
        gal + [mat[i] for i in mi] + [non[i] for i in ni],
        protocol.source,
        protocol.limit,
        [*protocol.notes, f"sampled {len(mi)} mated and {len(ni)} non-mated searches (seed 0)"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "lfw")
    ap.add_argument("--widths", default="40,24,16")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--miss-coverage", type=float, default=0.95)
    ap.add_argument("--max-clean-hits-flagged", type=float, default=0.04)
    ap.add_argument("--sample", default="", help="MATED,NONMATED probes to sample (seed 0)")
    ap.add_argument("--write", action="store_true", help="replace the shipped coefficients")
    ap.add_argument("--backend", default="arcface", help="arcface (default) or fused")
    args = ap.parse_args()
    cache = Path(
        os.environ.get("RETROFACE_EVAL_CACHE")
        or Path(os.environ.get("RETROFACE_HOME", Path.home() / ".retroface")) / CACHE_DIRNAME
    )
    t0 = time.perf_counter()
    protocol = resolve_protocol(args.data)
    if args.sample:
        protocol = sample_protocol(protocol, *(int(v) for v in args.sample.split(",")))
    shipped = VISION / model_file(args.backend)
    report_path = RESULTS / model_file(args.backend)
    ev = Evaluator(EngineSpec(backend=args.backend), cache, workers=args.workers)
    report = identify(ev, protocol, degrade_widths=parse_widths(args.widths), n_boot=10)
    samples = quality_samples(report)
    model, fit = fit_model(
        samples,
        ev.model,
        dataset=str(args.data),
        dataset_hash=protocol.dataset_hash(),
        notes=[n for n in protocol.notes if n.startswith("sampled")],
        miss_coverage=args.miss_coverage,
        max_clean_hits_flagged=args.max_clean_hits_flagged,
    )
    for name, res, ftd in [
        ("undegraded", report.result, report.failures["failure_to_detect_mated"])
    ] + [(f"{p.face_width} px", p.result, p.failure_to_detect_mated) for p in report.degrade]:
        op = res.fnir_at_fpir["0.01"]
        print(
            f"{name:12s} rank-1 {res.rank1:.2%}  FNIR@FPIR1% {op.fnir:.2%} (threshold "
            f"{op.threshold:.3f})  mated probes without a face: {ftd}"
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
    report_path.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "command": "python bench/fit_probe_quality.py"
        + (f" --backend {args.backend}" if args.backend != "arcface" else "")
        + (f" --sample {args.sample}" if args.sample else "")
        + (" --write" if args.write else ""),
        "identification": {
            "undegraded": report.result.to_dict()["rank1"],
            **{f"{p.face_width}px": p.to_dict() for p in report.degrade},
        },
        "model": ev.model.key,
        "seconds": round(time.perf_counter() - t0, 1),
        "fit": fit,
        "shipped": model.to_dict(),
    }
    report_path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    if args.write:
        shipped.write_text(json.dumps(model.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {shipped}")


if __name__ == "__main__":
    main()
