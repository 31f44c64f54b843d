"""Fused subject templates through the product's own path (issue #17, docs/fairness.md).

``bench/fairness.py --references R`` measured, with numpy on cached embeddings, that ranking a
subject with several reference images by the cosine to its fused template (the renormalised mean
of its unit embeddings) misses fewer mates than ranking it by its best image. This script checks
the shipped code reproduces that: the same variant protocol's gallery (every LFW-half gallery
identity's first image; identities with R + 1 or more images also their next R - 1) is enrolled
through the real ``Enroller`` into a fresh home (SQLite, encrypted templates, the real index), and
every search goes through ``Matcher.match`` with ``aggregate`` ``max``, ``mean`` and ``fused`` at
the default candidate-list length (20). Probes are the protocol's, embedded as searches embed
them (flip + second look), read from the evaluation cache (``RETROFACE_EVAL_CACHE``, filled by
``retroface eval identify`` or by this script on first use). Beside each product figure it prints
the same figure computed with numpy from the templates the product stored (every subject scored,
no shortlist): equal figures mean the shortlist-then-fuse path loses nothing.

Each gallery's threshold is set at FPIR 1% on its clean non-mated searches (protocol non-mated +
each mated search's leave-one-identity-out top score) and kept for the 40 px probes.

Run: ``python bench/fused_product.py [--references 2] [--degraded] [--home DIR] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from retroface.config import Settings
from retroface.context import AppContext
from retroface.eval.dataset import resolve_protocol
from retroface.eval.degrade import DegradeSpec
from retroface.eval.embeddings_cache import CACHE_DIRNAME, EngineSpec
from retroface.eval.metrics import fpir_threshold
from retroface.eval.runner import Evaluator, _boxes, read_attributes
from retroface.gallery.enrol import EnrolItem
from retroface.search.matcher import Aggregate
from retroface.storage.tables import FaceTemplate, Subject

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
LIST_LENGTH = 20  # the default candidate-list length (search top_k)
AGGREGATES: tuple[Aggregate, ...] = ("max", "mean", "fused")


def figures(
    mate: NDArray[np.float64],
    top1: NDArray[np.bool_],
    nonmated: NDArray[np.float64],
    m_ident: list[str],
    nm_ident: list[str],
    sex: dict[str, str],
    t: float,
) -> dict[str, Any]:
    """FNIR at rank 1 and FPIR at ``t``, overall and per labelled group."""
    hit = top1 & (np.nan_to_num(mate, nan=-np.inf) >= t)
    fp = np.nan_to_num(nonmated, nan=-np.inf) >= t
    out: dict[str, Any] = {"threshold": t, "fnir": 1 - float(hit.mean()), "fpir": float(fp.mean())}
    for grp in ("female", "male"):
        gm = np.array([sex.get(x) == grp for x in m_ident])
        gn = np.array([sex.get(x) == grp for x in nm_ident])
        out[grp] = {
            "n_mated": int(gm.sum()),
            "misses": int((~hit[gm]).sum()),
            "fnir": 1 - float(hit[gm].mean()),
            "fpir": float(fp[gn].mean()),
        }
    return out


def reference_scores(
    probes: NDArray[np.float32],
    vecs: NDArray[np.float32],
    cols: NDArray[np.int64],
    n_cols: int,
    how: str,
) -> NDArray[np.float64]:
    """Every subject's score for every probe, as bench/fairness.py computes it (no shortlist)."""
    if how == "fused":
        fused = np.zeros((n_cols, vecs.shape[1]))
        np.add.at(fused, cols, vecs.astype(np.float64))
        norms = np.linalg.norm(fused, axis=1)
        fused /= np.where(norms > 0, norms, 1)[:, None]
        out = probes.astype(np.float64) @ fused.T
        out[:, norms == 0] = -np.inf
        return out
    sims = (probes @ vecs.T).astype(np.float64)
    if how == "max":
        out = np.full((probes.shape[0], n_cols), -np.inf)
        for j in range(cols.size):
            np.maximum(out[:, cols[j]], sims[:, j], out=out[:, cols[j]])
        return out
    total = np.zeros((probes.shape[0], n_cols))
    np.add.at(total.T, cols, sims.T)
    counts = np.bincount(cols, minlength=n_cols)
    out = total / np.maximum(counts, 1)[None, :]
    out[:, counts == 0] = -np.inf
    return out


