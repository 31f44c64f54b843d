"""Run accuracy evaluations end to end: images -> embeddings -> searches -> metrics.

The metric layer (:mod:`retroface.eval.metrics`) only sees ranks and scores; this module makes
them from real images with the deployed pipeline (detection, primary face, embedding, exact
inner-product search), so a published figure is the product's figure, not a model's.

Open-set 1:N
    Gallery: the protocol's ``gallery`` images (one template each; a subject's score is its best
    template's). A gallery image without a face is a *failure to enrol*: its identity's mated
    searches miss. A probe without a face is a *failure to detect*: a miss when mated, an empty
    candidate list when non-mated. Both stay in every denominator.

    FPIR 0.1% needs over 3,000 non-mated searches; LFW's protocol has about 1,000. More are made
    by *leave one identity out*: a mated probe searched against the gallery without its own
    identity is a non-mated search, so its top score over the *other* identities is a non-mated
    sample. All FPIR figures (and ``n_nonmated``) use the protocol's non-mated searches plus
    these; the protocol-only figures are reported beside them (``plain_protocol``). The extra
    samples re-use mated probe images, so the bootstrap (which treats mated and non-mated
    searches as independent) somewhat understates the width of the intervals.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retroface.core.errors import InvalidInputError
from retroface.eval.dataset import PairList, Protocol, folder_images
from retroface.eval.degrade import DegradeSpec
from retroface.eval.embeddings_cache import (
    EmbeddingSet,
    EngineSpec,
    ProgressFn,
    embed_images,
)
from retroface.eval.metrics import (
    DEFAULT_FPIRS,
    UNLABELLED,
    IdentificationResult,
    VerificationResult,
    by_group,
    evaluate_identification,
    evaluate_verification,
    fnir_at_threshold,
    fpir_at_threshold,
    fpir_threshold,
    kfold_accuracy,
    plain_language_summary,
    rate_key,
    samples_needed,
)
from retroface.eval.quality_fit import QualitySamples
from retroface.vision.probe_quality import HitChanceModel, model_for
from retroface.vision.types import FaceEngine, ModelIdentity

OPERATING_FPIR = 0.01
VERIFY_FARS = (1e-2, 1e-3, 1e-4)
#: Points per group DET curve in a report (log-spaced in FPIR): enough for a smooth curve, few
#: enough that the JSON stays small.
DET_POINTS = 200
NONMATED_SET = "protocol non-mated + leave-one-identity-out"
#: Probe blocks for the score matrix: bounds memory on large protocols.
_BLOCK = 2048


# --------------------------------------------------------------------------------------------
# The engine under test
# --------------------------------------------------------------------------------------------


@dataclass
class Evaluator:
    """One engine configuration, its cache and how to run it (shared by every evaluation)."""

    spec: EngineSpec
    cache_dir: Path | None
    workers: int | None = None
    progress: ProgressFn | None = None
    _engine: FaceEngine | None = field(default=None, repr=False)

    @property
    def engine(self) -> FaceEngine:
        if self._engine is None:
            self._engine = self.spec.build()
        return self._engine

    @property
    def model(self) -> ModelIdentity:
        return self.engine.identity

    def describe(self) -> dict[str, Any]:
        return {**self.model.to_dict(), **self.spec.settings(), "flip": self.spec.flip}

    def embed(
        self,
        paths: Sequence[Path],
        label: str,
        degrade: DegradeSpec | None = None,
        boxes: Sequence[tuple[float, float, float, float] | None] | None = None,
        probe: bool = False,
    ) -> EmbeddingSet:
        return embed_images(
            paths,
            self.spec,
            model=self.model,
            cache_dir=self.cache_dir,
            engine=self._engine,
            workers=self.workers,
            degrade=degrade,
            source_boxes=boxes,
            progress=self.progress,
            label=label,
            probe=probe,
        )


# --------------------------------------------------------------------------------------------
# Searches
# --------------------------------------------------------------------------------------------


@dataclass
class Searches:
    """Ranks and scores of every search of one run, ready for the metric layer."""

    mated_identity: list[str]
    mate_rank: NDArray[np.int64]  # 0 = not found (failure, or no mate enrolled)
    mate_score: NDArray[np.float64]
    mated_ftd: NDArray[np.bool_]
    mated_fte: NDArray[np.bool_]
    mated_acceptable: NDArray[np.bool_]
    loo_top: NDArray[np.float64]  # per mated probe: top score over the *other* identities
    nonmated_identity: list[str]
    nonmated_top: NDArray[np.float64]
    nonmated_ftd: NDArray[np.bool_]
    gallery_templates: int
    gallery_identities: int
    #: per mated probe: the probe quality model's chance of finding the mate (NaN: no face,
    #: or no model fitted for this recogniser) and its verdict ("" where no chance)
    mated_hit_chance: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    mated_verdict: list[str] = field(default_factory=list)
    #: per mated probe: the probe quality model's inputs (NaN rows: no face / not measured)
    mated_features: NDArray[np.float32] | None = None

    @property
    def augmented_top(self) -> NDArray[np.float64]:
        return np.concatenate([self.nonmated_top, self.loo_top])

    @property
    def augmented_identity(self) -> list[str]:
        return self.nonmated_identity + self.mated_identity


def _identity_scores(
    probes: NDArray[np.float32], gallery: NDArray[np.float32], column_of: NDArray[np.int64], k: int
) -> NDArray[np.float32]:
    """Each probe's score per gallery identity, ``(n_probes, k)``, as a search scores it: the
    inner product with the identity's template, and for an identity with several templates
    with its fused template (the renormalised mean of its unit templates: the matcher's default
    aggregate, search/matcher.py), so a calibration on a gallery of several images per
    identity calibrates what searches compare with the threshold."""
    if np.unique(column_of).size != column_of.size:
        unit = gallery.astype(np.float64)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        fused = np.zeros((k, gallery.shape[1]))
        np.add.at(fused, column_of, unit)
        fused /= np.linalg.norm(fused, axis=1, keepdims=True)
        gallery, column_of = fused.astype(np.float32), np.arange(k, dtype=np.int64)
    out = np.full((probes.shape[0], k), -np.inf, dtype=np.float32)
    for start in range(0, probes.shape[0], _BLOCK):
        out[start : start + _BLOCK][:, column_of] = probes[start : start + _BLOCK] @ gallery.T
    return out


def run_searches(
    gallery_identity: Sequence[str],
    gallery: EmbeddingSet,
    mated_identity: Sequence[str],
    mated: EmbeddingSet,
    nonmated_identity: Sequence[str],
    nonmated: EmbeddingSet,
) -> Searches:
    """Search every probe against the gallery (exhaustively) and derive ranks and top scores.

    A mate's rank is 1 + the number of other identities scoring strictly higher. Each search's
    non-mated sample is its top score over identities other than its own, so a mated probe
    yields one too (leave one identity out) and a protocol non-mated probe is safe even if a
    protocol file wrongly enrolled its identity.
    """
    enrolled = [i for i, ok in enumerate(gallery.found) if ok]
    names = sorted({gallery_identity[i] for i in enrolled})
    if not names:
        raise InvalidInputError("no gallery image had a detectable face: nothing to search")
    col = {n: j for j, n in enumerate(names)}
    column_of = np.array([col[gallery_identity[i]] for i in enrolled], dtype=np.int64)
    g = gallery.embeddings[enrolled]

    def scores(es: EmbeddingSet) -> NDArray[np.float32]:
        return _identity_scores(es.embeddings, g, column_of, len(names))

    m_scores = scores(mated)
    n_m = len(mated_identity)
    rank = np.zeros(n_m, dtype=np.int64)
    mate = np.full(n_m, np.nan)
    loo = np.full(n_m, np.nan)
    fte = np.zeros(n_m, dtype=bool)
    for i, ident in enumerate(mated_identity):
        row = m_scores[i]
        j = col.get(ident)
        fte[i] = j is None
        if not mated.found[i]:
            continue
        if j is None:
            loo[i] = float(row.max())
            continue
        s = row[j]
        rank[i] = 1 + int(np.count_nonzero(row > s))
        mate[i] = float(s)
        others = np.delete(row, j)
        loo[i] = float(others.max()) if others.size else np.nan
    nm_scores = scores(nonmated)
    nm_top = np.full(len(nonmated_identity), np.nan)
    for i, ident in enumerate(nonmated_identity):
        if not nonmated.found[i]:
            continue
        row = nm_scores[i]
        j = col.get(ident)
        others = np.delete(row, j) if j is not None else row
        nm_top[i] = float(others.max()) if others.size else np.nan
    chance, verdict = hit_chances(mated)
    return Searches(
        mated_identity=list(mated_identity),
        mate_rank=rank,
        mate_score=mate,
        mated_ftd=~mated.found,
        mated_fte=fte & mated.found,
        mated_acceptable=mated.acceptable.copy(),
        loo_top=loo,
        nonmated_identity=list(nonmated_identity),
        nonmated_top=nm_top,
        nonmated_ftd=~nonmated.found,
        gallery_templates=len(enrolled),
        gallery_identities=len(names),
        mated_hit_chance=chance,
        mated_verdict=verdict,
        mated_features=mated.features,
    )


def hit_chances(
    es: EmbeddingSet, model: HitChanceModel | None = None
) -> tuple[NDArray[np.float64], list[str]]:
    """The probe quality model's chance and verdict for each image of ``es`` (the shipped
    model for ``es``'s recogniser unless one is given; NaN and "" where none applies)."""
    m = es.model
    hm = model or model_for(m.backend, m.name, m.version)
    n = len(es.paths)
    chance = np.full(n, np.nan)
    verdict = [""] * n
    if hm is None or es.features is None:
        return chance, verdict
    for i in range(n):
        x = es.features[i]
        if es.found[i] and not np.isnan(x).any():
            chance[i] = hm.chance(x)
            verdict[i] = hm.verdict(float(chance[i]))
    return chance, verdict


