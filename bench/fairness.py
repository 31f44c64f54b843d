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
import time
from collections import Counter
from collections.abc import Callable, Sequence
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


#: Impostor pairs kept (uniformly) to fit FairCal's calibration maps: the beta map has three
#: parameters, and 300,000 pairs (several thousand per cluster at K = 100) fix them to well
#: within the fold-to-fold spread, at a tenth of the cost of all 5 million.
IMPOSTOR_SAMPLE = 300_000
#: mated embeddings, their detection flags, non-mated embeddings, theirs
ProbeSet = tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32], NDArray[np.bool_]]
Transform = Callable[
    [NDArray[np.float64], NDArray[np.float64], NDArray[np.float32], NDArray[np.float32]],
    tuple[NDArray[np.float64], NDArray[np.float64]],
]


def _beta_features(s: NDArray[np.float64], use: tuple[bool, bool]) -> NDArray[np.float64]:
    """Beta calibration's inputs (Kull et al. 2017) for cosine scores mapped to (0, 1)."""
    u = np.clip((s + 1) / 2, 1e-6, 1 - 1e-6)
    cols = [c for c, on in ((np.log(u), use[0]), (-np.log(1 - u), use[1])) if on]
    return np.column_stack([*cols, np.ones_like(u)])


def _logistic(x: NDArray[np.float64], y: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Maximum-likelihood logistic regression by Newton steps (a tiny ridge keeps a cluster
    with separable scores finite)."""
    w = np.zeros(x.shape[1])
    t = y.astype(np.float64)
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - t) + 1e-3 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


class BetaCalibration:
    """Score -> probability of a mate, ``1 / (1 + 1 / (e^c u^a / (1-u)^b))`` with a, b >= 0
    (a coefficient fitted negative is dropped and the rest refitted, as Kull et al. do), so
    the map is monotone in the score."""

    def __init__(self, s: NDArray[np.float64], y: NDArray[np.bool_]) -> None:
        self.use = (True, True)
        w = _logistic(_beta_features(s, self.use), y)
        if w[0] < 0 or w[1] < 0:
            self.use = (bool(w[0] >= 0), bool(w[1] >= 0))
            if not any(self.use):
                self.use = (False, True)
            w = _logistic(_beta_features(s, self.use), y)
        self.w = w

    def __call__(self, s: NDArray[np.float64]) -> NDArray[np.float64]:
        z = _beta_features(s.ravel(), self.use) @ self.w
        return np.asarray(1 / (1 + np.exp(-np.clip(z, -30, 30)))).reshape(s.shape)


def mitigations_kfold(
    g_emb: NDArray[np.float32],
    g_ids: list[str],
    m_ids: list[str],
    n_ids: list[str],
    probes: dict[
        str, tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32], NDArray[np.bool_]]
    ],
    sex: dict[str, str],
    folds: int = 5,
    clusters: int = 25,
    far: float = 1e-3,
    faircal_clusters: Sequence[int] = (25, 100),
) -> dict[str, Any]:
    """Raw scores against label-free normalisations, each with its threshold at FPIR 1%
    fitted on k-1 folds of identities and applied to the held-out fold (identity-disjoint).
    ``probes`` maps a probe set name (clean, degraded) to its mated and non-mated embeddings
    and detection flags; every method is fitted on clean data only (the gallery and the
    fitting identities' clean probes) and its threshold on the clean non-mated searches of
    the fitting folds, then applied unchanged to every probe set, as a deployment would:

    - ``tnorm_*``: each search's scores standardised by the mean and spread of its scores for
      the gallery's identities (all, or its 100 highest after the first);
    - ``fsn``: Fair Score Normalization (Terhoerst et al. 2020): k-means pseudo-groups of the
      training folds' gallery embeddings, each group's threshold at ``far`` on impostor pairs of
      those gallery images, and a score shifted by the mean of its probe's and its candidate's
      group thresholds, so every pseudo-group's impostors sit alike;
    - ``faircal_K``: FairCal (Salvador et al., ICLR 2022): k-means (K clusters) of the fitting
      identities' images, a beta calibration per cluster fitted on the fitting identities'
      search pairs (probe, gallery image) that have a face in that cluster (mates: genuine;
      everyone else: impostors), and each pair's score replaced by its two faces' clusters'
      calibrated probabilities, weighted by the clusters' pair counts.
    """
    names = sorted(set(g_ids))
    col = {n: j for j, n in enumerate(names)}
    column_of = np.array([col[i] for i in g_ids], dtype=np.int64)
    m_col = np.array([col.get(i, -1) for i in m_ids])
    n_col = np.array([col.get(i, -1) for i in n_ids])
    raw = {
        name: (
            _identity_scores(me, g_emb, column_of, len(names)).astype(np.float64),
            _identity_scores(ne, g_emb, column_of, len(names)).astype(np.float64),
        )
        for name, (me, _, ne, _) in probes.items()
    }
    everyone = sorted(set(m_ids) | set(n_ids) | set(g_ids))
    fold_of = {n: k % folds for k, n in enumerate(everyone)}
    nm_ids = list(n_ids) + list(m_ids)
    nm_fold = np.array([fold_of[x] for x in nm_ids])
    m_fold = np.array([fold_of[x] for x in m_ids])
    n_fold = np.array([fold_of[x] for x in n_ids])
    g_fold = np.array([fold_of[x] for x in g_ids])
    col_fold = np.array([fold_of[n] for n in names])
    m_clean, m_ok_clean, n_clean, n_ok_clean = probes["clean"]

    def tnorm(cohort: int | None) -> Callable[[int], Transform]:
        def fit(k: int) -> Transform:
            def apply(mr: Any, nr: Any, me: Any, ne: Any) -> Any:
                return _tn(mr, cohort), _tn(nr, cohort)

            return apply

        return fit

    def _tn(r: NDArray[np.float64], cohort: int | None) -> NDArray[np.float64]:
        x = np.sort(r, axis=1)[:, ::-1]
        c = x[:, 1 : 1 + cohort] if cohort else x[:, 1:]
        return (r - c.mean(axis=1, keepdims=True)) / (c.std(axis=1, keepdims=True) + 1e-9)

    def fsn(k: int) -> Transform:
        g = g_emb.astype(np.float64)
        train = g_fold != k
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

        def apply(mr: Any, nr: Any, me: Any, ne: Any) -> Any:
            mp = thr[np.argmax(me.astype(np.float64) @ cent.T, axis=1)]
            npp = thr[np.argmax(ne.astype(np.float64) @ cent.T, axis=1)]
            return mr - 0.5 * (mp[:, None] + id_thr[None, :]), nr - 0.5 * (
                npp[:, None] + id_thr[None, :]
            )

        return apply

    def faircal(n_clusters: int) -> Callable[[int], Transform]:
        def fit(k: int) -> Transform:
            rng = np.random.default_rng(k)
            fit_m, fit_n, fit_g = m_fold != k, n_fold != k, g_fold != k
            pool = np.concatenate(
                [g_emb[fit_g], m_clean[fit_m & m_ok_clean], n_clean[fit_n & n_ok_clean]]
            )
            cent = _kmeans(pool.astype(np.float64), n_clusters, seed=k)
            col_cl = np.zeros(len(names), dtype=np.int64)
            col_cl[column_of] = np.argmax(g_emb.astype(np.float64) @ cent.T, axis=1)
            cols = np.flatnonzero(col_fold != k)  # the fitting identities' gallery columns
            mr, nr = raw["clean"]
            rows_m = np.flatnonzero(fit_m & m_ok_clean)
            rows_n = np.flatnonzero(fit_n & n_ok_clean)
            s = np.concatenate([mr[np.ix_(rows_m, cols)], nr[np.ix_(rows_n, cols)]])
            y = np.zeros_like(s, dtype=bool)
            y[: rows_m.size] = m_col[rows_m][:, None] == cols[None, :]
            p_cl = np.argmax(
                np.concatenate([m_clean[rows_m], n_clean[rows_n]]).astype(np.float64) @ cent.T,
                axis=1,
            )
            a = np.broadcast_to(p_cl[:, None], s.shape).ravel()
            b = np.broadcast_to(col_cl[cols][None, :], s.shape).ravel()
            s, y = s.ravel(), y.ravel()
            # every mate pair, a uniform sample of the impostor pairs (the same share in every
            # cluster, so each cluster's mate/impostor balance is kept)
            keep = y | (rng.random(s.size) < min(1.0, IMPOSTOR_SAMPLE / max(1, s.size)))
            s, y, a, b = s[keep], y[keep], a[keep], b[keep]
            fallback = BetaCalibration(s, y)
            cal: list[BetaCalibration] = []
            count = np.zeros(n_clusters)
            for c in range(n_clusters):
                sel = (a == c) | (b == c)
                count[c] = sel.sum()
                ok = y[sel].sum() >= 5 and (~y[sel]).sum() >= 5
                cal.append(BetaCalibration(s[sel], y[sel]) if ok else fallback)
            count = np.maximum(count, 1)

            def calibrated(r: NDArray[np.float64], e: NDArray[np.float32]) -> NDArray[np.float64]:
                pc = np.argmax(e.astype(np.float64) @ cent.T, axis=1)
                out = np.zeros_like(r)
                for c in range(n_clusters):  # the probe's cluster, by rows
                    rows = pc == c
                    if rows.any():
                        out[rows] += count[c] * cal[c](r[rows])
                for c in range(n_clusters):  # the gallery face's cluster, by columns
                    cs = col_cl == c
                    if cs.any():
                        out[:, cs] += count[c] * cal[c](r[:, cs])
                return out / (count[pc][:, None] + count[col_cl][None, :])

            def apply(mr: Any, nr: Any, me: Any, ne: Any) -> Any:
                return calibrated(mr, me), calibrated(nr, ne)

            return apply

        return fit

    def run(fit: Callable[[int], Transform]) -> dict[str, Any]:
        res: dict[str, Any] = {}
        hit = {p: np.zeros(len(m_ids), dtype=bool) for p in probes}
        fp = {p: np.zeros(len(nm_ids), dtype=bool) for p in probes}
        for k in range(folds):
            apply = fit(k)
            t = None
            for pname in ("clean", *(p for p in probes if p != "clean")):
                me, m_ok, ne, n_ok = probes[pname]
                mx, nx = apply(*raw[pname], me, ne)
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
                if t is None:  # the clean fitting folds set the threshold for every probe set
                    t = fpir_threshold(nm_scores[nm_fold != k], 0.01)
                test = m_fold == k
                hit[pname][test] = (rank[test] == 1) & (np.nan_to_num(mate[test], nan=-np.inf) >= t)
                fp[pname][nm_fold == k] = np.nan_to_num(nm_scores[nm_fold == k], nan=-np.inf) >= t
        for pname in probes:
            groups: dict[str, Any] = {}
            for grp in ("female", "male"):
                gm = np.array([sex.get(x) == grp for x in m_ids])
                gn = np.array([sex.get(x) == grp for x in nm_ids])
                groups[grp] = {
                    "fnir": 1 - float(hit[pname][gm].mean()),
                    "fpir": float(fp[pname][gn].mean()),
                }
            res[pname] = {
                "fnir": 1 - float(hit[pname].mean()),
                "fpir": float(fp[pname].mean()),
                "groups": groups,
                "fnir_ratio": groups["female"]["fnir"] / groups["male"]["fnir"],
                "fpir_ratio": groups["female"]["fpir"] / max(groups["male"]["fpir"], 1e-12),
            }
        return res

    def same(k: int) -> Transform:
        return lambda mr, nr, me, ne: (mr, nr)

    methods: dict[str, Callable[[int], Transform]] = {
        "raw": same,
        "tnorm_all": tnorm(None),
        "tnorm_top100": tnorm(100),
        "fsn": fsn,
        **{f"faircal_{kc}": faircal(kc) for kc in faircal_clusters},
    }
    out: dict[str, Any] = {}
    for label, fit in methods.items():
        t0 = time.perf_counter()
        out[label] = run(fit)
        show_mitigations({label: out[label]})
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    out["protocol"] = (
        f"{folds}-fold over identities; FSN {clusters} k-means groups, FAR {far:g}; FairCal "
        f"K in {list(faircal_clusters)}, beta calibration per cluster; everything fitted on the "
        "clean data of the fitting folds, threshold at FPIR 1% on their clean non-mated searches"
    )
    return out


def _agg_scores(
    probes: NDArray[np.float32],
    rows: NDArray[np.float32],
    column_of: NDArray[np.int64],
    k: int,
    agg: str,
) -> NDArray[np.float64]:
    """Per gallery identity: the best (``max``) or the mean (``mean``) of its templates'
    scores, as the matcher's two aggregates rank a subject with several templates."""
    sims = (probes @ rows.T).astype(np.float64)
    if agg == "max":
        out = np.full((probes.shape[0], k), -np.inf)
        for j in range(column_of.size):
            np.maximum(out[:, column_of[j]], sims[:, j], out=out[:, column_of[j]])
        return out
    total = np.zeros((probes.shape[0], k))
    np.add.at(total.T, column_of, sims.T)
    return total / np.maximum(np.bincount(column_of, minlength=k), 1)[None, :]


def fused_templates(
    gal: list[Any],
    g: Any,
    mat: list[Any],
    mg: Any,
    probe_sets: dict[str, tuple[Any, Any]],
    non: list[Any],
    sex: dict[str, str],
    refs: int,
) -> dict[str, Any]:
    """Several reference images per subject, against one (issue #17's "fused multi-image
    templates"). The LFW 1:N protocol enrols one image per identity, so this is a *variant
    protocol*: every identity with more than ``refs`` images enrols its first ``refs`` (the
    protocol's gallery image and its next ``refs - 1``, embedded as enrolment embeds them) and
    searches with the rest; every other gallery identity keeps its one image as a distractor;
    the protocol's non-mated searches and each mated search's leave-one-identity-out top score
    are the non-mated searches. The same searches run against four galleries: the first image
    only, all ``refs`` templates ranked by their best score (the matcher's ``max``) or their
    mean score (``mean``), and one fused template (the mean of the unit embeddings,
    renormalised). Each gallery's threshold is set at FPIR 1% on its clean non-mated searches
    and kept for the degraded probes."""
    by_id: dict[str, list[int]] = {}
    for i, e in enumerate(mat):
        by_id.setdefault(e.identity, []).append(i)
    multi = {ident for ident, rows in by_id.items() if len(rows) >= refs}
    ref_rows = {ident: by_id[ident][: refs - 1] for ident in multi}
    probe_rows = np.array([i for ident in sorted(multi) for i in by_id[ident][refs - 1 :]])
    names = sorted({e.identity for e in gal})
    col = {n: j for j, n in enumerate(names)}
    first = {e.identity: i for i, e in enumerate(gal)}
    results: dict[str, Any] = {
        "protocol": (
            f"identities with {refs + 1}+ images: {len(multi)} "
            f"({sum(sex.get(i) == 'female' for i in multi)} female), enrolling {refs} images "
            f"each; {probe_rows.size} mated searches with their remaining images; "
            f"{len(names) - len(multi)} other gallery identities with one image"
        )
    }
    m_ident = [mat[i].identity for i in probe_rows]
    m_col = np.array([col[i] for i in m_ident])
    nm_ident = [e.identity for e in non] + m_ident
    for gallery in ("single", "max", "mean", "fused"):
        vecs: list[NDArray[np.float32]] = []
        cols: list[int] = []
        for name in names:
            own = [g.embeddings[first[name]]] if g.found[first[name]] else []
            if name in multi and gallery != "single":
                own += [mg.embeddings[i] for i in ref_rows[name] if mg.found[i]]
            if not own:
                continue  # no face in any reference image: not enrolled (its mates are misses)
            if gallery == "fused":
                v = np.mean(own, axis=0)
                own = [v / np.linalg.norm(v)]
            vecs.extend(own)
            cols.extend([col[name]] * len(own))
        rows, column_of = np.asarray(vecs, dtype=np.float32), np.asarray(cols, dtype=np.int64)
        agg = "mean" if gallery == "mean" else "max"
        t = None
        out: dict[str, Any] = {}
        for pname, (pm, pn) in probe_sets.items():
            ms = _agg_scores(pm.embeddings[probe_rows], rows, column_of, len(names), agg)
            ns = _agg_scores(pn.embeddings, rows, column_of, len(names), agg)
            r = np.arange(probe_rows.size)
            mate = ms[r, m_col].copy()
            mate[~pm.found[probe_rows] | ~np.isfinite(mate)] = np.nan
            rank = 1 + np.sum(ms > np.nan_to_num(mate, nan=np.inf)[:, None], axis=1)
            ms[r, m_col] = -np.inf
            loo = np.where(pm.found[probe_rows], ms.max(axis=1), np.nan)
            n_cols = np.array([col.get(e.identity, -1) for e in non])
            nr = np.arange(len(non))
            ns[nr[n_cols >= 0], n_cols[n_cols >= 0]] = -np.inf
            ntop = np.where(pn.found, ns.max(axis=1), np.nan)
            nm = np.concatenate([ntop, loo])
            if t is None:
                t = fpir_threshold(nm, 0.01)
            hit = (rank == 1) & (np.nan_to_num(mate, nan=-np.inf) >= t)
            fp = np.nan_to_num(nm, nan=-np.inf) >= t
            groups = {}
            for grp in ("female", "male"):
                gm = np.array([sex.get(x) == grp for x in m_ident])
                gn = np.array([sex.get(x) == grp for x in nm_ident])
                groups[grp] = {
                    "n_mated": int(gm.sum()),
                    "n_nonmated": int(gn.sum()),
                    "fnir": 1 - float(hit[gm].mean()),
                    "fpir": float(fp[gn].mean()),
                }
            out[pname] = {
                "threshold": float(t),
                "fnir": 1 - float(hit.mean()),
                "fpir": float(fp.mean()),
                "groups": groups,
                "fnir_ratio": groups["female"]["fnir"] / max(groups["male"]["fnir"], 1e-12),
                "fpir_ratio": groups["female"]["fpir"] / max(groups["male"]["fpir"], 1e-12),
            }
        results[gallery] = out
    return results


def show_fusion(res: dict[str, Any]) -> None:
    print(f"\nfused templates: {res['protocol']}")
    for gallery in ("single", "max", "mean", "fused"):
        for pname, x in res[gallery].items():
            f, mm = x["groups"]["female"], x["groups"]["male"]
            print(
                f"  {gallery:7} {pname:11} t {x['threshold']:.4f} FNIR {x['fnir']:.2%} FPIR "
                f"{x['fpir']:.2%}; female FNIR {f['fnir']:.2%} FPIR {f['fpir']:.2%} "
                f"(n {f['n_mated']}/{f['n_nonmated']}); male FNIR {mm['fnir']:.2%} FPIR "
                f"{mm['fpir']:.2%} (n {mm['n_mated']}/{mm['n_nonmated']}); ratios FNIR "
                f"{x['fnir_ratio']:.2f} FPIR {x['fpir_ratio']:.2f}"
            )


def show_mitigations(res: dict[str, Any]) -> None:
    for label, r in res.items():
        if label == "protocol":
            continue
        for pname, x in r.items():
            f, mm = x["groups"]["female"], x["groups"]["male"]
            print(
                f"{label:13} {pname:11} FNIR {x['fnir']:.2%} FPIR {x['fpir']:.2%}; female FNIR "
                f"{f['fnir']:.2%} FPIR {f['fpir']:.2%}; male FNIR {mm['fnir']:.2%} FPIR "
                f"{mm['fpir']:.2%}; ratios FNIR {x['fnir_ratio']:.2f} FPIR {x['fpir_ratio']:.2f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("fairness.json"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument(
        "--enrol-tta",
        action="store_true",
        help="also enrol the gallery with flip and second look (1,862 more images the first time)",
    )
    ap.add_argument("--references", type=lambda v: [int(x) for x in v.split(",")], default=[2, 3])
    ap.add_argument(
        "--faircal-clusters", type=lambda v: [int(x) for x in v.split(",")], default=[25, 100]
    )
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
        [e.identity for e in mat],
        [e.identity for e in non],
        {
            "clean": (m.embeddings, m.found, n.embeddings, n.found),
            "degraded_40": (dm.embeddings, dm.found, dn.embeddings, dn.found),
        },
        sex,
        faircal_clusters=args.faircal_clusters,
    )
    # the mated images embedded as enrolment embeds them (a second reference image)
    mg = ev.embed([e.path for e in mat], "mated images as references")
    out["fused_templates"] = {
        f"{r}_references": fused_templates(
            gal, g, mat, mg, {"clean": (m, n), "degraded_40": (dm, dn)}, non, sex, r
        )
        for r in args.references
    }
    for res in out["fused_templates"].values():
        show_fusion(res)
    if args.enrol_tta:
        # test-time augmentation at enrolment: the gallery analysed as searches analyse probes
        # (flip, second look); its own FPIR-1% threshold on clean searches, kept for 40 px
        gt = ev.embed([e.path for e in gal], "gallery with flip and second look", probe=True)
        gi_, mi_, ni_ = (
            [e.identity for e in gal],
            [e.identity for e in mat],
            [e.identity for e in non],
        )
        ts = run_searches(gi_, gt, mi_, m, ni_, n)
        t_tta = fpir_threshold(ts.augmented_top, 0.01)
        out["enrol_tta"] = {
            "threshold": t_tta,
            "clean": table(ts, sex, t_tta, args.n_boot),
            "degraded_40": table(run_searches(gi_, gt, mi_, dm, ni_, dn), sex, t_tta, args.n_boot),
        }
        show("enrolment TTA, clean", out["enrol_tta"]["clean"])
        show("enrolment TTA, 40 px", out["enrol_tta"]["degraded_40"])
    out["samples_needed_fpir_1pct"] = samples_needed(0.01)
    args.out.write_text(json.dumps(out, indent=1, default=float), "utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
