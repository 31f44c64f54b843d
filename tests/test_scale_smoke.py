"""CI-sized version of bench/scale.py: the lean index keeps every mate at 200k templates.

The same synthetic model as the bench (1,000 groups of alike identities, gallery templates of good
quality, probes at cosine 0.35-0.7 to their mate), built in chunks; the exact top-50 is computed
chunk by chunk. Asserts recall, never time (bench/scale.py measures time).
"""

from __future__ import annotations

import numpy as np

from retroface.search.index import AutoIndex, LeanIndex

DIM = 512
N = 200_000
CHUNK = 50_000
PROBES = 1000
K = 50


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _sample(identity: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = _unit(rng.standard_normal(identity.shape, dtype=np.float32))
    return _unit(np.sqrt(q)[:, None] * identity + np.sqrt(1 - q)[:, None] * noise)


def test_lean_index_keeps_mates_at_200k() -> None:
    rng = np.random.default_rng(14)
    groups = _unit(rng.standard_normal((1000, DIM), dtype=np.float32))
    mates = np.sort(rng.choice(N, PROBES, replace=False))
    probes = np.empty((PROBES, DIM), dtype=np.float32)
    index = LeanIndex(DIM)  # what AutoIndex serves above its switch, rows in RAM
    assert N >= AutoIndex.SWITCH_AT
    truth_s = np.full((PROBES, 0), -np.inf, dtype=np.float32)
    truth_i = np.zeros((PROBES, 0), dtype=np.int64)
    blocks = []
    for start in range(0, N, CHUNK):
        g = rng.integers(0, 1000, CHUNK)
        identity = _unit(0.5 * groups[g] + 0.866 * _unit(rng.standard_normal((CHUNK, DIM))))
        q = rng.uniform(0.7, 0.95, CHUNK).astype(np.float32)
        gallery = _sample(identity, q, rng)
        here = (mates >= start) & (mates < start + CHUNK)
        r = mates[here] - start
        t = rng.uniform(0.35, 0.7, len(r)).astype(np.float32)
        probes[here] = _sample(identity[r], t * t / q[r], rng)
        blocks.append((start, gallery))
    for start, gallery in blocks:  # probes known: exact truth and the index, chunk by chunk
        s = probes @ gallery.T
        part = np.argpartition(-s, K - 1, axis=1)[:, :K]
        cand_s = np.concatenate([truth_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([truth_i, part + start], 1)
        keep = np.argsort(-cand_s, axis=1)[:, :K]
        truth_s = np.take_along_axis(cand_s, keep, 1)
        truth_i = np.take_along_axis(cand_i, keep, 1)
        index.add(np.arange(start, start + CHUNK, dtype=np.int64), gallery)
    del blocks

    mate_cos = np.array([probes[i] @ index.rows.vectors(mates[i : i + 1])[0] for i in range(9)])
    assert ((mate_cos > 0.25) & (mate_cos < 0.8)).all()  # the model is what it says
    scores, got = index.search(probes, K)  # parallel across queries, one thread each
    in_truth = (truth_i == mates[:, None]).any(1)
    found = (got == mates[:, None]).any(1)
    assert in_truth.sum() >= 990  # nearly every mate is in the exact top-50
    lost = int((in_truth & ~found).sum())
    assert lost <= in_truth.sum() // 1000, f"{lost} mates lost of {in_truth.sum()}"
    assert (got[:, 0] == truth_i[:, 0]).mean() >= 0.995  # top-1 agrees with exact search
    # scores are exact cosines: the index's best equals the exact best wherever ids agree
    same = got[:, 0] == truth_i[:, 0]
    np.testing.assert_allclose(scores[same, 0], truth_s[same, 0], rtol=1e-5, atol=1e-6)
