"""CPU speed of each face backend: detection per image and embedding per face.

Detection (with landmarks: SCRFD outputs them, dlib runs HOG then its shape predictor) is timed
on real photos letterboxed to 640x480 and 1920x1080, because its cost depends on the image size
(dlib's HOG scans the whole, upsampled, image; SCRFD always sees a square of ``det_size``).
Embedding is timed per face from aligned crops at batch 1 (one face in a photo) and batch 32
(enrolling a gallery), since batching amortises per-call overhead very differently per runtime.
Every figure is the median of ``--runs`` timings after ``--warmup`` untimed ones.

``fused`` (ArcFace + EdgeFace-S on the same crop) is timed like ``arcface``: its embedding per face
runs both recognisers (EdgeFace-S's export takes one crop a run, so its batch 32 is 32 runs).

Run: ``python bench/speed.py`` (``--backend arcface,fused --det-size 640,1280``). Results go to
``bench/results/speed.json``. Close other heavy programs first: medians resist noise, not
contention.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from retroface.media.images import load_image
from retroface.vision.alignment import align_face
from retroface.vision.engines import ArcFaceEngine, create_engine
from retroface.vision.types import ImageArray

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
DEFAULT_JSON = REPO / "bench" / "results" / "speed.json"
SIZES = ((640, 480), (1920, 1080))
#: Real photos of different sizes and face counts: a group scene and single portraits.
IMAGES = (
    "people/_multi_face_scenes/obama_and_biden.jpg",
    "people/_multi_face_scenes/kit_with_rose.jpg",
    "people/barack_obama/obama1.jpg",
    "people/joe_biden/biden2.jpg",
    "people/rose_leslie/img1.jpg",
)
BATCHES = (1, 32)


def letterbox(image: ImageArray, width: int, height: int) -> ImageArray:
    """Resize keeping the aspect ratio and pad (black, centred) to exactly width x height."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = resized
    return out


def median_ms(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def cycle(items: Sequence[Any], fn: Callable[[Any], object]) -> Callable[[], object]:
    """A callable that processes the next item on each call, so runs spread over all images."""
    state = {"i": 0}

    def step() -> object:
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return fn(item)

    return step


def to_batch(crops: list[ImageArray], n: int) -> list[ImageArray]:
    """``n`` crops, repeating the real ones as needed (content does not change the cost)."""
    return [crops[i % len(crops)] for i in range(n)]


def bench_arcface(
    images: dict[str, list[ImageArray]],
    det_size: int,
    threads: int | None,
    runs: int,
    warmup: int,
    backend: str = "arcface",
) -> dict[str, Any]:
    engine = create_engine(backend, det_size=det_size, threads=threads)
    assert isinstance(engine, ArcFaceEngine)
    out: dict[str, Any] = {"model": engine.identity.key, "det_size": det_size, "detect": {}}
    crops: list[ImageArray] = []
    for size, imgs in images.items():
        faces = [engine.detector.detect(im) for im in imgs]
        ms = median_ms(cycle(imgs, engine.detector.detect), runs * len(imgs), warmup)
        out["detect"][size] = {"ms_per_image": ms, "faces_found": [len(f) for f in faces]}
        if size == "1920x1080":
            crops = [
                align_face(im, lm, engine.recogniser.crop_size)
                for im, dets in zip(imgs, faces, strict=True)
                for lm in dets.landmarks
            ]
    out["embed"] = {}
    for flip in (False, True):
        for n in BATCHES:
            batch = to_batch(crops, n)
            # the engine's embedding step: one recogniser (arcface) or both (fused)
            ms = median_ms(partial(engine._embed, batch, flip=flip), runs, warmup)
            out["embed"][f"batch{n}" + ("_flip" if flip else "")] = {"ms_per_face": ms / n}
    return out


def bench_dlib(
    images: dict[str, list[ImageArray]], runs: int, warmup: int, upsample: int
) -> dict[str, Any]:
    from retroface.vision.dlib_backend import DlibEngine

    engine = DlibEngine(upsample=upsample)
    out: dict[str, Any] = {"model": engine.identity.key, "upsample": upsample, "detect": {}}
    chips: list[ImageArray] = []
    for size, imgs in images.items():
        found = [engine.detect(im) for im in imgs]
        # HOG on an upsampled 1080p frame takes seconds: fewer runs there, still a median
        n_runs = max(3, runs // 3) if size == "1920x1080" else runs
        ms = median_ms(cycle(imgs, engine.detect), n_runs * len(imgs), min(warmup, 1))
        out["detect"][size] = {"ms_per_image": ms, "faces_found": [len(f) for f in found]}
        if size == "1920x1080":
            for im, dets in zip(imgs, found, strict=True):
                chips += engine.chips(im, [shape for _, _, shape in dets])
    out["embed"] = {}
    for n in BATCHES:
        batch = to_batch(chips, n)
        # dlib's ResNet takes about 0.1 s a face on CPU: bound batch-32 runs to keep this short
        n_runs = runs if n == 1 else max(3, runs // 4)
        ms = median_ms(partial(engine.embed_chips, batch), n_runs, min(warmup, 1))
        out["embed"][f"batch{n}"] = {"ms_per_face": ms / n}
    return out


def print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Speed (median ms)")
    cols = ["detect 640x480", "detect 1920x1080", "embed b1 /face", "embed b32 /face"]
    table.add_column("variant")
    for c in cols:
        table.add_column(c, justify="right")
    for name, r in results.items():
        det, emb = r["detect"], r["embed"]
        table.add_row(
            name,
            f"{det['640x480']['ms_per_image']:.1f}",
            f"{det['1920x1080']['ms_per_image']:.1f}",
            f"{emb['batch1']['ms_per_face']:.2f}",
            f"{emb['batch32']['ms_per_face']:.2f}",
        )
        if "batch1_flip" in emb:
            table.add_row(
                f"{name} +flip",
                "",
                "",
                f"{emb['batch1_flip']['ms_per_face']:.2f}",
                f"{emb['batch32_flip']['ms_per_face']:.2f}",
            )
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--backend", default="arcface,dlib", help="comma-separated backends")
    ap.add_argument(
        "--det-size", default="640,1280", help="arcface detector sizes, comma-separated"
    )
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all)")
    ap.add_argument("--upsample", type=int, default=1, help="dlib HOG upsampling")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per image / batch")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = ap.parse_args(argv)

    load_before = list(os.getloadavg())  # other work on the machine skews every figure
    sources = [load_image(args.data / rel) for rel in IMAGES]
    images = {f"{w}x{h}": [letterbox(im, w, h) for im in sources] for w, h in SIZES}
    results: dict[str, dict[str, Any]] = {}
    for backend in [b.strip() for b in args.backend.split(",") if b.strip()]:
        if backend in ("arcface", "fused"):
            for det_size in [int(s) for s in args.det_size.split(",")]:
                print(f"{backend}, det_size {det_size} ...", file=sys.stderr, flush=True)
                results[f"{backend}@{det_size}"] = bench_arcface(
                    images, det_size, args.threads, args.runs, args.warmup, backend
                )
        elif backend == "dlib":
            print("dlib ...", file=sys.stderr, flush=True)
            results["dlib"] = bench_dlib(images, args.runs, args.warmup, args.upsample)
        else:
            ap.error(f"unknown backend {backend!r}")
    report = {
        "bench": "speed",
        "images": list(IMAGES),
        "settings": {
            "threads": args.threads,
            "runs": args.runs,
            "warmup": args.warmup,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(f"written {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
