"""Per-group error rates at the operating threshold, the worst-group threshold, the female misses,
and two label-free score normalisations (issue #17); the numbers of docs/fairness.md.

Reuses the embedding cache of ``retroface eval identify DATA/lfw --degrade 40`` (set
``RETROFACE_EVAL_CACHE`` to it: the cache key includes the dataset path), so it only searches.
The attribute labels are read here, for evaluation: nothing at search time reads them.

Run: ``python bench/fairness.py [--data DIR] [--out fairness.json]`` (prints tables, writes JSON).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retroface.eval.dataset import resolve_protocol
from retroface.eval.degrade import DegradeSpec
from retroface.eval.embeddings_cache import CACHE_DIRNAME, EngineSpec
from retroface.eval.metrics import by_group, fpir_threshold, samples_needed
from retroface.eval.runner import (
    Evaluator,
    Searches,
    _boxes,
    _identity_scores,
    _protocol_searches,
    read_attributes,
    run_searches,
    worst_group_rule,
)
from retroface.governance.thresholds import shipped_threshold
from retroface.vision.probe_quality import FEATURES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
LIST_LENGTH = 20  # the default candidate-list length (search top_k)
#: Identities touched by the known LFW label errors (docs/accuracy.md): Carlos_Ruckauf_0001.jpg
#: shows Eduardo Duhalde (so Duhalde's probes find "Carlos_Ruckauf" first), Raul_Ibanez_0001.jpg
#: is Carlos_Beltran_0001.jpg, Noer_Muis is Noer_Moeis.
LABEL_ERRORS = {
    "Carlos_Ruckauf",
    "Eduardo_Duhalde",
    "Raul_Ibanez",
    "Carlos_Beltran",
    "Noer_Muis",
    "Noer_Moeis",
}


def table(s: Searches, sex: dict[str, str], t: float, n_boot: int) -> dict[str, Any]:
    score = np.where(s.mated_ftd | s.mated_fte, np.nan, s.mate_score)
    mg = [sex.get(i, "unlabelled") for i in s.mated_identity]
    ng = [sex.get(i, "unlabelled") for i in s.augmented_identity]
    out: dict[str, Any] = {"threshold": t}
    for k in (1, LIST_LENGTH):
        r = by_group(s.mate_rank, score, mg, s.augmented_top, ng, t, max_rank=k, n_boot=n_boot)
        out[f"rank{k}"] = r.to_dict()
    hits = (s.mate_rank == 1) & (np.nan_to_num(score, nan=-9) >= t)
    out["overall_fnir"] = 1 - float(hits.mean())
    out["overall_fpir"] = float(np.mean(np.nan_to_num(s.augmented_top, nan=-9) >= t))
    return out


def show(name: str, d: dict[str, Any]) -> None:
    print(
        f"\n{name}: threshold {d['threshold']:.4f}, overall FNIR {d['overall_fnir']:.2%}, "
        f"FPIR {d['overall_fpir']:.2%}"
    )
    for k in (1, LIST_LENGTH):
        r = d[f"rank{k}"]
        for g, m in r["groups"].items():
            print(
                f"  rank<={k:<2} {g:8} mated {m['n_mated']:5} FNIR {m['fnir']:.2%} "
                f"[{m['fnir_ci'][0]:.2%}-{m['fnir_ci'][1]:.2%}]  non-mated {m['n_nonmated']:5} "
                f"FPIR {m['fpir']:.2%} [{m['fpir_ci'][0]:.2%}-{m['fpir_ci'][1]:.2%}]"
            )
        print(f"  rank<={k} FNIR ratio {r['fnir_ratio']}, FPIR ratio {r['fpir_ratio']}")


def misses(
    s: Searches, rels: list[str], sex: dict[str, str], t: float, group: str
) -> dict[str, Any]:
    """Every rank-1 miss at ``t`` of ``group``'s mated searches, with what the record shows."""
    rows = []
    feats = s.mated_features
    for i, ident in enumerate(s.mated_identity):
        if sex.get(ident) != group:
            continue
        ok = bool(s.mate_rank[i] == 1 and s.mate_score[i] >= t) and not s.mated_ftd[i]
        if ok:
            continue
        f = feats[i] if feats is not None else np.full(len(FEATURES), np.nan)
        x = dict(zip(FEATURES, (float(v) for v in f), strict=True))
        inter_eye = float(np.exp(x["log_inter_eye"])) if np.isfinite(x["log_inter_eye"]) else None
        if s.mated_ftd[i]:
            cause = "no face detected"
        elif ident in LABEL_ERRORS:
            cause = "known label error"
        elif s.mate_rank[i] > 1:
            cause = "another identity ranked first"
        else:
            cause = "mate first but below the threshold"
        rows.append(
            {
                "file": Path(rels[i]).name,
                "identity": ident,
                "rank": int(s.mate_rank[i]),
                "mate_score": None
                if np.isnan(s.mate_score[i])
                else round(float(s.mate_score[i]), 4),
                "verdict": s.mated_verdict[i],
                "inter_eye_px": None if inter_eye is None else round(inter_eye, 1),
                # the feature is |yaw| / 45 degrees (retroface.vision.probe_quality)
                "yaw_deg": None if not np.isfinite(x["abs_yaw"]) else round(45 * x["abs_yaw"]),
                "cause": cause,
            }
        )
    return {
        "n": len(rows),
        "by_cause": dict(Counter(r["cause"] for r in rows)),
        "poor_verdict": sum(r["verdict"] == "poor" for r in rows),
        "yaw_over_30_deg": sum((r["yaw_deg"] or 0) > 30 for r in rows),
        "inter_eye_under_30px": sum((r["inter_eye_px"] or 99) < 30 for r in rows),
        "identities": dict(Counter(r["identity"] for r in rows).most_common(10)),
        "rows": rows,
    }