def timing(ctx: AppContext, key: str, probes: NDArray[np.float32], out: Path) -> None:
    """Per-search time of each aggregate: 5 rounds, aggregates interleaved, the median round."""
    ctx.matcher.match(probes[0], key, LIST_LENGTH, None, "fused")  # build the reverse map
    rounds: dict[str, list[float]] = {a: [] for a in AGGREGATES}
    for _ in range(5):
        for agg in AGGREGATES:
            t0 = time.perf_counter()
            for p in probes:
                ctx.matcher.match(p, key, LIST_LENGTH, None, agg)
            rounds[agg].append(1000 * (time.perf_counter() - t0) / len(probes))
    res = {a: round(float(np.median(v)), 3) for a, v in rounds.items()}
    load = os.getloadavg()
    print(f"ms per search (median of 5 rounds of {len(probes)}): {res}; load {load}")
    out.write_text(json.dumps({"ms_per_search": res, "searches": len(probes), "load": load}))


def reverse_map_timing() -> None:
    """What a fused search after a gallery change pays: building the subject -> templates map
    (synthetic maps, two templates per subject on average), and a lookup once built."""
    from retroface.search.index import FlatIndex
    from retroface.search.index_manager import LoadedIndex

    for n in (100_000, 1_000_000):
        rng = np.random.default_rng(0)
        sub = {i: int(s) for i, s in enumerate(rng.integers(0, n // 2, n))}
        state = LoadedIndex(FlatIndex(4), 1, "k", False, sub, dict(sub))
        builds = []
        for v in range(5):
            state.version = 2 + v  # a new state: the map is built again
            t0 = time.perf_counter()
            state.templates_of(range(80))
            builds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(100):
            state.templates_of(range(80))
        lookup = (time.perf_counter() - t0) / 100
        print(
            f"{n:>9,} templates: build {1000 * np.median(builds):.1f} ms, lookup of 80 subjects "
            f"{1000 * lookup:.3f} ms; load {os.getloadavg()[0]:.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--references", type=int, default=2)
    ap.add_argument("--degraded", action="store_true", help="also 40 px probes")
    ap.add_argument("--home", type=Path, default=None, help="keep the enrolled home here")
    ap.add_argument("--json", type=Path, default=Path("fused_product.json"))
    ap.add_argument(
        "--timing",
        type=int,
        default=0,
        help="only time N clean mated searches per aggregate (run under the bench lock)",
    )
    ap.add_argument(
        "--reverse-map",
        action="store_true",
        help="only time LoadedIndex.templates_of's map at 100k and 1M templates (bench lock)",
    )
    args = ap.parse_args()
    if args.reverse_map:
        reverse_map_timing()
        return
    refs = args.references
    cache = Path(
        os.environ.get("RETROFACE_EVAL_CACHE")
        or Path(os.environ.get("RETROFACE_HOME", Path.home() / ".retroface")) / CACHE_DIRNAME
    )
    ev = Evaluator(EngineSpec(), cache)
    proto = resolve_protocol(args.data / "lfw")
    sex = read_attributes(args.data / "lfw_attributes.csv")["sex"]
    gal, mat, non = proto.role("gallery"), proto.role("mated"), proto.role("nonmated")

    # the variant protocol of bench/fairness.py's fused_templates
    by_id: dict[str, list[int]] = {}
    for i, e in enumerate(mat):
        by_id.setdefault(e.identity, []).append(i)
    multi = {ident for ident, rows in by_id.items() if len(rows) >= refs}
    ref_rows = {ident: by_id[ident][: refs - 1] for ident in multi}
    probe_rows = np.array([i for ident in sorted(multi) for i in by_id[ident][refs - 1 :]])
    m_ident = [mat[i].identity for i in probe_rows]

    home = args.home or Path(f"/tmp/fused-product-{refs}")
    home.mkdir(parents=True, exist_ok=True)
    ctx = AppContext(Settings(home=home))
    admin = ctx.users.ensure_admin("admin", secrets.token_urlsafe(16))
    key = ctx.engine.identity.key
    with ctx.db.session() as s:
        enrolled = s.scalar(select(FaceTemplate.id).limit(1)) is not None
    if not enrolled:
        assert admin is not None
        enroller = ctx.enroller(require_quality=False, multi_face="main")
        t0 = time.perf_counter()
        first = enroller.run(admin, [EnrolItem(path=e.path, subject=e.identity) for e in gal])
        more = [
            EnrolItem(path=mat[i].path, subject=ident)
            for ident in sorted(multi)
            for i in ref_rows[ident]
        ]
        second = enroller.run(admin, more)
        print(
            f"enrolled {first.enrolled} first images ({len(first.rejected)} rejected) and "
            f"{second.enrolled} more ({len(second.rejected)} rejected) in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    # which template is each subject's first image: the lowest template id (enrolled first)
    with ctx.db.session() as s:
        rows = s.execute(
            select(FaceTemplate.id, FaceTemplate.subject_id, Subject.reference)
            .join(Subject, Subject.id == FaceTemplate.subject_id)
            .where(FaceTemplate.model_key == key)
            .order_by(FaceTemplate.id)
        ).all()
    loaded = ctx.index.get(key)
    tids = np.array([r[0] for r in rows], dtype=np.int64)
    vecs = loaded.vectors(tids)
    assert vecs is not None, "this index kind cannot give its vectors back"
    ref_of_sid = {int(r[1]): str(r[2]) for r in rows}
    names = sorted(set(ref_of_sid.values()))
    col = {n: j for j, n in enumerate(names)}
    cols = np.array([col[str(r[2])] for r in rows], dtype=np.int64)
    seen: set[int] = set()
    is_first = np.zeros(len(rows), dtype=bool)
    for j, r in enumerate(rows):
        if int(r[1]) not in seen:
            seen.add(int(r[1]))
            is_first[j] = True
    print(f"{len(rows)} templates, {len(names)} subjects; {probe_rows.size} mated searches")

    # only the images this protocol searches with (the cache is per image: a later
    # ``eval identify`` or bench/fairness.py reuses them)
    mp = [mat[i].path for i in probe_rows]
    m = ev.embed(mp, "mated probes", probe=True)
    n = ev.embed([e.path for e in non], "non-mated probes", probe=True)
    probe_sets = {"clean": (m, n)}
    if args.timing:
        timing(ctx, key, m.embeddings[m.found][: args.timing], args.json)
        return
    if args.degraded:
        spec = DegradeSpec(40)
        dm = ev.embed(mp, "40 px mated", spec, boxes=_boxes(m), probe=True)
        dn = ev.embed([e.path for e in non], "40 px non", spec, boxes=_boxes(n), probe=True)
        probe_sets["degraded_40"] = (dm, dn)
    nm_ident = [e.identity for e in non] + m_ident
    m_col = np.array([col.get(i, -1) for i in m_ident])
    n_col = np.array([col.get(e.identity, -1) for e in non])

    out: dict[str, Any] = {
        "protocol": (
            f"identities with {refs + 1}+ images: {len(multi)}, enrolling {refs} each through "
            f"the Enroller; {probe_rows.size} mated searches; {len(names)} subjects, "
            f"{len(rows)} templates"
        ),
        "index_kind": loaded.index.kind if hasattr(loaded.index, "kind") else "?",
        "list_length": LIST_LENGTH,
    }
    thresholds: dict[str, float] = {}
    for pname, (pm, pn) in probe_sets.items():
        pm_e, pm_f = pm.embeddings, pm.found
        # -- the product: Matcher.match, per aggregate
        for agg in AGGREGATES:
            mate = np.full(probe_rows.size, np.nan)
            top1 = np.zeros(probe_rows.size, dtype=bool)
            loo = np.full(probe_rows.size, np.nan)
            t0 = time.perf_counter()
            for i in range(probe_rows.size):
                if not pm_f[i]:
                    continue
                got, _ = ctx.matcher.match(pm_e[i], key, LIST_LENGTH, None, agg)
                own = [c for c in got if ref_of_sid[c.subject_id] == m_ident[i]]
                other = [c.similarity for c in got if ref_of_sid[c.subject_id] != m_ident[i]]
                if own:
                    mate[i] = own[0].similarity
                    top1[i] = own[0].rank == 1
                loo[i] = other[0] if other else np.nan
            ntop = np.full(len(non), np.nan)
            for i in range(len(non)):
                if not pn.found[i]:
                    continue
                got, _ = ctx.matcher.match(pn.embeddings[i], key, LIST_LENGTH, None, agg)
                other = [c.similarity for c in got if ref_of_sid[c.subject_id] != non[i].identity]
                ntop[i] = other[0] if other else np.nan
            ms_per = 1000 * (time.perf_counter() - t0) / (probe_rows.size + len(non))
            nm = np.concatenate([ntop, loo])
            name = f"product_{agg}"
            if pname == "clean":
                thresholds[name] = fpir_threshold(nm, 0.01)
            out.setdefault(name, {})[pname] = {
                **figures(mate, top1, nm, m_ident, nm_ident, sex, thresholds[name]),
                "ms_per_search": round(ms_per, 3),
            }
        # -- numpy on the stored templates, every subject scored (bench/fairness.py's math)
        for how, keep in (
            ("single", is_first),
            ("max", None),
            ("mean", None),
            ("fused", None),
        ):
            sel = np.ones(len(rows), bool) if keep is None else keep
            score_how = "max" if how == "single" else how
            ms = reference_scores(pm_e, vecs[sel], cols[sel], len(names), score_how)
            ns = reference_scores(pn.embeddings, vecs[sel], cols[sel], len(names), score_how)
            r = np.arange(probe_rows.size)
            mate = np.where(m_col >= 0, ms[r, np.maximum(m_col, 0)], np.nan)
            mate[~pm_f | ~np.isfinite(mate)] = np.nan
            top1 = np.sum(ms > np.nan_to_num(mate, nan=np.inf)[:, None], axis=1) == 0
            ms[r[m_col >= 0], m_col[m_col >= 0]] = -np.inf
            loo = np.where(pm_f, ms.max(axis=1), np.nan)
            nr = np.arange(len(non))
            ns[nr[n_col >= 0], n_col[n_col >= 0]] = -np.inf
            ntop = np.where(pn.found, ns.max(axis=1), np.nan)
            nm = np.concatenate([ntop, loo])
            name = f"numpy_{how}"
            if pname == "clean":
                thresholds[name] = fpir_threshold(nm, 0.01)
            out.setdefault(name, {})[pname] = figures(
                mate, top1 & np.isfinite(mate), nm, m_ident, nm_ident, sex, thresholds[name]
            )
    ctx.close()
    print(f"\n{out['protocol']}")
    for name, per in out.items():
        if not isinstance(per, dict):
            continue
        for pname, x in per.items():
            f, mm = x["female"], x["male"]
            print(
                f"{name:14} {pname:11} t {x['threshold']:.4f} FNIR {x['fnir']:.2%} FPIR "
                f"{x['fpir']:.2%}; female FNIR {f['fnir']:.2%} ({f['misses']}/{f['n_mated']}) "
                f"FPIR {f['fpir']:.2%}; male FNIR {mm['fnir']:.2%} ({mm['misses']}/"
                f"{mm['n_mated']}) FPIR {mm['fpir']:.2%}"
                + (f"; {x['ms_per_search']} ms/search" if "ms_per_search" in x else "")
            )
    args.json.write_text(json.dumps(out, indent=1, default=float), "utf-8")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