def evaluate_searches(
    s: Searches,
    *,
    augmented: bool = True,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    n_boot: int = 1000,
    seed: int = 0,
) -> IdentificationResult:
    """Metrics of one run; ``augmented`` adds the leave-one-identity-out non-mated samples.

    Only the protocol's non-mated probes are flagged as failures to detect on the non-mated
    side: a mated probe without a face is already counted once (its leave-one-out sample is
    simply an empty candidate list), so ``failure_to_detect`` counts probe images.
    """
    nm = s.augmented_top if augmented else s.nonmated_top
    ftd_nm = np.concatenate([s.nonmated_ftd, np.zeros(s.loo_top.size, dtype=bool)])
    return evaluate_identification(
        s.mate_rank,
        s.mate_score,
        nm,
        fpirs=fpirs,
        mated_failure_to_detect=s.mated_ftd,
        mated_failure_to_enrol=s.mated_fte,
        nonmated_failure_to_detect=ftd_nm if augmented else s.nonmated_ftd,
        gallery_size=s.gallery_templates,
        n_boot=n_boot,
        seed=seed,
    )


def quality_vs_miss(s: Searches, threshold: float | None) -> dict[str, Any]:
    """How well the probe quality verdict predicts a miss, over mated probes with a face and
    an enrolled mate: the share of misses flagged low quality (want high) and the share of
    hits flagged (want low), for rank-1 misses and for misses at the operating threshold."""
    usable = ~s.mated_ftd & ~s.mated_fte
    flagged = ~s.mated_acceptable & usable
    out: dict[str, Any] = {
        "searches": int(usable.sum()),
        "flagged_low_quality": int(flagged.sum()),
        "definition": "mated probes with a detected face and an enrolled mate; flagged = "
        "quality verdict not acceptable",
    }
    with np.errstate(invalid="ignore"):
        hits = {"rank1": (s.mate_rank == 1) & usable}
        if threshold is not None:
            hits[f"fpir_{rate_key(OPERATING_FPIR)}"] = hits["rank1"] & (s.mate_score >= threshold)
    for name, hit in hits.items():
        miss = usable & ~hit
        n_miss, n_hit = int(miss.sum()), int(hit.sum())
        out[name] = {
            "misses": n_miss,
            "misses_flagged": int((miss & flagged).sum()),
            "share_of_misses_flagged": _share(int((miss & flagged).sum()), n_miss),
            "hits": n_hit,
            "hits_flagged": int((hit & flagged).sum()),
            "share_of_hits_flagged": _share(int((hit & flagged).sum()), n_hit),
        }
    poor = np.array([v == "poor" for v in s.mated_verdict], dtype=bool)
    if poor.size == usable.size and any(s.mated_verdict):
        # the calibrated verdict (probe quality model): the same shares for "poor"
        hit = hits["rank1"]
        miss = usable & ~hit
        poor &= usable
        n_miss, n_hit = int(miss.sum()), int(hit.sum())
        with np.errstate(invalid="ignore"):
            mean_chance = float(np.nanmean(s.mated_hit_chance[usable])) if usable.any() else None
        out["verdict_poor"] = {
            "definition": "probe quality model's verdict 'poor' (chance of finding the mate "
            "below its cut-off)",
            "flagged": int(poor.sum()),
            "misses": n_miss,
            "misses_flagged": int((miss & poor).sum()),
            "share_of_misses_flagged": _share(int((miss & poor).sum()), n_miss),
            "hits": n_hit,
            "hits_flagged": int((hit & poor).sum()),
            "share_of_hits_flagged": _share(int((hit & poor).sum()), n_hit),
            "mean_predicted_chance": mean_chance,
            "observed_rank1": _share(n_hit, int(usable.sum())),
        }
    return out


