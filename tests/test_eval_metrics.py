"""Hand-computed checks of the evaluation metrics.

Every expected number below was worked out on paper from the definitions in
``retroface.eval.metrics`` (comments show the working), not by running the code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from retroface.eval.metrics import (
    bootstrap_ci,
    by_group,
    cmc,
    det_curve,
    eer,
    evaluate_identification,
    evaluate_verification,
    fnir_at_fpir,
    fnir_at_threshold,
    format_percent,
    fpir_at_threshold,
    fpir_threshold,
    kfold_accuracy,
    plain_language_summary,
    rate_key,
    roc,
    samples_needed,
    tar_at_far,
)

NAN = math.nan


def up(x: float) -> float:
    """One ulp above ``x``: where thresholds land when ``x`` must be excluded."""
    return float(np.nextafter(x, np.inf))


# Five mated searches: ranks [1, 1, 2, miss, 1]; the mate at rank 2 has score 0.7.
RANKS = [1, 1, 2, 0, 1]
SCORES = [0.95, 0.6, 0.7, NAN, 0.4]
# Four non-mated searches, top-1 scores; sorted descending: 0.9, 0.5, 0.3, 0.2.
NONMATED = [0.2, 0.5, 0.3, 0.9]


# ---------------------------------------------------------------------------- CMC and ranks


def test_cmc_counts_misses_in_denominator() -> None:
    # rank<=1: 3 of 5, rank<=2: 4 of 5, rank<=3: still 4 of 5
    assert cmc(RANKS, 3) == pytest.approx([0.6, 0.8, 0.8])


def test_cmc_accepts_every_spelling_of_a_miss() -> None:
    # 0 hits at ranks None, -1, NaN; hits at 1, 2, 3 -> [1/6, 2/6, 3/6]
    assert cmc([1, None, -1, NAN, 3, 2], 3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])


def test_cmc_empty_is_nan_and_bad_ranks_raise() -> None:
    assert np.isnan(cmc([], 2)).all()
    with pytest.raises(ValueError):
        cmc([1.5], 2)
    with pytest.raises(ValueError):
        cmc([1], 0)


# ---------------------------------------------------------------------------- FPIR thresholds


def test_fpir_threshold_steps_above_the_excluded_score() -> None:
    # n = 4. target 0.25 -> 1 exceedance allowed -> exclude 0.5 and below: t = 0.5 + ulp
    assert fpir_threshold(NONMATED, 0.25) == up(0.5)
    # target 0.5 -> 2 allowed (0.9, 0.5) -> t = 0.3 + ulp
    assert fpir_threshold(NONMATED, 0.5) == up(0.3)
    # target 0.1 -> floor(0.4) = 0 allowed -> t = 0.9 + ulp; target 0 the same
    assert fpir_threshold(NONMATED, 0.1) == up(0.9)
    assert fpir_threshold(NONMATED, 0.0) == up(0.9)
    # target 0.75 -> 3 allowed -> t = 0.2 + ulp
    assert fpir_threshold(NONMATED, 0.75) == up(0.2)
    # target 1 -> all may exceed -> the lowest score itself
    assert fpir_threshold(NONMATED, 1.0) == 0.2


def test_fpir_threshold_achieved_rates() -> None:
    assert fpir_at_threshold(NONMATED, up(0.5)) == 0.25
    assert fpir_at_threshold(NONMATED, up(0.3)) == 0.5
    assert fpir_at_threshold(NONMATED, up(0.9)) == 0.0
    assert fpir_at_threshold(NONMATED, 0.2) == 1.0
    # ">=": a score equal to the threshold counts
    assert fpir_at_threshold(NONMATED, 0.5) == 0.5


def test_fpir_threshold_ties_are_excluded_together() -> None:
    tied = [0.5, 0.5, 0.5, 0.1]
    # target 0.5 -> 2 allowed, but the 3rd largest is tied with the top two: all go, FPIR 0
    assert fpir_threshold(tied, 0.5) == up(0.5)
    assert fpir_at_threshold(tied, up(0.5)) == 0.0
    # target 0.75 -> 3 allowed -> exclude 0.1 only
    assert fpir_threshold(tied, 0.75) == up(0.1)
    assert fpir_at_threshold(tied, up(0.1)) == 0.75


def test_fpir_threshold_searches_without_candidates_stay_in_denominator() -> None:
    scores = [0.2, NAN, 0.9, -math.inf]  # n = 4, only two finite
    # target 0.25 -> 1 allowed -> exclude 0.2 -> t = 0.2 + ulp, FPIR 1/4
    assert fpir_threshold(scores, 0.25) == up(0.2)
    assert fpir_at_threshold(scores, up(0.2)) == 0.25
    # target 0.5 -> 2 allowed >= 2 finite -> lowest finite score, FPIR 2/4
    assert fpir_threshold(scores, 0.5) == 0.2
    assert fpir_at_threshold(scores, 0.2) == 0.5
    # no candidates at all -> any threshold works
    assert fpir_threshold([NAN, NAN], 0.0) == -math.inf


def test_fpir_threshold_validates() -> None:
    with pytest.raises(ValueError):
        fpir_threshold(NONMATED, 1.5)
    with pytest.raises(ValueError):
        fpir_threshold([], 0.1)


# ---------------------------------------------------------------------------- FNIR


def test_fnir_at_threshold_rank_one() -> None:
    # t = 0.5+ulp, R = 1: hits 0.95 and 0.6 (rank 1); 0.4 too low, rank-2 and miss fail -> 3/5
    assert fnir_at_threshold(RANKS, SCORES, up(0.5)) == pytest.approx(0.6)
    # R = 2 adds the rank-2 mate with 0.7 -> 2/5
    assert fnir_at_threshold(RANKS, SCORES, up(0.5), max_rank=2) == pytest.approx(0.4)
    # t = 0.3+ulp: 0.95, 0.6, 0.4 hit -> 2/5
    assert fnir_at_threshold(RANKS, SCORES, up(0.3)) == pytest.approx(0.4)
    # t = 0.9+ulp: only 0.95 -> 4/5
    assert fnir_at_threshold(RANKS, SCORES, up(0.9)) == pytest.approx(0.8)


def test_fnir_tie_with_threshold_is_a_miss() -> None:
    # mate score exactly 0.5 and the threshold excludes non-mated 0.5 -> mate excluded too
    assert fnir_at_threshold([1, 1], [0.5, 0.95], up(0.5)) == 0.5
    assert fnir_at_threshold([1, 1], [0.5, 0.95], 0.5) == 0.0


def test_fnir_at_fpir_table() -> None:
    out = fnir_at_fpir(RANKS, SCORES, NONMATED, fpirs=(0.25, 0.5, 0.1, 1.0))
    assert list(out) == ["0.25", "0.5", "0.1", "1"]
    assert out["0.25"] == {"threshold": up(0.5), "fnir": pytest.approx(0.6), "fpir_achieved": 0.25}
    assert out["0.5"] == {"threshold": up(0.3), "fnir": pytest.approx(0.4), "fpir_achieved": 0.5}
    assert out["0.1"] == {"threshold": up(0.9), "fnir": pytest.approx(0.8), "fpir_achieved": 0.0}
    # t = 0.2: rank-1 hits 0.95, 0.6, 0.4 -> FNIR 2/5
    assert out["1"] == {"threshold": 0.2, "fnir": pytest.approx(0.4), "fpir_achieved": 1.0}


def test_rate_keys_and_rule_of_three() -> None:
    assert [rate_key(x) for x in (0.1, 0.01, 0.001, 0.0001)] == ["0.1", "0.01", "0.001", "0.0001"]
    assert samples_needed(0.001) == 3000
    assert samples_needed(0.01) == 300
    assert samples_needed(0.1) == 30
    assert samples_needed(0.25) == 12


# ---------------------------------------------------------------------------- DET


def test_det_curve_points() -> None:
    fpir, fnir, thresholds = det_curve(RANKS, SCORES, NONMATED)
    # thresholds: non-mated {0.2, 0.3, 0.5, 0.9} + rank-1 mates {0.4, 0.6, 0.95}
    # (the rank-2 mate's 0.7 cannot be a rank-1 hit, so it is no change point)
    assert thresholds.tolist() == [0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 0.95]
    assert fpir.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0])
    assert fnir.tolist() == pytest.approx([0.4, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8])


def test_det_curve_thinning_keeps_best_fnir_per_fpir() -> None:
    fpir, fnir, thresholds = det_curve(RANKS, SCORES, NONMATED, max_points=3)
    # FPIR 0.25 is reached at thresholds 0.6 (FNIR 0.6) and 0.9 (FNIR 0.8): keep 0.6
    assert thresholds.tolist() == [0.2, 0.6, 0.95]
    assert fpir.tolist() == pytest.approx([1.0, 0.25, 0.0])
    assert fnir.tolist() == pytest.approx([0.4, 0.6, 0.8])


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_constant_and_single_samples_are_degenerate() -> None:
    assert bootstrap_ci(np.mean, [0.5, 0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_ci(np.mean, [3.0]) == (3.0, 3.0)
    # two independent samples, each constant -> the difference never changes
    assert bootstrap_ci(lambda a, b: a.mean() - b.mean(), [1.0, 1.0], [0.0, 0.0, 0.0]) == (1.0, 1.0)


def test_bootstrap_two_point_sample() -> None:
    # Mean of 2 draws from {0, 1} is 0, 0.5 or 1 w.p. 1/4, 1/2, 1/4; of 1000 replicates
    # ~250 are 0 and ~250 are 1, far more than the 25 needed to pin both 2.5% tails.
    assert bootstrap_ci(np.mean, [0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_is_deterministic_per_seed() -> None:
    rng = np.random.default_rng(123)
    data = rng.normal(size=50)
    a = bootstrap_ci(np.mean, data, n_boot=200, seed=7)
    b = bootstrap_ci(np.mean, data, n_boot=200, seed=7)
    c = bootstrap_ci(np.mean, data, n_boot=200, seed=8)
    assert a == b
    assert a != c
    assert a[0] < data.mean() < a[1]


def test_bootstrap_keeps_rows_together() -> None:
    # rows (x, x): resampling rows must never pair different x's, so x - y is always 0
    paired = np.column_stack([np.arange(10.0), np.arange(10.0)])
    assert bootstrap_ci(lambda m: float(np.max(np.abs(m[:, 0] - m[:, 1]))), paired) == (0, 0)


# ---------------------------------------------------------------------------- full summaries


def test_evaluate_identification_summary() -> None:
    res = evaluate_identification(RANKS, SCORES, NONMATED, fpirs=(0.25, 0.5), n_boot=200)
    d = res.to_dict()
    assert (d["n_mated"], d["n_nonmated"]) == (5, 4)
    assert (d["failure_to_detect"], d["failure_to_enrol"]) == (0, 0)
    assert d["rank1"] == pytest.approx(0.6)
    assert d["rank5"] == pytest.approx(0.8)
    assert d["rank20"] == pytest.approx(0.8)
    assert len(d["cmc"]) == 20
    p = d["fnir_at_fpir"]["0.25"]
    assert p["threshold"] == up(0.5)
    assert p["fnir"] == pytest.approx(0.6)
    assert p["fpir_achieved"] == 0.25
    # rule of three: 3 / 0.25 = 12 non-mated searches needed, only 4 available
    assert p["insufficient_samples"] is True
    assert p["nonmated_needed"] == 12
    assert d["fnir_at_fpir"]["0.5"]["nonmated_needed"] == 6
    lo, hi = d["intervals"]["rank1"]
    assert 0.0 <= lo <= 0.6 <= hi <= 1.0
    assert d["det"]["threshold"] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 0.95]
    assert d["fnir_max_rank"] == 1


def test_evaluate_identification_failures_count_as_misses() -> None:
    res = evaluate_identification(
        RANKS,
        SCORES,
        NONMATED,
        fpirs=(0.25,),
        mated_failure_to_detect=[False, True, False, False, False],  # the 0.6 rank-1 hit
        mated_failure_to_enrol=[False, False, False, True, False],  # already a miss
        nonmated_failure_to_detect=[False, False, False, True],  # the 0.9 non-mated
        n_boot=50,
    )
    d = res.to_dict()
    assert (d["failure_to_detect"], d["failure_to_enrol"]) == (2, 1)
    assert (d["n_mated"], d["n_nonmated"]) == (5, 4)  # failures stay in the denominators
    assert d["rank1"] == pytest.approx(0.4)  # 0.95 and 0.4 left at rank 1
    # non-mated now [0.2, 0.5, 0.3, none]: 1 allowed -> exclude 0.3 -> t = 0.3 + ulp
    p = d["fnir_at_fpir"]["0.25"]
    assert p["threshold"] == up(0.3)
    assert p["fpir_achieved"] == 0.25
    assert p["fnir"] == pytest.approx(0.6)  # hits 0.95, 0.4 -> 2/5


def test_evaluate_identification_short_candidate_list() -> None:
    res = evaluate_identification(RANKS, SCORES, NONMATED, candidate_list_length=5, n_boot=20)
    d = res.to_dict()
    assert d["rank20"] is None
    assert "rank20" not in d["intervals"]
    assert len(d["cmc"]) == 5
    assert d["rank5"] == pytest.approx(0.8)


def test_identification_flags_fpir_0001_below_3000_nonmated() -> None:
    rng = np.random.default_rng(0)
    res = evaluate_identification(
        np.ones(50, dtype=int), rng.random(50), rng.random(2999), n_boot=20
    )
    flags = {k: v.insufficient_samples for k, v in res.fnir_at_fpir.items()}
    assert flags == {"0.1": False, "0.01": False, "0.001": True}
    assert res.fnir_at_fpir["0.001"].nonmated_needed == 3000


# ---------------------------------------------------------------------------- verification

GENUINE = [0.4, 0.6, 0.8, 0.9]
IMPOSTOR = [0.1, 0.3, 0.5, 0.7]


def test_roc_points() -> None:
    far, tar, thresholds = roc(GENUINE, IMPOSTOR)
    assert thresholds.tolist() == [math.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1]
    assert far.tolist() == [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0]
    assert tar.tolist() == [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0]


def test_tar_at_far_uses_impostor_threshold() -> None:
    # 1 impostor allowed -> exclude 0.5 -> t = 0.5+ulp; genuine 0.6, 0.8, 0.9 accepted
    assert tar_at_far(GENUINE, IMPOSTOR, 0.25) == {
        "threshold": up(0.5),
        "tar": 0.75,
        "far_achieved": 0.25,
    }
    # none allowed -> t = 0.7+ulp; genuine 0.8, 0.9
    assert tar_at_far(GENUINE, IMPOSTOR, 0.0)["tar"] == 0.5


def test_eer_separable_is_zero() -> None:
    assert eer([0.8, 0.9], [0.1, 0.2]) == 0.0


def test_eer_overlapping_exact_crossing() -> None:
    # t = 0.6: FAR = 1/4 (0.7), FRR = 1/4 (0.4) -> EER 0.25 exactly
    assert eer(GENUINE, IMPOSTOR) == pytest.approx(0.25)


def test_eer_interpolates_between_operating_points() -> None:
    # t = 0.55: FAR 1/2, FRR 1/3; t = 0.6: FAR 0, FRR 1/3. FRR - FAR goes -1/6 -> +1/3,
    # crossing a third of the way: FAR = 1/2 - (1/3)(1/2) = 1/3 = FRR.
    assert eer([0.5, 0.6, 0.9], [0.1, 0.55]) == pytest.approx(1 / 3)
    # a genuine/impostor tie at 0.5: (FAR, FRR) goes (1/2, 0) -> (0, 1/2), midpoint 1/4
    assert eer([0.5, 0.9], [0.1, 0.5]) == pytest.approx(0.25)


def test_kfold_accuracy_two_folds() -> None:
    scores = [0.9, 0.8, 0.3, 0.2, 0.7, 0.4, 0.6, 0.1]
    labels = [1, 1, 0, 0, 1, 1, 0, 0]
    # Fold A (first 4) is tested with a threshold from fold B: B sorted 0.1-, 0.4+, 0.6-, 0.7+;
    # accept >= 0.4 and accept >= 0.7 both give 3/4 -> tie goes to the stricter cut, threshold
    # midway (0.6 + 0.7) / 2 = 0.65 -> A is classified perfectly: 1.0.
    # Fold B: A separates at 0.55 = (0.3 + 0.8) / 2 -> on B: 0.7+ ok, 0.4+ missed, 0.6- false
    # accept, 0.1- ok -> 0.5.
    res = kfold_accuracy(scores, labels, folds=2)
    assert res.thresholds == pytest.approx((0.65, 0.55))
    assert res.fold_accuracies == (1.0, 0.5)
    assert res.mean == pytest.approx(0.75)
    # sample std of {1.0, 0.5}: sqrt(2 * 0.25^2 / 1) = 0.25 * sqrt(2); std err = that / sqrt(2)
    assert res.std == pytest.approx(0.25 * math.sqrt(2))
    assert res.std_err == pytest.approx(0.25)
    same = kfold_accuracy(scores, labels, folds=[0, 0, 0, 0, 1, 1, 1, 1])
    assert same == res
    assert res.to_dict()["n_folds"] == 2


def test_evaluate_verification_summary() -> None:
    res = evaluate_verification([*GENUINE, NAN], IMPOSTOR, fars=(0.25,), n_boot=100)
    d = res.to_dict()
    assert (d["n_genuine"], d["n_impostor"], d["failed_comparisons"]) == (5, 4, 1)
    # the NaN genuine is always rejected: TAR at 0.5+ulp is 3/5
    p = d["tar_at_far"]["0.25"]
    assert p["tar"] == pytest.approx(0.6)
    assert p["insufficient_samples"] is True
    assert p["impostor_needed"] == 12
    assert d["roc"]["far"][0] == 0.0
    assert d["kfold"] is None


# ---------------------------------------------------------------------------- demographics

# group a: mated scores 0.9 0.6 0.4 0.8 at rank 1 -> at t=0.5 one miss -> FNIR 1/4
#          non-mated 0.6 0.2 0.1 0.3 0.7 -> two >= 0.5 -> FPIR 2/5
# group b: mated (rank 1, 0.7) and a miss -> FNIR 1/2
#          non-mated 0.55 0.1 0.2 0.3 0.4 -> one >= 0.5 -> FPIR 1/5
G_RANKS = [1, 1, 1, 1, 1, 0]
G_SCORES = [0.9, 0.6, 0.4, 0.8, 0.7, NAN]
G_MATED = ["a", "a", "a", "a", "b", "b"]
G_NONMATED_SCORES = [0.6, 0.2, 0.1, 0.3, 0.7, 0.55, 0.1, 0.2, 0.3, 0.4]
G_NONMATED = ["a"] * 5 + ["b"] * 5


def test_by_group_rates_and_ratios() -> None:
    res = by_group(
        G_RANKS, G_SCORES, G_MATED, G_NONMATED_SCORES, G_NONMATED, 0.5, min_searches=1, n_boot=100
    )
    a, b = res.groups["a"], res.groups["b"]
    assert (a.n_mated, a.n_nonmated, b.n_mated, b.n_nonmated) == (4, 5, 2, 5)
    assert a.fnir == pytest.approx(0.25)
    assert a.fpir == pytest.approx(0.4)
    assert b.fnir == pytest.approx(0.5)
    assert b.fpir == pytest.approx(0.2)
    assert res.fpir_ratio == pytest.approx(2.0)
    assert (res.fpir_highest, res.fpir_lowest) == ("a", "b")
    assert res.fnir_ratio == pytest.approx(2.0)
    assert (res.fnir_highest, res.fnir_lowest) == ("b", "a")
    assert not a.insufficient_samples
    assert a.fpir_ci[0] <= 0.4 <= a.fpir_ci[1]
    text = plain_language_summary(res)
    assert text.startswith("At threshold 0.5, non-mated searches for a returned an innocent")
    assert "2 times as often as for b (FPIR 40.0% vs 20.0%)" in text
    assert "for b missed the true mate 2 times as often as for a" in text
    assert "(rank-1 FNIR 50.0% vs 25.0%)" in text
    assert plain_language_summary(res.to_dict()) == text


def test_by_group_small_groups_are_flagged_and_left_out() -> None:
    # min_searches=3: b has only 2 mated searches -> FNIR not comparable, FPIR still is
    res = by_group(
        G_RANKS, G_SCORES, G_MATED, G_NONMATED_SCORES, G_NONMATED, 0.5, min_searches=3, n_boot=50
    )
    assert res.groups["b"].fnir_insufficient and not res.groups["b"].fpir_insufficient
    assert res.fnir_ratio is None and res.fnir_highest is None
    assert res.fpir_ratio == pytest.approx(2.0)
    text = plain_language_summary(res)
    assert "Too few searches" in text and "b (2 mated, 5 non-mated; FNIR not compared)" in text
    # default min_searches=100: nothing is comparable
    tiny = by_group(G_RANKS, G_SCORES, G_MATED, G_NONMATED_SCORES, G_NONMATED, 0.5, n_boot=20)
    assert tiny.groups["a"].insufficient_samples
    assert tiny.to_dict()["groups"]["a"]["insufficient_samples"] is True
    assert tiny.fpir_ratio is None
    assert "fewer than two groups have enough searches" in plain_language_summary(tiny)


def test_by_group_zero_rate_group() -> None:
    # group y never produces an innocent candidate: ratio undefined, sentence says so
    res = by_group(
        [1, 1],
        [0.9, 0.9],
        ["x", "y"],
        [0.8, 0.1, 0.2, 0.1],
        ["x", "x", "y", "y"],
        0.5,
        min_searches=1,
        n_boot=20,
    )
    assert res.groups["y"].fpir == 0.0
    assert res.groups["y"].fpir_ci == (0.0, 0.0)
    assert res.fpir_ratio is None and res.fpir_highest == "x"
    assert "and none for y did (FPIR 50.0% vs 0%)" in plain_language_summary(res)


def test_format_percent() -> None:
    assert format_percent(0.021) == "2.1%"
    assert format_percent(0.4) == "40.0%"
    assert format_percent(0.00052) == "0.052%"
    assert format_percent(0.0) == "0%"
    assert format_percent(None) == "n/a"
    assert format_percent(NAN) == "n/a"
