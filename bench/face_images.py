"""How long a face image takes to serve: decrypt, decode, blur, crop or align, encode, audit.

Seeds a fresh data directory (SQLite) with the four people of ``people/`` and a group photo from
``people/_multi_face_scenes`` as the probe of an approved case, then times each
:class:`retroface.search.faces.FaceImages` view ``--repeat`` times as the case's owner and as a
reviewer, and prints the median and p90 per view. The audit record each view writes is inside
the time: it is part of serving a face.

Run: ``python bench/face_images.py [--repeat 20]``. Results go to
``bench/results/face_images.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from retroface.config import Settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.gallery.enrol import items_from_paths
from retroface.search.service import ProbeProvenance

DATA = Path(
    os.environ.get(
        "RETROFACE_TEST_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
)
PASSWORD = "a long bench password"
SCENE = "people/_multi_face_scenes/obama_and_biden.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "face_images.json"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="retroface-bench-faces-"))
    ctx = AppContext(Settings(home=home))
    ctx.users.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    ctx.users.ensure_admin("admin", PASSWORD)
    admin = ctx.users.authenticate_password("admin", PASSWORD)
    who: dict[str, Principal] = {}
    for name, role in (("olive", "operator"), ("arthur", "authoriser"), ("rita", "reviewer")):
        ctx.users.add(admin, name, role, PASSWORD)
        who[name] = ctx.users.authenticate_password(name, PASSWORD)
    people = ("barack_obama", "joe_biden", "kit_harington", "rose_leslie")
    ctx.enroller().run(admin, items_from_paths([DATA / "people" / p for p in people]))
    ctx.cases.open(who["olive"], "B/1", "robbery", "identify the suspect", "bench: the only lead")
    ctx.cases.authorise(who["arthur"], "B/1", True, "bench")
    data = (DATA / SCENE).read_bytes()
    probe = ctx.searches.add_probe(
        who["olive"], "B/1", data, "scene.jpg", ProbeProvenance("CCTV", "bench exhibit")
    )
    sid = ctx.searches.search(who["olive"], "B/1", probe.probe_id, 0, top_k=5).search_id
    olive, rita, pid, faces = who["olive"], who["rita"], probe.probe_id, ctx.faces
    views: dict[str, Callable[[], Any]] = {
        "probe face crop (owner)": lambda: faces.probe_face(olive, pid, 0),
        "probe image, privacy, 1600 px (owner)": lambda: faces.probe_image(olive, pid, 0),
        "probe face aligned 256 (reviewer)": lambda: faces.probe_aligned(rita, sid),
        "candidate face crop (reviewer)": lambda: faces.candidate_face(rita, sid, 1),
        "candidate aligned 256 (reviewer)": lambda: faces.candidate_aligned(rita, sid, 1),
        "landmarks JSON (reviewer)": lambda: faces.comparison_landmarks(rita, sid, 1),
    }
    rows = []
    for name, view in views.items():
        view()  # warm
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            view()
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        rows.append(
            {
                "view": name,
                "median_ms": round(statistics.median(times), 1),
                "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1),
            }
        )
    print(f"{'view':45} {'median ms':>10} {'p90 ms':>8}")
    for r in rows:
        print(f"{r['view']:45} {r['median_ms']:>10} {r['p90_ms']:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "scene": SCENE,
                "repeat": args.repeat,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "results": rows,
            },
            indent=2,
        )
    )
    ctx.close()


if __name__ == "__main__":
    main()