def quality_samples(report: IdentifyReport) -> QualitySamples:
    """The probe quality model's training rows from an identification run: every mated
    search with a face, an enrolled mate and measured features, clean and degraded."""
    feats: list[NDArray[np.float32]] = []
    hits: list[NDArray[np.bool_]] = []
    ids: list[str] = []
    widths: list[NDArray[np.int64]] = []
    runs = [(0, report.searches)] + [(p.face_width, p.searches) for p in report.degrade]
    for width, s in runs:
        if s.mated_features is None:
            continue
        usable = ~s.mated_ftd & ~s.mated_fte & ~np.isnan(s.mated_features).any(axis=1)
        idx = np.flatnonzero(usable)
        feats.append(s.mated_features[idx])
        hits.append(s.mate_rank[idx] == 1)
        ids.extend(s.mated_identity[i] for i in idx)
        widths.append(np.full(idx.size, width, dtype=np.int64))
    if not feats:
        raise InvalidInputError("this run measured no probe quality features")
    return QualitySamples(
        features=np.concatenate(feats).astype(np.float32),
        hit=np.concatenate(hits),
        identity=ids,
        face_width=np.concatenate(widths),
    )


def _share(a: int, b: int) -> float | None:
    return a / b if b else None


# --------------------------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------------------------