def _kmeans(x: NDArray[np.float64], k: int, seed: int = 0, iters: int = 30) -> NDArray[np.float64]:
    """Spherical k-means centroids of unit vectors ``x`` (no labels: pseudo-groups)."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(x.shape[0], k, replace=False)]
    for _ in range(iters):
        a = np.argmax(x @ c.T, axis=1)
        for j in range(k):
            if np.any(a == j):
                m = x[a == j].mean(axis=0)
                c[j] = m / np.linalg.norm(m)
    return c


def mitigations_kfold(
    g_emb: NDArray[np.float32],
    g_ids: list[str],
    m_emb: NDArray[np.float32],
    m_ids: list[str],
    m_ok: NDArray[np.bool_],
    n_emb: NDArray[np.float32],
    n_ids: list[str],
    n_ok: NDArray[np.bool_],
    sex: dict[str, str],
    folds: int = 5,
    clusters: int = 25,
    far: float = 1e-3,
) -> dict[str, Any]:
    """Raw scores against two label-free normalisations, each with its threshold at FPIR 1%
    fitted on k-1 folds of identities and applied to the held-out fold (identity-disjoint):

    - ``tnorm_*``: each search's scores standardised by the mean and spread of its scores for
      the gallery's identities (all, or its 100 highest after the first);
    - ``fsn``: Fair Score Normalization (Terhoerst et al. 2020): k-means pseudo-groups of the
      training folds' gallery embeddings, each group's threshold at ``far`` on impostor pairs of
      those gallery images, and a score shifted by the mean of its probe's and its candidate's
      group thresholds, so every pseudo-group's impostors sit alike. Fitted per fold on the
      training identities only.
    """
    names = sorted(set(g_ids))
    col = {n: j for j, n in enumerate(names)}
    column_of = np.array([col[i] for i in g_ids], dtype=np.int64)
    m_col = np.array([col.get(i, -1) for i in m_ids])
    n_col = np.array([col.get(i, -1) for i in n_ids])
    mr = _identity_scores(m_emb, g_emb, column_of, len(names)).astype(np.float64)
    nr = _identity_scores(n_emb, g_emb, column_of, len(names)).astype(np.float64)
    everyone = sorted(set(m_ids) | set(n_ids) | set(g_ids))
    fold_of = {n: k % folds for k, n in enumerate(everyone)}
    nm_ids = list(n_ids) + list(m_ids)
    nm_fold = np.array([fold_of[x] for x in nm_ids])
    m_fold = np.array([fold_of[x] for x in m_ids])

    def tnorm(r: NDArray[np.float64], cohort: int | None) -> NDArray[np.float64]:
        x = np.sort(r, axis=1)[:, ::-1]
        c = x[:, 1 : 1 + cohort] if cohort else x[:, 1:]
        return (r - c.mean(axis=1, keepdims=True)) / (c.std(axis=1, keepdims=True) + 1e-9)

    def fsn(k: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        g = g_emb.astype(np.float64)
        train = np.array([fold_of[i] != k for i in g_ids])
        cent = _kmeans(g[train], clusters, seed=k)
        g_cl = np.argmax(g @ cent.T, axis=1)
        s = g[train] @ g[train].T
        ids = np.array(g_ids)[train]
        impostor = ids[:, None] != ids[None, :]
        cl = g_cl[train]
        thr = np.empty(clusters)
        for c in range(clusters):
            rows = cl == c
            v = s[rows][impostor[rows]] if rows.any() else np.empty(0)
            thr[c] = np.quantile(v, 1 - far) if v.size > 1000 else np.quantile(s[impostor], 1 - far)
        id_thr = np.zeros(len(names))
        for i, j in enumerate(column_of):
            id_thr[j] = thr[g_cl[i]]  # an identity's (first) reference image's group
        mp = thr[np.argmax(m_emb.astype(np.float64) @ cent.T, axis=1)]
        npp = thr[np.argmax(n_emb.astype(np.float64) @ cent.T, axis=1)]
        return mr - 0.5 * (mp[:, None] + id_thr[None, :]), nr - 0.5 * (
            npp[:, None] + id_thr[None, :]
        )

    def run(scores: Any) -> dict[str, Any]:
        hit = np.zeros(len(m_ids), dtype=bool)
        fp = np.zeros(len(nm_ids), dtype=bool)
        for k in range(folds):
            mx, nx = scores(k)
            rows = np.arange(len(m_ids))
            mate = np.where(m_col >= 0, mx[rows, np.maximum(m_col, 0)], np.nan)
            mate[~m_ok] = np.nan
            rank = 1 + np.sum(mx > np.nan_to_num(mate, nan=np.inf)[:, None], axis=1)
            mo = mx.copy()
            mo[rows[m_col >= 0], m_col[m_col >= 0]] = -np.inf
            loo = mo.max(axis=1)
            loo[~m_ok] = np.nan
            no = nx.copy()
            nrows = np.arange(len(n_ids))
            no[nrows[n_col >= 0], n_col[n_col >= 0]] = -np.inf
            ntop = no.max(axis=1)
            ntop[~n_ok] = np.nan
            nm_scores = np.concatenate([ntop, loo])
            t = fpir_threshold(nm_scores[nm_fold != k], 0.01)
            test = m_fold == k
            hit[test] = (rank[test] == 1) & (np.nan_to_num(mate[test], nan=-np.inf) >= t)
            fp[nm_fold == k] = np.nan_to_num(nm_scores[nm_fold == k], nan=-np.inf) >= t
        groups: dict[str, Any] = {}
        for grp in ("female", "male"):
            gm = np.array([sex.get(x) == grp for x in m_ids])
            gn = np.array([sex.get(x) == grp for x in nm_ids])
            groups[grp] = {"fnir": 1 - float(hit[gm].mean()), "fpir": float(fp[gn].mean())}
        return {
            "fnir": 1 - float(hit.mean()),
            "fpir": float(fp.mean()),
            "groups": groups,
            "fnir_ratio": groups["female"]["fnir"] / groups["male"]["fnir"],
            "fpir_ratio": groups["female"]["fpir"] / max(groups["male"]["fpir"], 1e-12),
        }

    t_all, t_100 = (tnorm(mr, None), tnorm(nr, None)), (tnorm(mr, 100), tnorm(nr, 100))
    return {
        "raw": run(lambda k: (mr, nr)),
        "tnorm_all": run(lambda k: t_all),
        "tnorm_top100": run(lambda k: t_100),
        "fsn": run(fsn),
        "protocol": f"{folds}-fold over identities; FSN {clusters} k-means groups, FAR {far:g}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("fairness.json"))
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    cache = Path(
        os.environ.get("RETROFACE_EVAL_CACHE")
        or Path(os.environ.get("RETROFACE_HOME", Path.home() / ".retroface")) / CACHE_DIRNAME
    )
    ev = Evaluator(EngineSpec(), cache)
    proto = resolve_protocol(args.data / "lfw")
    sex = read_attributes(args.data / "lfw_attributes.csv")["sex"]
    s, (g, m, n) = _protocol_searches(ev, proto)
    shipped = shipped_threshold(ev.model.key)
    assert shipped is not None
    op = shipped.value
    out: dict[str, Any] = {"operating_threshold": op, "clean": table(s, sex, op, args.n_boot)}
    show("clean, shipped operating threshold", out["clean"])
    rule = worst_group_rule(s.augmented_top, s.augmented_identity, {"sex": sex}, 0.01)
    out["worst_group_rule"] = rule
    out["clean_worst_group"] = table(s, sex, rule["threshold"], args.n_boot)
    show(f"clean, worst-group threshold ({rule['worst_group']})", out["clean_worst_group"])
    gal, mat, non = proto.role("gallery"), proto.role("mated"), proto.role("nonmated")
    spec = DegradeSpec(40)
    dm = ev.embed([e.path for e in mat], "40 px mated", degrade=spec, boxes=_boxes(m), probe=True)
    dn = ev.embed([e.path for e in non], "40 px non", degrade=spec, boxes=_boxes(n), probe=True)
    ds = run_searches(
        [e.identity for e in gal], g, [e.identity for e in mat], dm, [e.identity for e in non], dn
    )
    out["degraded_40"] = table(ds, sex, op, args.n_boot)
    show("degraded 40 px, shipped operating threshold", out["degraded_40"])
    out["degraded_40_worst_group"] = table(ds, sex, rule["threshold"], args.n_boot)
    show("degraded 40 px, worst-group threshold", out["degraded_40_worst_group"])
    rels = [e.rel for e in mat]
    out["female_misses"] = misses(s, rels, sex, op, "female")
    out["male_misses"] = misses(s, rels, sex, op, "male")
    for grp in ("female", "male"):
        d = out[f"{grp}_misses"]
        print(
            f"\n{grp} misses at {op:.4f}: {d['n']}; by cause {d['by_cause']}; poor verdict "
            f"{d['poor_verdict']}; yaw>30 deg {d['yaw_over_30_deg']}; inter-eye<30px "
            f"{d['inter_eye_under_30px']}; top identities {d['identities']}"
        )
    gi = [i for i, ok in enumerate(g.found) if ok]
    out["mitigations"] = mitigations_kfold(
        g.embeddings[gi],
        [gal[i].identity for i in gi],
        m.embeddings,
        [e.identity for e in mat],
        m.found,
        n.embeddings,
        [e.identity for e in non],
        n.found,
        sex,
    )
    for label, r in out["mitigations"].items():
        if label == "protocol":
            continue
        f, mm = r["groups"]["female"], r["groups"]["male"]
        print(
            f"{label:13} FNIR {r['fnir']:.2%} FPIR {r['fpir']:.2%}; female FNIR {f['fnir']:.2%} "
            f"FPIR {f['fpir']:.2%}; male FNIR {mm['fnir']:.2%} FPIR {mm['fpir']:.2%}; ratios "
            f"FNIR {r['fnir_ratio']:.2f} FPIR {r['fpir_ratio']:.2f}"
        )
    out["samples_needed_fpir_1pct"] = samples_needed(0.01)
    args.out.write_text(json.dumps(out, indent=1, default=float), "utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
