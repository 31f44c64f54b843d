"""What each probe-enhancement step does to rank-1 on degraded LFW probes.

A fixed sample of mated LFW probes (``--sample``, drawn with ``--seed`` from the protocol's mated
searches whose clean image has a face) is degraded as ``retroface eval identify --degrade`` does
(:mod:`retroface.eval.degrade`: face shrunk to ``--widths`` px, blurred, JPEG quality 30), then
each enhancement of :mod:`retroface.media.enhance` is applied and the result searched against the
whole LFW gallery of the 1:N protocol (1,862 images), exactly, with the product's pipeline
(detection, primary face, alignment, ArcFace). Two forms of the degraded probe:

- ``export``: the still as recorders export it, scaled back up to the original size (what the
  evaluation's degraded curve measures);
- ``native``: the still at the camera's resolution (a face of ``width`` px in a small image),
  which the detector never enlarges.

Reported per width, form and enhancement: rank-1, failures to detect, and, against no
enhancement on the same probes, how many searches it turned from miss to hit and from hit to
miss. The gallery's and the clean probes' embeddings come from the evaluation cache
(``RETROFACE_EVAL_CACHE`` or ``$RETROFACE_HOME/eval-cache``); enhanced probes are not cached.

Run: ``python bench/enhance.py`` (300 probes, 24 and 40 px; an interrupted run resumes from
its JSON). Output: a table, and ``bench/results/enhance.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from retroface.config import get_settings
from retroface.eval.dataset import resolve_protocol
from retroface.eval.degrade import DegradedImage, DegradeSpec, degrade_image, parse_widths
from retroface.eval.embeddings_cache import CACHE_DIRNAME, EngineSpec
from retroface.eval.runner import Evaluator
from retroface.media.enhance import apply_steps, parse_steps
from retroface.media.images import load_image
from retroface.vision.engines import primary_face
from retroface.vision.types import FaceEngine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
DEFAULT_JSON = REPO / "bench" / "results" / "enhance.json"

#: The crop an examiner would draw: the face box grown by one face width on every side.
CROP = "crop"
#: (name, form, steps); CROP in a step list is replaced by the probe's crop box.
VARIANTS: list[tuple[str, str, list[Any]]] = [
    ("none", "export", []),
    ("crop to face", "export", [CROP]),
    ("rotate 5°", "export", [{"op": "rotate", "angle": 5}]),
    ("brightness +30", "export", [{"op": "brightness", "offset": 30}]),
    ("contrast x1.5", "export", [{"op": "contrast", "factor": 1.5}]),
    ("gamma 1.5", "export", [{"op": "gamma", "gamma": 1.5}]),
    ("equalize (CLAHE 2)", "export", [{"op": "equalize"}]),
    ("denoise nlmeans 7", "export", [{"op": "denoise"}]),
    ("denoise bilateral 7", "export", [{"op": "denoise", "method": "bilateral"}]),
    ("sharpen 1.0 r1", "export", [{"op": "sharpen"}]),
    ("upscale x2 lanczos", "export", [{"op": "upscale", "factor": 2, "interpolation": "lanczos"}]),
    (
        "crop + denoise + sharpen 0.5",
        "export",
        [CROP, {"op": "denoise"}, {"op": "sharpen", "amount": 0.5}],
    ),
    ("none", "native", []),
    ("upscale x4 lanczos", "native", [{"op": "upscale", "factor": 4, "interpolation": "lanczos"}]),
]


def crop_box(box: Sequence[float], shape: tuple[int, ...]) -> list[int]:
    h, w = shape[:2]
    x0, y0, x1, y1 = box
    m = x1 - x0
    return [
        max(0, int(x0 - m)),
        max(0, int(y0 - m)),
        min(w, int(np.ceil(x1 + m))),
        min(h, int(np.ceil(y1 + m))),
    ]


def mcnemar_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: how likely a split this uneven of the searches that
    changed outcome is if the step made no difference (each change equally likely either way)."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with lfw/")
    ap.add_argument("--widths", default="24,40", help="degraded face widths, px")
    ap.add_argument("--sample", type=int, default=300, help="mated probes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="engines, one onnxruntime thread each")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)

    cache = Path(os.environ.get("RETROFACE_EVAL_CACHE", get_settings().home / CACHE_DIRNAME))
    protocol = resolve_protocol(args.data / "lfw", None, None)
    ev = Evaluator(EngineSpec(), cache, workers=args.threads)
    gal, mat = protocol.role("gallery"), protocol.role("mated")
    g = ev.embed([e.path for e in gal], "Embedding gallery")
    m = ev.embed([e.path for e in mat], "Embedding mated probes")
    enrolled = np.flatnonzero(g.found)
    gallery = g.embeddings[enrolled]
    gallery_identity = np.array([gal[i].identity for i in enrolled])

    candidates = [i for i in range(len(mat)) if m.found[i]]
    sample = sorted(random.Random(args.seed).sample(candidates, min(args.sample, len(candidates))))
    identities = [mat[i].identity for i in sample]
    boxes = [tuple(float(v) for v in m.boxes[i]) for i in sample]
    images = [load_image(mat[i].path) for i in sample]

    def top1(embedding: np.ndarray) -> str:
        return str(gallery_identity[int(np.argmax(gallery @ embedding))])

    clean_hits = [
        top1(m.embeddings[i]) == ident for i, ident in zip(sample, identities, strict=True)
    ]
    engines: dict[int, FaceEngine] = {}
    lock = threading.Lock()

    def engine() -> FaceEngine:
        tid = threading.get_ident()
        with lock:
            if tid not in engines:
                engines[tid] = EngineSpec().build(threads=1)
            return engines[tid]

    widths = parse_widths(args.widths)
    # An interrupted run resumes: rows of the same sample already in the JSON are kept.
    done: dict[tuple[int, str, str], dict[str, Any]] = {}
    if args.json.is_file():
        old = json.loads(args.json.read_text())
        if old.get("sample_index") == sample:
            done = {(r["width"], r["form"], r["enhancement"]): r for r in old.get("rows", [])}
    rows: list[dict[str, Any]] = []

    def write(partial: bool) -> None:
        report = {
            "bench": "enhance",
            "data": str(args.data),
            "sample": len(sample),
            "sample_index": sample,
            "seed": args.seed,
            "gallery_templates": int(enrolled.size),
            "clean_rank1": float(np.mean(clean_hits)),
            "machine": {"arch": platform.machine(), "cpus": os.cpu_count()},
            # the steps' own time, summed over rows (a resumed run adds only its new rows')
            "seconds_enhancing_and_searching": round(sum(r["seconds"] for r in rows), 1),
            "partial": partial,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")

    for width in widths:
        spec = DegradeSpec(width)
        degraded = [degrade_image(img, box, spec) for img, box in zip(images, boxes, strict=True)]
        baseline: dict[str, list[bool]] = {}
        for name, form, raw in VARIANTS:
            if (width, form, name) in done:
                rows.append(done[(width, form, name)])
                if name == "none":
                    baseline[form] = done[(width, form, name)]["hits"]
                continue

            def run(
                j: int,
                raw: list[Any] = raw,
                form: str = form,
                degraded: list[DegradedImage] = degraded,
            ) -> tuple[bool, bool]:
                d = degraded[j]
                probe = d.image if form == "export" else d.small
                steps_raw = [
                    {"op": "crop", "box": crop_box(boxes[j], probe.shape)} if s == CROP else s
                    for s in raw
                ]
                out = apply_steps(probe, parse_steps(steps_raw)) if steps_raw else probe
                face = primary_face(engine().analyse(out), out.shape)
                if face is None:
                    return False, False
                return True, top1(np.asarray(face.embedding, np.float32)) == identities[j]

            start = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                results = list(pool.map(run, range(len(sample))))
            hits = [h for _, h in results]
            if name == "none":
                baseline[form] = hits
            base = baseline[form]
            row = {
                "width": width,
                "form": form,
                "enhancement": name,
                "steps": raw,
                "n": len(hits),
                "rank1": sum(hits) / len(hits),
                "failures_to_detect": sum(1 for f, _ in results if not f),
                "gained": sum(1 for h, b in zip(hits, base, strict=True) if h and not b),
                "lost": sum(1 for h, b in zip(hits, base, strict=True) if b and not h),
                "seconds": round(time.perf_counter() - start, 1),
                "hits": hits,
            }
            rows.append(row)
            write(partial=True)
            print(
                f"{width:>3} px {form:<6} {name:<30} rank-1 {100 * row['rank1']:5.1f}%  "
                f"FTD {row['failures_to_detect']:>3}  +{row['gained']:<3} -{row['lost']:<3} "
                f"({row['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )

    print()
    print(f"rank-1 on {len(sample)} mated LFW probes (clean: {100 * np.mean(clean_hits):.1f}%)")
    print()
    print("| enhancement | form | " + " | ".join(f"{w} px" for w in widths) + " |")
    print("|---|---|" + "---|" * len(widths))
    for name, form, _ in VARIANTS:
        cells = []
        for w in widths:
            r = next(
                x
                for x in rows
                if x["width"] == w and x["form"] == form and x["enhancement"] == name
            )
            p = mcnemar_p(r["gained"], r["lost"])
            delta = "" if name == "none" else f" (+{r['gained']}/-{r['lost']}, p={p:.2g})"
            cells.append(f"{100 * r['rank1']:.1f}%{delta}")
        print(f"| {name} | {form} | " + " | ".join(cells) + " |")
    write(partial=False)
    print(f"written {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