@dataclass
class DegradePoint:
    face_width: int
    result: IdentificationResult
    searches: Searches
    failure_to_detect_mated: int
    failure_to_detect_nonmated: int
    #: per attribute, the groups' rates on these probes at the *clean* run's operating
    #: threshold (the one deployed), as :func:`demographics` gives them; empty without labels
    demographics: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        r = self.result.to_dict()
        op = r["fnir_at_fpir"].get(rate_key(OPERATING_FPIR), {})
        out: dict[str, Any] = {
            "face_width_px": self.face_width,
            "rank1": r["rank1"],
            "rank1_ci": r["intervals"].get("rank1"),
            "rank5": r["rank5"],
            "fnir_at_fpir_0.01": op,
            "n_mated": r["n_mated"],
            "n_nonmated": r["n_nonmated"],
            "failure_to_detect": {
                "mated": self.failure_to_detect_mated,
                "nonmated": self.failure_to_detect_nonmated,
                "total": self.failure_to_detect_mated + self.failure_to_detect_nonmated,
            },
            "quality_vs_miss": quality_vs_miss(self.searches, op.get("threshold")),
        }
        if self.demographics:
            out["demographics"] = self.demographics
        return out


@dataclass
class IdentifyReport:
    protocol: Protocol
    model: dict[str, Any]
    result: IdentificationResult
    plain: IdentificationResult
    searches: Searches
    failures: dict[str, Any]
    timing: dict[str, float]
    median_face_width: float | None
    degrade: list[DegradePoint] = field(default_factory=list)
    demographics: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def operating_threshold(self) -> float | None:
        p = self.result.fnir_at_fpir.get(rate_key(OPERATING_FPIR))
        return None if p is None or not math.isfinite(p.threshold) else p.threshold

    def nonmated_counts(self) -> dict[str, Any]:
        return {
            "protocol": int(self.searches.nonmated_top.size),
            "leave_one_identity_out": int(self.searches.loo_top.size),
            "augmented": int(self.searches.augmented_top.size),
            "used_for_fpir_figures": int(self.result.n_nonmated),
            "set_used": NONMATED_SET,
        }

    def robustness(self) -> dict[str, Any] | None:
        """Rank-1 against face width for the report figure (the undegraded run at the probes'
        median detected face width, then each degraded width)."""
        if not self.degrade:
            return None
        widths, rates, cis = [], [], []
        if self.median_face_width:
            widths.append(round(self.median_face_width))
            rates.append(self.result.rank1)
            cis.append(list(self.result.intervals.get("rank1", (math.nan, math.nan))))
        for p in self.degrade:
            widths.append(p.face_width)
            rates.append(p.result.rank1)
            cis.append(list(p.result.intervals.get("rank1", (math.nan, math.nan))))
        return {"face_width_px": widths, "rank1": rates, "ci": cis}

    def to_dict(self) -> dict[str, Any]:
        data = self.result.to_dict()
        for k, point in data["fnir_at_fpir"].items():
            point["nonmated_set"] = NONMATED_SET
            point["n_nonmated"] = self.result.n_nonmated
            plain_point = self.plain.fnir_at_fpir[k]
            point["protocol_only"] = {
                "fnir": plain_point.to_dict()["fnir"],
                "threshold": plain_point.to_dict()["threshold"],
                "n_nonmated": self.plain.n_nonmated,
                "insufficient_samples": plain_point.insufficient_samples,
            }
        plain = self.plain.to_dict()
        for key in ("det", "score_histogram", "cmc"):
            plain.pop(key, None)
        out: dict[str, Any] = {
            **data,
            "nonmated": self.nonmated_counts(),
            "plain_protocol": plain,
            "operating_point": {
                "target_fpir": OPERATING_FPIR,
                "threshold": self.operating_threshold,
            },
            "failures": self.failures,
            "quality_vs_miss": quality_vs_miss(self.searches, self.operating_threshold),
            "dataset": self.protocol.describe(),
            "model": self.model,
            "timing_seconds": self.timing,
            "notes": self.notes,
        }
        if self.degrade:
            out["degrade"] = {
                "transform": "shrink so the detected face box is F px wide (area averaging), "
                "Gaussian blur, JPEG, scale back up to the original size; probes only "
                "(mated and non-mated), gallery untouched",
                "spec": {
                    "sigma": DegradeSpec(1).sigma,
                    "jpeg_quality": DegradeSpec(1).jpeg_quality,
                },
                "undegraded_median_face_width_px": self.median_face_width,
                "points": [p.to_dict() for p in self.degrade],
            }
        if self.demographics:
            out["demographics"] = self.demographics
        return out


