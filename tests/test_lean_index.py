"""The lean index (PQ codes + exact re-rank), its row sources, and the auto kind's choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retroface.config import Settings
from retroface.search.index import (
    AutoIndex,
    FlatIndex,
    LeanIndex,
    MemoryRows,
    RowFileRows,
    index_from_bytes,
    new_index,
)
from retroface.storage.crypto import Cipher
from retroface.storage.rowfile import RowFile

DIM = 64
KEY = bytes(range(32))


def _unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 7 + 3  # not positions: ids are mapped, not assumed


def _exact(v: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(v @ q), kind="stable")[:k]]


def test_lean_search_is_an_exact_rerank() -> None:
    v, ids = _unit(3000), _ids(3000)
    lean = LeanIndex(DIM)
    lean.add(ids[:1000], v[:1000])
    lean.add(ids[1000:], v[1000:])  # a second block: codes added without retraining
    assert lean.count() == 3000 and lean.rows.count() == 3000
    q = _unit(20, seed=1)
    scores, got = lean.search(q, 10)
    for qi in range(len(q)):
        # every score returned is the true cosine of the id returned with it
        pos = (got[qi] - 3) // 7
        np.testing.assert_allclose(scores[qi], v[pos] @ q[qi], rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(scores[qi]) <= 1e-7)  # best first
    # with a shortlist as long as the gallery, the re-rank is exact search
    full = lean.search(q, 10, plan=type(lean.plan())(shortlist=3000))[1]
    for qi in range(len(q)):
        np.testing.assert_array_equal(full[qi], _exact(v, ids, q[qi], 10))
    # a template's own vector finds it first
    assert (lean.search(v[:50], 1)[1][:, 0] == ids[:50]).all()


def test_batch_search_equals_single_searches() -> None:
    v, ids = _unit(2000), _ids(2000)
    lean = LeanIndex(DIM)
    lean.add(ids, v)
    q = _unit(9, seed=2)
    batch = lean.search(q, 5)
    for qi in range(len(q)):
        one = lean.search(q[qi], 5)
        np.testing.assert_array_equal(one[1][0], batch[1][qi])


def test_lean_remove_deletes_code_and_row() -> None:
    v, ids = _unit(1500), _ids(1500)
    lean = LeanIndex(DIM)
    lean.add(ids, v)
    gone = ids[[0, 10, 700]]
    assert lean.remove(gone) == 3
    assert lean.remove(gone) == 0
    assert lean.count() == 1497 and lean.rows.count() == 1497
    assert lean.index is not None and lean.index.ntotal == 1497  # the codes are gone too
    with pytest.raises(KeyError):
        lean.rows.vectors(gone[:1])
    _, got = lean.search(v[[0, 10, 700]], 20)
    assert not np.isin(got, gone).any()
    # the erased rows are not in the row buffer (overwritten, then dropped)
    assert isinstance(lean.rows, MemoryRows)
    _, kept = lean.rows.all()
    assert not (np.abs(kept @ v[0] - 1) < 1e-6).any()


def test_lean_to_bytes_round_trip() -> None:
    v, ids = _unit(1200), _ids(1200)
    lean = LeanIndex(DIM)
    lean.add(ids, v)
    lean.remove(ids[:5])
    back = index_from_bytes("lean", lean.to_bytes())
    assert isinstance(back, LeanIndex) and back.count() == 1195
    q = _unit(8, seed=3)
    for a, b in zip(lean.search(q, 10), back.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    back.add(ids[:5], v[:5])  # still trainable-free: codes added to the loaded quantiser
    assert back.search(v[:5], 1)[1][:, 0].tolist() == ids[:5].tolist()


def test_lean_with_rows_in_an_encrypted_file(tmp_path: Path) -> None:
    v, ids = _unit(2500), _ids(2500)
    cipher = Cipher(KEY)
    path = tmp_path / "g.rows"
    rows = RowFileRows.write(
        path, cipher, [(ids[:1000], v[:1000]), (ids[1000:], v[1000:])], dim=DIM, context=b"m"
    )
    assert v[0].tobytes()[:64] not in path.read_bytes()  # encrypted at rest
    lean = LeanIndex(DIM, rows)
    lean.train(v)
    lean.add(ids, v)  # rows already in the file: only codes are added
    assert rows.count() == 2500
    mem = LeanIndex(DIM)
    mem.add(ids, v)
    q = _unit(10, seed=4)
    np.testing.assert_array_equal(lean.search(q, 10)[1], mem.search(q, 10)[1])
    # rows added later live in RAM until compaction; both are re-ranked the same way
    extra, extra_ids = _unit(3, seed=9), np.array([1, 2, 4], dtype=np.int64)
    lean.add(extra_ids, extra)
    assert lean.search(extra, 1)[1][:, 0].tolist() == [1, 2, 4]
    # erasure rewrites the file without the rows: the old file's bytes are gone
    assert lean.remove(np.array([ids[5], 2])) == 2
    assert rows.count() == 2501
    with RowFile(path, cipher, context=b"m") as rf:  # the compacted file: the tail moved in
        assert rf.rows == 2501
        assert not (np.abs(rf.read_all() @ v[5] - 1) < 1e-6).any()
    assert not list(tmp_path.glob("*.new*"))
    with pytest.raises(KeyError):
        rows.vectors(ids[5:6])
    # codes alone are saved; the rows come back from the same file
    back = index_from_bytes("lean", lean.to_bytes(), rows=RowFileRows(path, cipher, context=b"m"))
    assert len(lean.to_bytes()) < 2500 * DIM  # no float32 rows inside
    np.testing.assert_array_equal(back.search(q, 10)[1], lean.search(q, 10)[1])
    with pytest.raises(ValueError):
        index_from_bytes("lean", lean.to_bytes())
    # a wrong key cannot read the rows
    with pytest.raises(Exception, match="decrypt"):
        RowFileRows(path, Cipher(bytes(32)), context=b"m")


def test_auto_chooses_flat_then_lean_and_back() -> None:
    v, ids = _unit(3000), _ids(3000)
    auto = AutoIndex(DIM, switch_at=2000)
    auto.add(ids[:1500], v[:1500])
    assert auto.chosen == "flat"
    q = _unit(6, seed=5)
    exact = auto.search(q, 5)[1]
    for qi in range(len(q)):  # below the switch every search is exact
        np.testing.assert_array_equal(exact[qi], _exact(v[:1500], ids[:1500], q[qi], 5))
    auto.add(ids[1500:], v[1500:])
    assert auto.chosen == "lean" and auto.count() == 3000
    back = index_from_bytes("auto", auto.to_bytes())
    assert isinstance(back, AutoIndex) and back.chosen == "lean" and back.switch_at == 2000
    np.testing.assert_array_equal(back.search(q, 5)[1], auto.search(q, 5)[1])
    auto.remove(ids[:2100])  # below half the switch size: back to exact search
    assert auto.chosen == "flat" and auto.count() == 900
    assert isinstance(auto.inner, FlatIndex)
    for qi in range(len(q)):
        np.testing.assert_array_equal(
            auto.search(q[qi], 5)[1][0], _exact(v[2100:], ids[2100:], q[qi], 5)
        )
    flat_back = index_from_bytes("auto", auto.to_bytes())
    assert isinstance(flat_back, AutoIndex) and flat_back.chosen == "flat"


def test_auto_retrains_when_the_gallery_has_grown() -> None:
    v, ids = _unit(5000), _ids(5000)
    auto = AutoIndex(DIM, switch_at=1000)
    auto.add(ids[:1000], v[:1000])
    assert auto.chosen == "lean"
    assert isinstance(auto.inner, LeanIndex) and auto.inner.trained_on == 1000
    auto.add(ids[1000:], v[1000:])  # 5x the training size: retrained on the whole gallery
    assert isinstance(auto.inner, LeanIndex) and auto.inner.trained_on == 5000
    assert auto.search(v[4990:], 1)[1][:, 0].tolist() == ids[4990:].tolist()


def test_auto_is_the_default_kind_and_the_factory_knows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RETROFACE_INDEX_KIND", raising=False)
    assert Settings().index_kind == "auto"
    monkeypatch.setenv("RETROFACE_INDEX_KIND", "flat")
    assert Settings().index_kind == "flat"
    assert isinstance(new_index("auto", DIM), AutoIndex)
    assert isinstance(new_index("lean", DIM), LeanIndex)
    assert AutoIndex(DIM).switch_at == AutoIndex.SWITCH_AT
    with pytest.raises(ValueError):
        new_index("nope", DIM)


def test_tiny_lean_index_is_exact_until_it_can_train() -> None:
    v, ids = _unit(LeanIndex.TRAIN_MIN + 10), _ids(LeanIndex.TRAIN_MIN + 10)
    lean = LeanIndex(DIM)
    lean.add(ids[:13], v[:13])  # 13 rows cannot train 16 centroids per sub-quantiser
    assert lean.codes is None and lean.count() == 13
    q = _unit(3, seed=7)
    for qi in range(3):
        np.testing.assert_array_equal(
            lean.search(q[qi], 4)[1][0], _exact(v[:13], ids[:13], q[qi], 4)
        )
    assert lean.remove(ids[:1]) == 1 and lean.count() == 12
    back = index_from_bytes("lean", lean.to_bytes())
    assert back.count() == 12
    lean.add(ids[13:], v[13:])  # enough now: trained on everything held, codes for all of it
    assert lean.codes is not None and lean.count() == LeanIndex.TRAIN_MIN + 9
    assert lean.search(v[1:4], 1)[1][:, 0].tolist() == ids[1:4].tolist()
