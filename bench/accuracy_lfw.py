"""LFW accuracy of each face backend: pair verification and all-pairs TAR at a fixed FAR.

Each image is embedded once with the backend's full pipeline (detection, alignment, embedding) and
the primary face (``primary_face``) stands for the image. A failure to detect is counted and listed,
never replaced by a whole-image crop: a deployed system does not get that second chance either.

(a) Pair verification on ``lfw_pairs.txt``, 10-fold: the threshold that maximises accuracy on nine
    folds is applied to the tenth. The file is a subset of LFW View 2 with its folds kept as
    consecutive blocks (same pairs, then different pairs, ten times) but without headers; those
    blocks are the folds (people never cross folds). A file not laid out so is split
    round-robin (pair ``i`` in fold ``i % 10``). A pair with an undetected image is a wrong
    decision whatever the threshold.
(b) All pairs of ``lfw/`` (about 19 million): TAR at FAR 1e-3 and 1e-4, genuine = every
    same-identity pair, impostor = every different-identity pair. An undetected image cannot
    match anything: its genuine pairs are misses, its impostor pairs correct rejections (they stay
    in the FAR denominator).

Run: ``python bench/accuracy_lfw.py --backend arcface,dlib --flip`` (``--limit 200`` for a quick
look). Results go to ``bench/results/accuracy_lfw.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retroface.core.errors import InvalidInputError
from retroface.eval.dataset import load_pairs
from retroface.media.images import load_image
from retroface.vision.engines import ArcFaceEngine, create_engine, primary_face
from retroface.vision.types import FaceEngine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
DEFAULT_JSON = REPO / "bench" / "results" / "accuracy_lfw.json"
FARS = (1e-3, 1e-4)
FLIP = "arcface+flip"

# ---------------------------------------------------------------------------------------------
# embedding, in worker processes


@dataclass
class ImageResult:
    """What one image gave: an embedding per variant (None when no face was found)."""

    index: int
    embeddings: dict[str, NDArray[np.float32] | None]
    n_faces: int
    det_score: float
    error: str = ""


_ENGINE: FaceEngine | None = None
_FLIP = False


def _init_worker(backend: str, threads: int, det_size: int, flip: bool) -> None:
    global _ENGINE, _FLIP
    _ENGINE = create_engine(backend, threads=threads, det_size=det_size)
    _FLIP = flip and isinstance(_ENGINE, ArcFaceEngine)


def _model_key() -> str:
    assert _ENGINE is not None
    return _ENGINE.identity.key


def _embed_one(task: tuple[int, str]) -> ImageResult:
    index, path = task
    assert _ENGINE is not None
    name = _ENGINE.identity.backend
    names = [name, FLIP] if _FLIP else [name]
    try:
        image = load_image(path)
    except Exception as exc:  # a broken file is a failure to enrol, reported like one
        return ImageResult(index, dict.fromkeys(names), 0, 0.0, f"{type(exc).__name__}: {exc}")
    faces = _ENGINE.analyse(image)
    face = primary_face(faces, image.shape)
    if face is None:
        return ImageResult(index, dict.fromkeys(names), 0, 0.0)
    out: dict[str, NDArray[np.float32] | None] = {name: face.embedding}
    if _FLIP and isinstance(_ENGINE, ArcFaceEngine):
        # Same detection and crop as the plain run, embedding = ArcFaceEngine(flip=True)'s.
        out[FLIP] = _ENGINE.recogniser.embed([face.crop], flip=True)[0]
    return ImageResult(index, out, len(faces), float(face.det_score))


def _progress_iter(results: Iterator[ImageResult], total: int, label: str) -> Iterator[ImageResult]:
    """Wrap results in a Rich progress bar (plain periodic lines when not on a terminal)."""
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(f"[bold]{label}", *columns, transient=True) as progress:
            task = progress.add_task(label, total=total)
            for r in results:
                progress.advance(task)
                yield r
        return
    start = time.perf_counter()
    step = max(1, total // 20)
    for i, r in enumerate(results, 1):
        if i % step == 0 or i == total:
            rate = i / max(time.perf_counter() - start, 1e-9)
            left = (total - i) / rate
            print(
                f"  {label}: {i}/{total} images, {rate:.1f}/s, about {left:.0f} s left",
                file=sys.stderr,
                flush=True,
            )
        yield r


def embed_all(
    paths: Sequence[Path], backend: str, workers: int, threads: int, det_size: int, flip: bool
) -> tuple[list[ImageResult], float, str]:
    """Embed every image once; returns results in input order, seconds taken and model key."""
    tasks = [(i, str(p)) for i, p in enumerate(paths)]
    label = backend + (" (+flip)" if flip and backend == "arcface" else "")
    start = time.perf_counter()
    if workers <= 1:
        _init_worker(backend, threads, det_size, flip)
        assert _ENGINE is not None
        key = _ENGINE.identity.key
        results = list(_progress_iter(map(_embed_one, tasks), len(tasks), label))
    else:
        # Engines are built only in the workers: forking a live onnxruntime session is unsafe.
        with ProcessPoolExecutor(
            workers, initializer=_init_worker, initargs=(backend, threads, det_size, flip)
        ) as pool:
            key = pool.submit(_model_key).result()
            results = list(
                _progress_iter(pool.map(_embed_one, tasks, chunksize=16), len(tasks), label)
            )
    return results, time.perf_counter() - start, key


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Lfw:
    paths: list[Path]
    labels: NDArray[np.int64]  # identity index per image
    identities: list[str]
    pairs: list[tuple[int, int, bool]] = field(default_factory=list)  # (image, image, same)
    folds: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    fold_source: str = ""
    pairs_skipped: int = 0


def load_lfw(data: Path, limit: int | None) -> Lfw:
    root = data / "lfw"
    identities = sorted(d.name for d in root.iterdir() if d.is_dir())
    if limit:
        identities = identities[:limit]
    paths: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(identities):
        for p in sorted((root / name).glob("*.jpg")):
            paths.append(p)
            labels.append(k)
    lfw = Lfw(paths, np.array(labels, dtype=np.int64), identities)
    # the pairs file is parsed (and its folds found) by the product's own loader
    index = {p: i for i, p in enumerate(paths)}
    try:
        listed = load_pairs(data / "lfw_pairs.txt", root, identities=identities)
    except InvalidInputError:  # no pair among the identities kept by --limit
        return lfw
    lfw.fold_source = listed.fold_source
    lfw.pairs_skipped = listed.skipped
    lfw.pairs = [
        (index[listed.paths[a]], index[listed.paths[b]], same) for a, b, same in listed.pairs
    ]
    lfw.folds = np.array(listed.folds, dtype=np.int64)
    return lfw


# ---------------------------------------------------------------------------------------------
# metrics


def best_threshold(scores: NDArray[np.float64], same: NDArray[np.bool_]) -> float:
    """Threshold (accept when score > threshold) with the highest accuracy on these pairs."""
    order = np.argsort(scores)
    s, y = scores[order], same[order]
    # rejecting the first k pairs: correct = different ones among them + same ones after them
    diff_below = np.concatenate([[0], np.cumsum(~y)])
    same_above = np.concatenate([[0], np.cumsum(y[::-1])])[::-1]
    correct = diff_below + same_above
    k = int(np.argmax(correct))
    if k == 0:
        return float(s[0]) - 1e-6
    if k == len(s):
        return float(s[-1])
    return float((s[k - 1] + s[k]) / 2.0)


def pair_verification(emb: NDArray[np.float32], ok: NDArray[np.bool_], lfw: Lfw) -> dict[str, Any]:
    if not lfw.pairs:
        return {"accuracy_mean": None, "pairs": 0, "folds": lfw.fold_source}
    a = np.array([p[0] for p in lfw.pairs])
    b = np.array([p[1] for p in lfw.pairs])
    same = np.array([p[2] for p in lfw.pairs])
    valid = ok[a] & ok[b]
    scores = np.einsum("ij,ij->i", emb[a], emb[b]).astype(np.float64)
    accs, thresholds = [], []
    for k in np.unique(lfw.folds):
        test = lfw.folds == k
        train = ~test & valid
        t = best_threshold(scores[train], same[train])
        correct = valid[test] & ((scores[test] > t) == same[test])
        accs.append(float(correct.mean()))
        thresholds.append(t)
    return {
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracies": accs,
        "thresholds": thresholds,
        "pairs": len(lfw.pairs),
        "pairs_with_failed_image": int((~valid).sum()),
        "folds": lfw.fold_source,
    }


def all_pairs_tar(
    emb: NDArray[np.float32], ok: NDArray[np.bool_], labels: NDArray[np.int64], block: int = 512
) -> dict[str, Any]:
    """TAR at each FAR over every unordered pair, scored in row blocks of ``emb @ emb.T``."""
    n = len(labels)
    counts = np.bincount(labels)
    n_genuine = int((counts * (counts - 1) // 2).sum())
    n_impostor = n * (n - 1) // 2 - n_genuine
    genuine_parts, impostor_parts = [], []
    e = np.where(ok[:, None], emb, 0.0).astype(np.float32)
    cols = np.arange(n)
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        sims = e[rows] @ e.T
        upper = cols[None, :] > rows[:, None]
        both = upper & ok[rows][:, None] & ok[None, :]
        same = labels[rows][:, None] == labels[None, :]
        genuine_parts.append(sims[both & same])
        impostor_parts.append(sims[both & ~same])
    genuine = np.concatenate(genuine_parts)
    impostor = np.sort(np.concatenate(impostor_parts))[::-1]
    out: dict[str, Any] = {
        "genuine_pairs": n_genuine,
        "impostor_pairs": n_impostor,
        "genuine_pairs_scored": len(genuine),
        "impostor_pairs_scored": len(impostor),
    }
    for far in FARS:
        allowed = int(np.floor(far * n_impostor))  # impostor pairs that may score above t
        t = float(impostor[allowed]) if allowed < len(impostor) else -1.0
        out[f"far_{far:g}"] = {
            "threshold": t,
            "tar": float((genuine > t).sum() / max(n_genuine, 1)),
            "far_measured": float((impostor > t).sum() / max(n_impostor, 1)),
        }
    return out


# ---------------------------------------------------------------------------------------------
# report


def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = ("backend", "pairs acc", "TAR@1e-3", "TAR@1e-4", "no face", "img/s")
    rows = []
    for name, r in results.items():
        pv, ap = r["pairs"], r["all_pairs"]
        rows.append(
            (
                name,
                f"{100 * pv['accuracy_mean']:.2f} ± {100 * pv['accuracy_std']:.2f}%"
                if pv["pairs"]
                else "no pairs",
                f"{100 * ap['far_0.001']['tar']:.2f}%",
                f"{100 * ap['far_0.0001']['tar']:.2f}%",
                f"{r['failures_to_detect']} / {r['images']}",
                f"{r['images_per_second']:.1f}",
            )
        )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a core dependency
        widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
        for line in [header, *rows]:
            print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)))
        return
    table = Table(title="LFW accuracy")
    for h in header:
        table.add_column(h, justify="left" if h == "backend" else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--backend", default="arcface,dlib", help="comma-separated backends")
    ap.add_argument("--flip", action="store_true", help="also measure arcface with flip")
    ap.add_argument("--limit", type=int, default=None, help="first N identities only")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (1: in-process)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker")
    ap.add_argument("--det-size", type=int, default=640, help="arcface detector input size")
    ap.add_argument(
        "--save-embeddings", type=Path, default=None, help="folder for <variant>.npz embeddings"
    )
    args = ap.parse_args(argv)

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if args.flip and "arcface" not in backends:
        backends.insert(0, "arcface")
    lfw = load_lfw(args.data, args.limit)
    print(
        f"{len(lfw.paths)} images of {len(lfw.identities)} identities; "
        f"{len(lfw.pairs)} verification pairs ({lfw.pairs_skipped} outside the selection); "
        f"folds: {lfw.fold_source}",
        file=sys.stderr,
    )
    results: dict[str, dict[str, Any]] = {}
    for backend in backends:
        flip = args.flip and backend == "arcface"
        per_image, seconds, key = embed_all(
            lfw.paths, backend, args.workers, args.threads, args.det_size, flip
        )
        for variant in [backend, FLIP] if flip else [backend]:
            ok = np.array([r.embeddings[variant] is not None for r in per_image])
            dim = next(len(v) for r in per_image if (v := r.embeddings[variant]) is not None)
            emb = np.zeros((len(per_image), dim), dtype=np.float32)
            for r in per_image:
                if (v := r.embeddings[variant]) is not None:
                    emb[r.index] = v
            root = args.data / "lfw"
            failed = [
                lfw.paths[r.index].relative_to(root).as_posix()
                for r in per_image
                if not ok[r.index]
            ]
            errors = {lfw.paths[r.index].name: r.error for r in per_image if r.error}
            if args.save_embeddings:
                args.save_embeddings.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(
                    args.save_embeddings / f"{variant}.npz",
                    embeddings=emb,
                    detected=ok,
                    labels=lfw.labels,
                    det_scores=np.array([r.det_score for r in per_image]),
                    n_faces=np.array([r.n_faces for r in per_image]),
                    paths=np.array([p.relative_to(root).as_posix() for p in lfw.paths]),
                )
            results[variant] = {
                "model": key + ("+flip" if variant == FLIP else ""),
                "images": len(per_image),
                "failures_to_detect": len(failed),
                "failed_images": failed,
                "load_errors": errors,
                "images_with_several_faces": sum(r.n_faces > 1 for r in per_image),
                "embed_seconds": round(seconds, 1),
                "images_per_second": len(per_image) / seconds,
                "pairs": pair_verification(emb, ok, lfw),
                "all_pairs": all_pairs_tar(emb, ok, lfw.labels),
            }
    report = {
        "bench": "accuracy_lfw",
        "data": str(args.data),
        "limit_identities": args.limit,
        "images": len(lfw.paths),
        "identities": len(lfw.identities),
        "settings": {
            "workers": args.workers,
            "threads": args.threads,
            "det_size": args.det_size,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    for name, res in results.items():
        if res["failed_images"]:
            shown = ", ".join(res["failed_images"][:8])
            n_more = len(res["failed_images"]) - 8
            more = f" and {n_more} more" if n_more > 0 else ""
            print(f"{name}: no face found in {shown}{more}", file=sys.stderr)
    print(f"written {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