def _failures(
    protocol: Protocol, g: EmbeddingSet, m: EmbeddingSet, n: EmbeddingSet
) -> dict[str, Any]:
    def listed(es: EmbeddingSet) -> list[str]:
        return [p.as_posix() for p, ok in zip(_rels(protocol, es), es.found, strict=True) if not ok]

    fte, ftd_m, ftd_n = listed(g), listed(m), listed(n)
    errors = {str(es.paths[i]): msg for es in (g, m, n) for i, msg in es.errors.items()}
    return {
        "failure_to_enrol": len(fte),
        "failure_to_enrol_images": fte,
        "failure_to_detect_mated": len(ftd_m),
        "failure_to_detect_nonmated": len(ftd_n),
        "failure_to_detect_images": ftd_m + ftd_n,
        "unreadable_images": errors,
        "images_with_several_faces": int(sum(int((es.n_faces > 1).sum()) for es in (g, m, n))),
    }


def _rels(protocol: Protocol, es: EmbeddingSet) -> list[Path]:
    rel = {e.path: e.rel for e in protocol.entries}
    return [Path(rel.get(p, str(p))) for p in es.paths]


def _protocol_searches(
    ev: Evaluator, protocol: Protocol
) -> tuple[Searches, tuple[EmbeddingSet, EmbeddingSet, EmbeddingSet]]:
    gal, mat, non = protocol.role("gallery"), protocol.role("mated"), protocol.role("nonmated")
    if not gal or not mat:
        raise InvalidInputError(
            "the protocol needs gallery images and mated searches (identities with 2+ images)"
        )
    g = ev.embed([e.path for e in gal], "Embedding gallery")
    # probes are analysed as a search analyses them (arcface: test-time flip), the gallery as
    # enrolment does
    m = ev.embed([e.path for e in mat], "Embedding mated probes", probe=True)
    n = ev.embed([e.path for e in non], "Embedding non-mated probes", probe=True)
    if not non and m.found.sum() == 0:
        raise InvalidInputError("no non-mated searches and no mated probe with a face")
    searches = run_searches(
        [e.identity for e in gal],
        g,
        [e.identity for e in mat],
        m,
        [e.identity for e in non],
        n,
    )
    return searches, (g, m, n)


def searches_for(ev: Evaluator, protocol: Protocol) -> Searches:
    """Every search of ``protocol`` with ``ev``'s pipeline (no metrics: for calibration)."""
    return _protocol_searches(ev, protocol)[0]


def identify(
    ev: Evaluator,
    protocol: Protocol,
    *,
    degrade_widths: Sequence[int] = (),
    attributes: Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_group_searches: int = 100,
) -> IdentifyReport:
    """Open-set 1:N evaluation of ``ev``'s pipeline on ``protocol`` (see the module doc)."""
    t0 = time.perf_counter()
    gal, mat, non = protocol.role("gallery"), protocol.role("mated"), protocol.role("nonmated")
    searches, (g, m, n) = _protocol_searches(ev, protocol)
    t_embed = time.perf_counter() - t0
    result = evaluate_searches(searches, n_boot=n_boot, seed=seed)
    plain = (
        evaluate_searches(searches, augmented=False, n_boot=n_boot, seed=seed) if non else result
    )
    widths = np.concatenate([m.face_widths[m.found], n.face_widths[n.found]])
    report = IdentifyReport(
        protocol=protocol,
        model=ev.describe(),
        result=result,
        plain=plain,
        searches=searches,
        failures=_failures(protocol, g, m, n),
        timing={},
        median_face_width=float(np.median(widths)) if widths.size else None,
        notes=[
            f"FPIR figures use {result.n_nonmated:,} non-mated searches: the protocol's "
            f"{searches.nonmated_top.size:,} plus {searches.loo_top.size:,} leave-one-identity-"
            "out searches (each mated probe against the gallery without its own identity). "
            "Protocol-only figures are reported beside them ('plain_protocol' in JSON).",
            *protocol.notes,
        ],
    )
    if not non:
        report.notes.append("the protocol has no non-mated searches: leave-one-out only")
    for width in degrade_widths:
        spec = DegradeSpec(int(width))
        dm = ev.embed(
            [e.path for e in mat],
            f"Mated probes at {width} px",
            degrade=spec,
            boxes=_boxes(m),
            probe=True,
        )
        dn = ev.embed(
            [e.path for e in non],
            f"Non-mated probes at {width} px",
            degrade=spec,
            boxes=_boxes(n),
            probe=True,
        )
        ds = run_searches(
            [e.identity for e in gal],
            g,
            [e.identity for e in mat],
            dm,
            [e.identity for e in non],
            dn,
        )
        report.degrade.append(
            DegradePoint(
                face_width=int(width),
                result=evaluate_searches(ds, n_boot=n_boot, seed=seed),
                searches=ds,
                failure_to_detect_mated=int((~dm.found).sum()),
                failure_to_detect_nonmated=int((~dn.found).sum()),
            )
        )
    if attributes is not None:
        labels = attributes

        def groups(s: Searches) -> dict[str, dict[str, Any]]:
            # degraded probes are read against the clean run's threshold: the deployed one
            return demographics(
                s,
                labels,
                report.operating_threshold,
                min_searches=min_group_searches,
                n_boot=n_boot,
                seed=seed,
                det_points=DET_POINTS,
            )

        report.demographics = groups(searches)
        for point in report.degrade:
            point.demographics = groups(point.searches)
    report.timing = {
        "embedding_clean": round(t_embed, 1),
        "total": round(time.perf_counter() - t0, 1),
    }
    return report


