"""Do the quality minimums and the main-face rule pick out what fails? Measured on the LFW half.

Issue #16: the default enrolment refused references below the quality minimums, and
``search --main-face`` refused stills whose main face was not twice as prominent as the next.
This script checks both rules against outcomes with the default engine:

1. **Reference quality.** Every LFW image is analysed as a reference is (``engine.analyse``, the
   primary face). Each image of a person with several images is taken in turn as that person's
   reference; the person's other images are its mate searches against the 1:N protocol's gallery
   of everyone else (``lfw_1n_protocol.csv``), found when the reference is the nearest and at or
   above the shipped operating threshold. Impostor pairs: the reference against every image of
   every other person. Reported by the minimums the reference breaks, by band of sharpness, yaw
   and contrast, and by the calibrated verdict of issue #13.
2. **Degraded references** (``--degrade 40,24``): the protocol's 1,862 gallery images degraded to
   CCTV-like faces of that width (as ``eval --degrade``), searched by the clean mated probes;
   whether the minimums or the verdict tell the references that fail, and whether poor references
   draw false matches from the non-mated probes.
3. **Main face.** On every image where SCRFD finds several faces and the labelled person is known
   (the face that matches the person's other images at >= 0.35 while no other face does): is the
   most prominent face the person, and how many images does each ratio refuse?

The analyses are kept in ``--work`` (a pickle per step), so a second run only re-reports.

    python bench/reference_quality.py                     # ~15 min of CPU on 2 cores
    python bench/reference_quality.py --degrade 40,24     # + ~5 min
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import multiprocessing as mp
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(
    os.environ.get("RETROFACE_TEST_DATA", Path(__file__).parents[1] / "../shared/data")
).resolve()
_ENGINE: Any = None


def _protocol() -> list[dict[str, str]]:
    """``path,identity,role`` rows of the LFW 1:N protocol."""
    with open(DATA / "lfw_1n_protocol.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _init() -> None:
    global _ENGINE
    from retroface.vision.engines import create_engine

    _ENGINE = create_engine(threads=1)


def _faces(path: str, degrade: tuple[tuple[float, ...], int] | None = None) -> dict[str, Any]:
    from retroface.eval.degrade import DegradeSpec, degrade_image
    from retroface.media.images import load_image

    img = load_image(Path(path))
    if degrade is not None:
        img = degrade_image(img, degrade[0], DegradeSpec(face_width=degrade[1])).image  # type: ignore[arg-type]
    faces = _ENGINE.analyse(img)
    return {
        "shape": img.shape[:2],
        "faces": [
            {
                "box": tuple(float(v) for v in f.box),
                "q": f.quality.to_dict(),
                "emb": np.asarray(f.embedding, np.float32),
            }
            for f in faces
        ],
    }


def _work(task: tuple[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    path, degrade = task
    return path, degrade, _faces(path, degrade)


def analyse(tasks: list[tuple[str, Any]], workers: int) -> dict[tuple[str, Any], dict[str, Any]]:
    out: dict[tuple[str, Any], dict[str, Any]] = {}
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init) as pool:
        for i, (path, degrade, res) in enumerate(pool.map(_work, tasks, chunksize=16)):
            key = degrade[1] if degrade else None
            out[(path, key)] = res
            if i % 500 == 0:
                print(f"  {i}/{len(tasks)} {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def primary(rec: dict[str, Any]) -> dict[str, Any] | None:
    from retroface.vision.engines import box_prominence

    if not rec["faces"]:
        return None
    return max(rec["faces"], key=lambda f: box_prominence(f["box"], rec["shape"]))


def reference_quality(lfw: dict[str, dict[str, Any]], threshold: float) -> dict[str, Any]:
    paths = sorted(p for p in lfw if primary(lfw[p]) is not None)
    prim = {p: primary(lfw[p]) for p in paths}
    ident = np.array([Path(p).parent.name for p in paths])
    emb = np.stack([prim[p]["emb"] for p in paths])  # type: ignore[index]
    sims = emb @ emb.T
    idx = {p: i for i, p in enumerate(paths)}
    proto = _protocol()
    gal = np.array([idx[str(DATA / r["path"])] for r in proto if r["role"] == "gallery"])
    gal_id = ident[gal]
    by_id: dict[str, list[int]] = collections.defaultdict(list)
    for i, n in enumerate(ident):
        by_id[n].append(i)
    rows = []
    for name, members in by_id.items():
        others = gal[gal_id != name]
        other_images = ident != name
        for r in members:
            q = prim[paths[r]]["q"]  # type: ignore[index]
            probes = [i for i in members if i != r]
            hits = sum(
                bool(sims[p, r] >= threshold and sims[p, r] > sims[p, others].max()) for p in probes
            )
            rows.append(
                {
                    "q": q,
                    "kinds": {x.split(":")[0] for x in q["reasons"]},
                    "searches": len(probes),
                    "hits": hits,
                    "impostor_hits": int((sims[r, other_images] >= threshold).sum()),
                    "impostors": int(other_images.sum()),
                }
            )

    def group(sel: list[dict[str, Any]]) -> dict[str, Any]:
        n = sum(r["searches"] for r in sel)
        h = sum(r["hits"] for r in sel)
        ih, ii = sum(r["impostor_hits"] for r in sel), sum(r["impostors"] for r in sel)
        return {
            "references": len(sel),
            "with_mates": sum(1 for r in sel if r["searches"]),
            "mate_searches": n,
            "found": round(h / n, 4) if n else None,
            "impostor_pairs_at_threshold": ih,
            "impostor_pairs": ii,
            "impostor_rate": float(f"{ih / ii:.3g}") if ii else None,
        }

    groups: dict[str, list[dict[str, Any]]] = {
        "all": rows,
        "meeting every minimum": [r for r in rows if r["q"]["acceptable"]],
        "breaking a minimum": [r for r in rows if not r["q"]["acceptable"]],
    }
    for kind, _ in collections.Counter(k for r in rows for k in r["kinds"]).most_common():
        groups[f"breaking: {kind}"] = [r for r in rows if kind in r["kinds"]]
    for lo, hi in ((0, 20), (20, 30), (30, 50), (50, 1e9)):
        groups[f"sharpness {lo}-{hi:g}"] = [r for r in rows if lo <= r["q"]["sharpness"] < hi]
    for lo, hi in ((0, 30), (30, 45), (45, 60), (60, 89), (89, 91)):
        groups[f"|yaw| {lo}-{hi}"] = [r for r in rows if lo <= abs(r["q"]["yaw_deg"]) < hi]
    for v in ("good", "fair", "poor"):
        groups[f"verdict {v}"] = [r for r in rows if r["q"].get("verdict") == v]
    return {k: group(v) for k, v in groups.items()}


def degraded(
    lfw: dict[str, dict[str, Any]], deg: dict[tuple[str, Any], dict[str, Any]], threshold: float
) -> dict[str, Any]:
    proto = _protocol()
    role = collections.defaultdict(list)
    for r in proto:
        role[r["role"]].append(str(DATA / r["path"]))
    gal = role["gallery"]
    gal_id = np.array([Path(p).parent.name for p in gal])
    probe_emb = {p: f["emb"] for p in role["mated"] + role["nonmated"] if (f := primary(lfw[p]))}
    out = {}
    for width in sorted({k[1] for k in deg}):
        refs = [primary(deg[(p, width)]) for p in gal]
        g = np.stack([f["emb"] if f else np.zeros(512, np.float32) for f in refs])
        by: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for p in role["mated"]:
            if p not in probe_emb:
                continue
            s = g @ probe_emb[p]
            j = int(np.argmax(s))
            me = int(np.where(gal_id == Path(p).parent.name)[0][0])
            found = bool(gal_id[j] == gal_id[me] and s[j] >= threshold)
            ref = refs[me]
            for key in (
                "all",
                "verdict " + (ref["q"].get("verdict") or "none" if ref else "no face"),
                "minimums " + ("met" if ref and ref["q"]["acceptable"] else "broken"),
            ):
                by[key][0] += found
                by[key][1] += 1
        nm = np.stack([probe_emb[p] for p in role["nonmated"] if p in probe_emb])
        false = int(((nm @ g.T).max(1) >= threshold).sum())
        out[f"{width} px"] = {
            "found": {k: f"{a}/{b} = {a / b:.3f}" for k, (a, b) in sorted(by.items())},
            "nonmated_with_false_match": f"{false}/{len(nm)}",
        }
    return out


def main_face(lfw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from retroface.vision.engines import box_prominence

    def area(box: tuple[float, ...], _shape: Any) -> float:
        return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])

    by_id: dict[str, list[str]] = collections.defaultdict(list)
    for p in lfw:
        by_id[Path(p).parent.name].append(p)
    cases = []
    for paths in by_id.values():
        for p in paths:
            faces = lfw[p]["faces"]
            others = [f["emb"] for q in paths if q != p and (f := primary(lfw[q]))]
            if len(faces) < 2 or not others:
                continue
            o = np.stack(others)
            s = [float((o @ f["emb"]).max()) for f in faces]
            person = int(np.argmax(s))
            if s[person] >= 0.35 and sorted(s)[-2] < 0.35:
                cases.append((lfw[p]["shape"], faces, person))
    out: dict[str, Any] = {"images": len(cases)}
    for label, prom in (("prominence", box_prominence), ("area alone", area)):
        rows = {}
        for ratio in (1.0, 1.25, 1.5, 1.75, 2.0, 3.0):
            taken = wrong = 0
            for shape, faces, person in cases:
                p = [prom(f["box"], shape) for f in faces]
                order = np.argsort(p)[::-1]
                if p[order[0]] >= ratio * p[order[1]]:
                    taken += 1
                    wrong += int(order[0] != person)
            rows[str(ratio)] = {"taken": taken, "wrong": wrong, "refused": len(cases) - taken}
        out[label] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/retroface-reference-quality"))
    ap.add_argument("--degrade", default="", help="face widths for degraded references, e.g. 40,24")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results/ref_quality.json")
    args = ap.parse_args()
    from retroface.governance.thresholds import shipped_threshold
    from retroface.vision.engines import create_engine

    op = shipped_threshold(create_engine(threads=1).identity.key)
    assert op is not None
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "lfw.pkl"
    if cache.exists():
        lfw = pickle.loads(cache.read_bytes())
    else:
        paths = sorted(str(p) for p in (DATA / "lfw").glob("*/*.jpg"))
        print(f"analysing {len(paths)} LFW images as references …", flush=True)
        lfw = {p: r for (p, _), r in analyse([(p, None) for p in paths], args.workers).items()}
        cache.write_bytes(pickle.dumps(lfw))
    results: dict[str, Any] = {"threshold": op.value, "load_before": os.getloadavg()}
    results["reference_quality"] = reference_quality(lfw, op.value)
    results["main_face"] = main_face(lfw)
    widths = [int(w) for w in args.degrade.split(",") if w]
    if widths:
        dcache = args.work / f"degraded-{'-'.join(map(str, widths))}.pkl"
        if dcache.exists():
            deg = pickle.loads(dcache.read_bytes())
        else:
            proto = _protocol()
            gal = [str(DATA / r["path"]) for r in proto if r["role"] == "gallery"]
            tasks = [(p, (primary(lfw[p])["box"], w)) for w in widths for p in gal]  # type: ignore[index]
            print(f"analysing {len(tasks)} degraded references …", flush=True)
            deg = analyse(tasks, args.workers)
            dcache.write_bytes(pickle.dumps(deg))
        results["degraded_references"] = degraded(lfw, deg, op.value)
    print(json.dumps(results, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
