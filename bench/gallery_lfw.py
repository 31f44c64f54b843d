"""Gallery enrolment throughput and 1:N rank-1 on LFW through the product's own code path.

Enrols the first image of every LFW identity (2,877 subjects; single-image identities act as
distractors) with `Enroller`, then searches with every other image of the 847 identities that have
more, through `Matcher`. Prints rank-1/rank-10 and images/s beside the model-bound limit.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from retroface.config import Settings
from retroface.context import AppContext
from retroface.gallery.enrol import EnrolItem
from retroface.media.images import load_image
from retroface.vision.engines import create_engine, primary_face

DATA = Path(os.environ.get("RETROFACE_TEST_DATA", Path(__file__).parents[1] / "../shared/data"))


def model_bound(paths: list[Path], n: int = 60) -> float:
    """Images/s if every core ran detect+embed back to back: cores / single-thread seconds."""
    eng = create_engine(threads=1)
    imgs = [load_image(p) for p in paths[:n]]
    eng.analyse(imgs[0])
    t = time.perf_counter()
    for im in imgs:
        eng.analyse(im)
    per = (time.perf_counter() - t) / len(imgs)
    return (os.cpu_count() or 1) / per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DATA / "lfw")
    ap.add_argument("--limit", type=int, default=0, help="first N identities only")
    ap.add_argument(
        "--gallery-images",
        type=int,
        default=1,
        help="reference images per subject (2+ compares best-image and mean-score fusion)",
    )
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results/gallery_lfw.json")
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    console = Console()

    people = sorted(p for p in args.data.iterdir() if p.is_dir())
    if args.limit:
        people = people[: args.limit]
    gallery, probes = [], []
    n_ref = args.gallery_images
    for person in people:
        imgs = sorted(person.glob("*.jpg"))
        gallery += [EnrolItem(path=p, subject=person.name) for p in imgs[:n_ref]]
        probes += [(p, person.name) for p in imgs[n_ref:]]

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), database_url=args.database_url)
        ctx = AppContext(settings)
        admin = ctx.users.ensure_admin("admin", secrets.token_urlsafe(16))
        assert admin is not None  # a fresh home
        bound = model_bound([g.path for g in gallery])
        with console.status(f"Enrolling {len(gallery)} images…"):
            enroller = ctx.enroller(require_quality=False, multi_face="main")
            summary = enroller.run(admin, gallery)
        rate = (summary.enrolled + len(summary.rejected)) / summary.seconds
        for r in summary.rejected[:20]:
            console.print(f"rejected {r.path}: {r.reason}")

        with ctx.db.session() as s:
            from sqlalchemy import select

            from retroface.storage.tables import Subject

            ref_of = dict(s.execute(select(Subject.id, Subject.reference)).all())
        eng = ctx.engine
        key = eng.identity.key
        aggregates = ("max", "mean")
        hits1 = dict.fromkeys(aggregates, 0)
        hits10 = dict.fromkeys(aggregates, 0)
        no_face = 0
        t0 = time.perf_counter()
        with console.status(f"Searching {len(probes)} probes…"):
            for path, name in probes:
                img = load_image(path)
                face = primary_face(eng.analyse(img), img.shape)
                if face is None:
                    no_face += 1
                    continue
                for agg in aggregates:
                    matches, _ = ctx.matcher.match(face.embedding, key, 10, aggregate=agg)
                    refs = [ref_of[m.subject_id] for m in matches]
                    hits1[agg] += bool(refs) and refs[0] == name
                    hits10[agg] += name in refs
        search_s = time.perf_counter() - t0
        ctx.close()
    n = len(probes)
    result = {
        "gallery_images": len(gallery),
        "enrolled": summary.enrolled,
        "enrol_rejected": len(summary.rejected),
        "enrol_images_per_s": round(rate, 2),
        "model_bound_images_per_s": round(bound, 2),
        "enrol_efficiency": round(rate / bound, 3),
        "mated_searches": n,
        "reference_images_per_subject": n_ref,
        "rank1": round(hits1["max"] / n, 5) if n else None,
        "rank10": round(hits10["max"] / n, 5) if n else None,
        "rank1_mean_fusion": round(hits1["mean"] / n, 5) if n else None,
        "rank10_mean_fusion": round(hits10["mean"] / n, 5) if n else None,
        "probe_no_face": no_face,
        "search_ms_per_probe_incl_detect": round(1000 * search_s / max(1, n) / 2, 2),
    }
    table = Table(title="LFW gallery: enrol first image, search the rest")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, str(v))
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