def _boxes(es: EmbeddingSet) -> list[tuple[float, float, float, float] | None]:
    return [
        (float(b[0]), float(b[1]), float(b[2]), float(b[3])) if ok else None
        for b, ok in zip(es.boxes, es.found, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Demographic differentials
# --------------------------------------------------------------------------------------------


def read_attributes(path: Path) -> dict[str, dict[str, str]]:
    """``{column: {identity: value}}`` from a CSV with an ``identity`` column."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            if "identity" not in fields:
                raise InvalidInputError(f"{path}: the attributes CSV needs an 'identity' column")
            columns = [c for c in fields if c != "identity"]
            if not columns:
                raise InvalidInputError(f"{path}: no attribute columns besides 'identity'")
            out: dict[str, dict[str, str]] = {c: {} for c in columns}
            for row in reader:
                for c in columns:
                    value = (row.get(c) or "").strip()
                    if value:
                        out[c][row["identity"].strip()] = value
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from None
    return out


def demographics(
    s: Searches,
    attributes: Path,
    threshold: float | None,
    *,
    min_searches: int = 100,
    n_boot: int = 1000,
    seed: int = 0,
    det_points: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per attribute column: FNIR/FPIR per group at the one operating threshold (FPIR 1%),
    with the plain-language summary (and each group's DET curve with ``det_points``).
    Identities with no label in the CSV form the group ``unlabelled``, counted and shown but
    never compared (issue #17); groups with fewer than ``min_searches`` searches of a kind are
    flagged."""
    if threshold is None:
        raise InvalidInputError("no operating threshold (FPIR 1%) to compare groups at")
    out: dict[str, dict[str, Any]] = {}
    for column, values in read_attributes(attributes).items():
        mated_groups = [values.get(i, UNLABELLED) for i in s.mated_identity]
        nonmated_groups = [values.get(i, UNLABELLED) for i in s.augmented_identity]
        result = by_group(
            s.mate_rank,
            np.where(s.mated_ftd | s.mated_fte, np.nan, s.mate_score),
            mated_groups,
            s.augmented_top,
            nonmated_groups,
            threshold,
            min_searches=min_searches,
            n_boot=n_boot,
            seed=seed,
            det_points=det_points,
        )
        out[column] = {
            "result": result.to_dict(),
            "summary": plain_language_summary(result),
            "insufficient_groups": [
                g for g, m in result.groups.items() if m.insufficient_samples and g != UNLABELLED
            ],
        }
    return out


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    model_key: str
    threshold: float
    target_fpir: float
    achieved_fpir: float
    fnir: float
    n_mated: int
    n_nonmated: int
    dataset_hash: str
    dataset: str
    #: How the threshold was chosen: ``{"rule": "overall"}`` (FPIR over all non-mated searches)
    #: or the worst-group rule with each group's own threshold (see :func:`worst_group_rule`).
    rule: dict[str, Any] = field(default_factory=lambda: {"rule": "overall"})

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_key": self.model_key,
            "threshold": self.threshold,
            "target_fpir": self.target_fpir,
            "achieved_fpir": self.achieved_fpir,
            "fnir": self.fnir,
            "n_mated": self.n_mated,
            "n_nonmated": self.n_nonmated,
            "dataset_hash": self.dataset_hash,
            "dataset": self.dataset,
            "nonmated_set": NONMATED_SET,
            "rule": self.rule,
        }


def worst_group_rule(
    nonmated_top: NDArray[np.float64],
    nonmated_identity: Sequence[str],
    attributes: Mapping[str, Mapping[str, str]],
    target_fpir: float,
) -> dict[str, Any]:
    """The threshold at which *every* labelled group's FPIR meets ``target_fpir``.

    Each group (per attribute column) gets its own lowest threshold for the target; the rule's
    threshold is the highest of them (and of the overall one), so the worst group's false
    positive rate is within the target, not only the average (issue #17). A group with too few
    non-mated searches to demonstrate the target (rule of three) cannot constrain it and is
    listed as such; identities with no label are not a group (they count in the overall rate).
    The labels are read here, at calibration, never at search time: the result is one global
    threshold for everybody.
    """
    needed = samples_needed(target_fpir)
    overall = fpir_threshold(nonmated_top, target_fpir)
    best: tuple[float, str | None, str | None] = (overall, None, None)
    columns: dict[str, Any] = {}
    for column, values in attributes.items():
        labels = np.array([values.get(i, UNLABELLED) for i in nonmated_identity], dtype=object)
        groups: dict[str, Any] = {}
        for name in sorted(set(labels.tolist()) - {UNLABELLED}):
            scores = nonmated_top[labels == name]
            if scores.size < needed:
                groups[name] = {"n_nonmated": int(scores.size), "insufficient_samples": True}
                continue
            t = fpir_threshold(scores, target_fpir)
            groups[name] = {
                "n_nonmated": int(scores.size),
                "threshold": float(t),
                "insufficient_samples": False,
            }
            if t > best[0]:
                best = (float(t), column, name)
        columns[column] = groups
    return {
        "rule": "worst_group",
        "overall_threshold": float(overall),
        "threshold": best[0],
        "worst_attribute": best[1],
        "worst_group": best[2],
        "groups": columns,
        "min_nonmated_per_group": needed,
    }


def calibrate(
    s: Searches,
    protocol: Protocol,
    model_key: str,
    target_fpir: float,
    *,
    worst_group_attributes: Path | None = None,
) -> Calibration:
    """The lowest threshold whose FPIR on the (augmented) non-mated searches is within the
    target, and the rank-1 FNIR there. Refuses when there are too few non-mated searches to
    demonstrate the target (rule of three): such a threshold would be a guess.

    With ``worst_group_attributes`` (an attributes CSV) the threshold is the lowest at which
    every labelled group's FPIR meets the target (:func:`worst_group_rule`)."""
    if not 0 < target_fpir < 1:
        raise InvalidInputError("the target FPIR must be between 0 and 1")
    nm = s.augmented_top
    needed = samples_needed(target_fpir)
    if nm.size < needed:
        raise InvalidInputError(
            f"{nm.size} non-mated searches cannot demonstrate FPIR {target_fpir:g}: "
            f"at least {needed} are needed (rule of three); use a larger dataset"
        )
    t = fpir_threshold(nm, target_fpir)
    rule: dict[str, Any] = {"rule": "overall"}
    if worst_group_attributes is not None:
        rule = worst_group_rule(
            nm, s.augmented_identity, read_attributes(worst_group_attributes), target_fpir
        )
        rule["attributes_file"] = worst_group_attributes.name
        t = rule["threshold"]
    score = np.where(s.mated_ftd | s.mated_fte, np.nan, s.mate_score)
    rank = np.where(s.mated_ftd | s.mated_fte, 0, s.mate_rank)
    return Calibration(
        model_key=model_key,
        threshold=float(t),
        target_fpir=target_fpir,
        achieved_fpir=fpir_at_threshold(nm, t),
        fnir=fnir_at_threshold(rank, score, t),
        n_mated=int(s.mate_rank.size),
        n_nonmated=int(nm.size),
        dataset_hash=protocol.dataset_hash(),
        dataset=str(protocol.dataset),
        rule=rule,
    )


#: The FPIR points recorded with every calibration besides its target (where the sample allows).
CALIBRATION_POINTS = (0.01, 0.001)


def calibration_evaluation(
    s: Searches,
    protocol: Protocol,
    cal: Calibration,
    attributes: Path | None = None,
    *,
    min_searches: int = 100,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """What is stored with a threshold besides its value: the threshold at each FPIR point of
    :data:`CALIBRATION_POINTS` (or why the sample cannot show it) and, with ``attributes``,
    FNIR/FPIR per group at ``cal.threshold`` with intervals and ratios. The DPIA report shows
    these figures for the live threshold, so they are those of this run, not recomputed."""
    points: dict[str, Any] = {}
    for target in CALIBRATION_POINTS:
        try:
            c = calibrate(s, protocol, cal.model_key, target)
        except InvalidInputError as exc:
            points[rate_key(target)] = {"insufficient_samples": True, "why": str(exc)}
            continue
        points[rate_key(target)] = {
            "threshold": c.threshold,
            "achieved_fpir": c.achieved_fpir,
            "fnir": c.fnir,
            "insufficient_samples": False,
        }
    out: dict[str, Any] = {
        "rule": cal.rule,
        "points": points,
        "nonmated_set": NONMATED_SET,
        "protocol": protocol.describe(),
    }
    if attributes is not None:
        out["attributes_file"] = attributes.name
        out["demographics"] = demographics(
            s, attributes, cal.threshold, min_searches=min_searches, n_boot=n_boot
        )
    return out


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    mode: str  # "pairs" or "all-pairs"
    result: VerificationResult
    source: dict[str, Any]
    model: dict[str, Any]
    failures: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = self.result.to_dict()
        kf = data.get("kfold")
        return {
            "mode": self.mode,
            **data,
            "accuracy": kf["mean"] if kf else None,
            "dataset": self.source,
            "model": self.model,
            "failures": self.failures,
            "notes": self.notes,
        }


def _pair_failures(es: EmbeddingSet) -> dict[str, Any]:
    missing = [str(p) for p, ok in zip(es.paths, es.found, strict=True) if not ok]
    return {
        "images": len(es.paths),
        "failure_to_detect": len(missing),
        "failure_to_detect_images": missing,
    }


def verify_pairs(
    ev: Evaluator, pairs: PairList, *, n_boot: int = 1000, seed: int = 0
) -> VerifyReport:
    """LFW-style pair verification: 10-fold accuracy (threshold chosen on the other folds),
    ROC, TAR at FAR 1e-2/1e-3/1e-4 and EER. A pair with an undetected image scores NaN, i.e.
    it is rejected whatever the threshold (a wrong decision for a same-person pair)."""
    kinds = {same for *_, same in pairs.pairs}
    if kinds != {True, False}:
        raise InvalidInputError(
            f"{pairs.source}: the selected pairs are all "
            f"{'same-person' if True in kinds else 'different-person'} pairs; "
            "verification needs both (a --limit may have left out one kind)"
        )
    es = ev.embed(pairs.paths, "Embedding pair images")
    a = np.array([p[0] for p in pairs.pairs])
    b = np.array([p[1] for p in pairs.pairs])
    same = np.array([p[2] for p in pairs.pairs], dtype=bool)
    ok = es.found[a] & es.found[b]
    scores = np.where(ok, np.einsum("ij,ij->i", es.embeddings[a], es.embeddings[b]), np.nan)
    kf = kfold_accuracy(scores, same, folds=np.asarray(pairs.folds))
    result = evaluate_verification(
        scores[same], scores[~same], fars=VERIFY_FARS, kfold=kf, n_boot=n_boot, seed=seed
    )
    failures = _pair_failures(es) | {"pairs_with_failed_image": int((~ok).sum())}
    return VerifyReport("pairs", result, pairs.describe(), ev.describe(), failures)


def verify_all_pairs(
    ev: Evaluator,
    dataset: Path,
    *,
    limit: int | None = None,
    max_impostors: int = 1_000_000,
    n_boot: int = 200,
    seed: int = 0,
) -> VerifyReport:
    """Every same-identity pair genuine, every other pair impostor (LFW: ~240k and ~19M).

    Scores come from blocked matrix products. When there are more than ``max_impostors``
    impostor pairs a seeded uniform sample of about that many is kept (the bootstrap re-sorts
    the impostor scores per replicate; a million still resolves FAR 1e-4 with ~100 pairs
    above the threshold). Pairs share images, so intervals from resampling pairs are narrower
    than the truth; read them as a lower bound on the uncertainty.
    """
    paths, labels = folder_images(dataset, limit)
    if len(paths) < 2:
        raise InvalidInputError(f"{dataset} has fewer than two images")
    es = ev.embed(paths, "Embedding images")
    ids = np.unique(np.array(labels), return_inverse=True)[1]
    n = len(paths)
    counts = np.bincount(ids)
    n_genuine = int((counts * (counts - 1) // 2).sum())
    n_impostor = n * (n - 1) // 2 - n_genuine
    if n_genuine == 0 or n_impostor == 0:
        raise InvalidInputError("all-pairs verification needs 2+ images of some identities")
    keep_p = min(1.0, max_impostors / n_impostor) if max_impostors > 0 else 1.0
    rng = np.random.default_rng(seed)
    e = np.where(es.found[:, None], es.embeddings, 0.0).astype(np.float32)
    cols = np.arange(n)
    gen_parts, imp_parts = [], []
    for start in range(0, n, 512):
        rows = np.arange(start, min(n, start + 512))
        sims = (e[rows] @ e.T).astype(np.float32)
        both = es.found[rows][:, None] & es.found[None, :]
        sims = np.where(both, sims, np.nan)
        upper = cols[None, :] > rows[:, None]
        same = ids[rows][:, None] == ids[None, :]
        gen_parts.append(sims[upper & same])
        imp = sims[upper & ~same]
        if keep_p < 1.0:
            imp = imp[rng.random(imp.size) < keep_p]
        imp_parts.append(imp)
    genuine = np.concatenate(gen_parts)
    impostor = np.concatenate(imp_parts)
    result = evaluate_verification(genuine, impostor, fars=VERIFY_FARS, n_boot=n_boot, seed=seed)
    notes = [
        "All pairs of the folder: pairs share images, so the bootstrap intervals (which resample "
        "pairs as if independent) understate the uncertainty."
    ]
    if keep_p < 1.0:
        notes.append(
            f"Impostor pairs: a uniform random sample ({impostor.size:,} of {n_impostor:,}, "
            f"seed {seed}) of all different-identity pairs."
        )
    source = {
        "path": str(dataset),
        "limit_identities": limit,
        "images": n,
        "identities": int(counts.size),
        "genuine_pairs": n_genuine,
        "impostor_pairs_total": n_impostor,
        "impostor_pairs_used": int(impostor.size),
        "impostor_sampled": keep_p < 1.0,
    }
    return VerifyReport("all-pairs", result, source, ev.describe(), _pair_failures(es), notes)
