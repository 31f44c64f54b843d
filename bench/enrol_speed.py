"""Enrolment rate against the model-bound rate, measured back to back, optionally A/B.

The model-bound rate is what ``bench/gallery_lfw.py`` reports beside its enrolment rate: every core
running the engine's ``analyse`` (detect + embed, images already decoded) back to back, i.e. cores
divided by the single-thread seconds per image. Enrolment through the product's ``Enroller``
(fresh SQLite home, ``--multi-face main``, no quality gate, every image read, hashed, decoded,
analysed, encrypted, stored and audited) is measured on the same images right after, in a fresh
process each, so each efficiency figure is a pair taken within a minute of each other.

On a shared machine both figures follow the load; ``--rounds`` alternates them (and, with
``--src``, the enrolment of another checkout's sources: before/after in the same minutes) and
the median is reported with the load averages.

    python bench/enrol_speed.py -n 400 --rounds 3
    python bench/enrol_speed.py -n 400 --rounds 3 --src /tmp/before/src   # A/B against before
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(os.environ.get("RETROFACE_TEST_DATA", Path(__file__).parents[1] / "../shared/data"))
HERE = Path(__file__).resolve()


def images(data: Path, n: int) -> list[Path]:
    """``n`` LFW images spread over the whole set (every k-th of the sorted paths)."""
    files = sorted(data.rglob("*.jpg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def worker_bound(files: list[Path]) -> dict[str, Any]:
    from retroface.media.images import load_image
    from retroface.vision.engines import create_engine

    eng = create_engine(threads=1)
    imgs = [load_image(p) for p in files]
    eng.analyse(imgs[0])
    t, c = time.perf_counter(), time.process_time()
    for im in imgs:
        eng.analyse(im)
    per = (time.perf_counter() - t) / len(imgs)
    cpu = (time.process_time() - c) / len(imgs)
    cores = os.cpu_count() or 1
    out = {
        "bound_images_per_s": cores / per,
        "analyse_ms": 1000 * per,
        "analyse_cpu_ms": 1000 * cpu,
    }
    try:  # the stricter bound: only the face enrolment takes is embedded
        from retroface.core.errors import InvalidInputError
        from retroface.gallery.enrol import choose_index
        from retroface.vision.engines import analyse_chosen
    except ImportError:  # sources from before analyse_chosen
        return out
    t = time.perf_counter()
    for im in imgs:
        with contextlib.suppress(InvalidInputError):  # no face: its time counts all the same
            analyse_chosen(eng, im, lambda b, im=im: choose_index(b, im.shape, None, "main"))
    out["chosen_bound_images_per_s"] = cores * len(imgs) / (time.perf_counter() - t)
    return out


def worker_enrol(files: list[Path]) -> dict[str, Any]:
    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.core.access import Principal
    from retroface.core.roles import Role
    from retroface.gallery.enrol import items_from_paths

    admin = Principal(id=1, username="admin", roles=frozenset({Role.ADMIN}))
    with tempfile.TemporaryDirectory() as home:
        ctx = AppContext(Settings(home=Path(home), database_url=None))
        try:
            enroller = ctx.enroller(require_quality=False, multi_face="main")
            enroller.engine.analyse(__import__("numpy").zeros((64, 64, 3), "uint8"))  # load
            c = time.process_time()
            summary = enroller.run(admin, list(items_from_paths(files)))
            cpu = time.process_time() - c
        finally:
            ctx.close()
    done = summary.enrolled + len(summary.rejected)
    return {
        "enrol_images_per_s": done / summary.seconds,
        "enrol_cpu_ms_per_image": 1000 * cpu / done,
        "enrolled": summary.enrolled,
        "rejected": len(summary.rejected),
    }


def run(kind: str, n: int, data: Path, src: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, str(HERE), "--worker", kind, "-n", str(n), "--data", str(data)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "lfw")
    ap.add_argument("-n", type=int, default=400, help="images (spread over LFW)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--src", default=None, help="another checkout's src/ to enrol with as well")
    ap.add_argument("--json", type=Path, default=HERE.parent / "results/enrol_speed.json")
    ap.add_argument("--worker", choices=("bound", "enrol"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    files = images(args.data, args.n)
    if args.worker:
        res = worker_bound(files) if args.worker == "bound" else worker_enrol(files)
        print(json.dumps(res))
        return
    here = str(HERE.parents[1] / "src")
    variants = {"this": here} | ({"other": args.src} if args.src else {})
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        row: dict[str, Any] = {"load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
        row.update(run("bound", args.n, args.data, here))
        for name, src in variants.items():
            e = run("enrol", args.n, args.data, src)
            row[name] = {**e, "efficiency": e["enrol_images_per_s"] / row["bound_images_per_s"]}
            if "chosen_bound_images_per_s" in row:
                row[name]["efficiency_chosen"] = (
                    e["enrol_images_per_s"] / row["chosen_bound_images_per_s"]
                )
        rounds.append(row)
        print(json.dumps(row), flush=True)
    summary: dict[str, Any] = {
        "images": args.n,
        "cores": os.cpu_count(),
        "rounds": rounds,
        "median_bound_images_per_s": statistics.median(r["bound_images_per_s"] for r in rounds),
    }
    for name in variants:
        summary[f"median_{name}_efficiency"] = statistics.median(
            r[name]["efficiency"] for r in rounds
        )
        summary[f"median_{name}_images_per_s"] = statistics.median(
            r[name]["enrol_images_per_s"] for r in rounds
        )
    if args.src:
        summary["other_src"] = args.src
    for k, v in summary.items():
        if k.startswith("median"):
            print(f"{k}: {v:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
