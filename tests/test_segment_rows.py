"""The lean index re-ranks from the segment store's own row files (``search/segment_rows.py``).

Real files (the segment store, encrypted), real FAISS, a real database (SQLite and PostgreSQL)
and two ``IndexManager`` on it as two processes: a server that keeps a lean state cached, and a
writer that enrols and erases. The galleries are synthetic unit vectors, inserted and encrypted
as the enroller stores templates: the lean index trains its codes from 1,024 templates, more
than the real models can embed in a test's time. The checks that matter for erasure read what
is really on disk: every file under the index folder, decrypted, and this process's open file
descriptors (``/proc/self/fd``), since a deleted file stays on disk while a descriptor is open.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, insert

from retroface.context import AppContext
from retroface.search.index import AutoIndex, LeanIndex
from retroface.search.index_manager import IndexManager
from retroface.search.segment_rows import SegmentRows
from retroface.search.segments import Added, CompactionPolicy, SegmentStore
from retroface.storage.crypto import Cipher, template_aad
from retroface.storage.rowfile import RowFile
from retroface.storage.tables import FaceTemplate, ReferenceImage, Subject
from retroface.storage.versions import bump_gallery_version

DIM = 64
KEY = "segrows-test-model"
SEGMENT = 1000  # rows per segment: a 3,000-row gallery is three segments, as 1M would be 16


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------ store level


def test_served_from_segments_equals_in_memory(tmp_path: Path) -> None:
    """Same codes, rows from the files or from RAM: the same candidates and the same scores."""
    store = SegmentStore(
        tmp_path / "m",
        Cipher(bytes(range(32))),
        KEY,
        DIM,
        "lean",
        CompactionPolicy(segment_rows=SEGMENT),
    )
    v = unit(3500, 0)
    ids = np.arange(3500, dtype=np.int64) * 3 + 11
    with store.writer() as w:
        w.replace_all(1, Added(ids, ids, ids, v))
    manifest = store.manifest()
    assert manifest is not None and len(manifest.segments) == 4
    rows = SegmentRows.open(store, manifest)
    first = rows.view.segments[0].rows
    assert first.chunk_rows == 1  # one row per AES-GCM chunk: a re-rank decrypts only its rows
    np.testing.assert_array_equal(first.range(3, 10), v[3:10])
    lean = LeanIndex(DIM, rows)
    sample = rows.sample(LeanIndex.TRAIN_ROWS)
    assert len(sample) == 3500  # small gallery: the sample is all of it, read chunk by chunk
    lean.train(sample)
    for block_ids, block in rows.blocks():
        lean.add_codes_only(block_ids, block)
    mem = LeanIndex(DIM)
    mem.train(sample)
    mem.add(ids, v)
    q = np.concatenate([unit(20, 1), v[[0, 999, 1000, 3499]]])
    for shortlist in (50, 500):
        plan = type(lean.plan())(shortlist=shortlist)
        s_disk, i_disk = lean.search(q, 10, plan=plan)
        s_mem, i_mem = mem.search(q, 10, plan=plan)
        np.testing.assert_array_equal(i_disk, i_mem)
        np.testing.assert_array_equal(s_disk, s_mem)
    assert (lean.search(v[[0, 999, 1000, 3499]], 1)[1][:, 0] == ids[[0, 999, 1000, 3499]]).all()
    # rows in RAM: none; the vectors are read from the files
    assert rows.in_ram == 0 and rows.count() == 3500
    # a row added in this process is kept in RAM until a switch; a removal forgets it at once
    extra = unit(2, 5)
    lean.add(np.array([1, 2]), extra)
    assert rows.in_ram == 2 and lean.search(extra, 1)[1][:, 0].tolist() == [1, 2]
    assert lean.remove(np.array([1, ids[7]])) == 2
    assert rows.in_ram == 1 and rows.count() == 3500
    with pytest.raises(KeyError):
        rows._tail.vectors(np.array([1]))
    rows.close()


# ---------------------------------------------------------------------------- manager level


def commit_added(app: AppContext, vectors: np.ndarray, first: int) -> tuple[int, list[int]]:
    """Templates committed as the enroller commits them: rows and the version bump in one
    transaction (ids given, so the test knows them)."""
    ids = list(range(first, first + len(vectors)))
    subjects, images, templates = [], [], []
    for i, vec in zip(ids, vectors, strict=True):
        digest = hashlib.sha256(f"segrows-{i}".encode()).hexdigest()
        subjects.append({"id": i, "reference": f"SR{i:07d}", "created_by": "test"})
        images.append(
            {
                "id": i,
                "subject_id": i,
                "content_hash": digest,
                "original_name": f"{i}.jpg",
                "width": 112,
                "height": 112,
            }
        )
        templates.append(
            {
                "id": i,
                "image_id": i,
                "subject_id": i,
                "model_key": KEY,
                "embedding_enc": app.cipher.encrypt(
                    np.asarray(vec, np.float32).tobytes(), aad=template_aad(digest, KEY)
                ),
                "det_score": 0.9,
            }
        )
    with app.db.session() as s:
        s.execute(insert(Subject), subjects)
        s.execute(insert(ReferenceImage), images)
        s.execute(insert(FaceTemplate), templates)
        version = bump_gallery_version(s, added=ids)
    return version, ids


def commit_erased(app: AppContext, ids: list[int]) -> int:
    with app.db.session() as s:
        s.execute(delete(FaceTemplate).where(FaceTemplate.id.in_(ids)))
        s.execute(delete(ReferenceImage).where(ReferenceImage.id.in_(ids)))
        s.execute(delete(Subject).where(Subject.id.in_(ids)))
        return bump_gallery_version(s, removed=ids)


def manager(app: AppContext, kind: str = "lean", **kw: object) -> IndexManager:
    return IndexManager(
        app.db,
        app.cipher,
        app.home / "index",
        dim=DIM,
        kind=kind,
        policy=kw.pop("policy", CompactionPolicy(segment_rows=SEGMENT, max_deltas=8)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def lean_of(m: IndexManager) -> LeanIndex:
    with m.reading(KEY) as loaded:
        index = loaded.index
    inner = index.inner if isinstance(index, AutoIndex) else index
    assert isinstance(inner, LeanIndex)
    return inner


def open_in(folder: Path) -> set[str]:
    """What this process holds open under ``folder``: file names, `` (deleted)`` kept."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder) + "/"):
            out.add(target[len(str(folder)) + 1 :])
    return out


def plain_pieces(store: SegmentStore) -> bytes:
    """Every segment file under the model's folder, decrypted, joined (referenced or not)."""
    out = []
    for path in store.files():
        if path.suffix == ".rows":
            with RowFile(path, store.cipher, context=store._rows_context(path.stem)) as rf:
                out.append(rf.read_all().tobytes())
        elif path.suffix == ".ids":
            out.append(store.cipher.decrypt(path.read_bytes(), aad=store._ids_aad(path.stem)))
    return b"".join(out)


def search(m: IndexManager, q: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    with m.reading(KEY) as loaded:
        return loaded.index.search(q, k)


def test_server_rows_follow_enrolment_erasure_and_compaction(
    make_app: Callable[..., AppContext],
) -> None:
    app = make_app()
    v = unit(3000, 0)
    commit_added(app, v, 1)
    writer = manager(app)  # another process: it enrols and erases, never searches
    writer.persist(KEY)
    store = writer.store(KEY)
    folder = store.folder

    server = manager(app, compact_in_background=True)
    server.follow_rows_s = 0.2  # the server's watcher of the manifest (a thread)
    lean = lean_of(server)
    rows = lean.rows
    assert isinstance(rows, SegmentRows) and rows.in_ram == 0 and rows.count() == 3000
    assert server.stats == {"file": 1}
    # every score is an exact cosine from the stored row; each template finds itself first
    s, i = search(server, v[[0, 1500, 2999]], 3)
    assert i[:, 0].tolist() == [1, 1501, 3000]
    np.testing.assert_allclose(s[:, 0], 1.0, atol=1e-5)
    names = {f"{seg.name}.rows" for seg in store.manifest().segments}  # type: ignore[union-attr]
    assert names <= open_in(folder)

    # this process enrols: rows in RAM until its own persist, then read from the delta segment
    extra = unit(20, 1)
    with server.changing():
        version, new_ids = commit_added(app, extra, 5001)
        server.apply(
            KEY,
            version,
            added=[(t, t, t, x) for t, x in zip(new_ids, extra, strict=True)],
            save=True,
        )
    assert lean_of(server).rows is rows and rows.in_ram == 0 and rows.count() == 3020
    assert search(server, extra[:3], 1)[1][:, 0].tolist() == new_ids[:3]

    # another process erases a template: it rewrites the one segment holding it and deletes the
    # old one; the server, which had it open, lets go of it at its next search
    gone = 1234
    erased = v[gone - 1].tobytes()
    version = commit_erased(app, [gone])
    writer.apply(KEY, version, removed=[gone], save=True)
    assert [n for n in open_in(folder) if n.endswith(" (deleted)")]  # still on disk: held open
    s, i = search(server, v[[gone - 1]], 3)  # catches up, then switches to the new segments
    assert gone not in i[0].tolist()
    assert not [n for n in open_in(folder) if n.endswith(" (deleted)")]
    assert erased not in plain_pieces(store)
    assert {n for n in open_in(folder) if n.endswith(".rows")} == {
        f"{seg.name}.rows"
        for seg in store.manifest().segments  # type: ignore[union-attr]
    }
    assert isinstance(lean_of(server).rows, SegmentRows) and rows.count() == 3019
    with pytest.raises(KeyError):
        rows.vectors(np.array([gone]))

    # the erasure commits, the server catches up before the writer has persisted it: the row is
    # unsearchable at once; the old file closes when the manifest follows
    gone2 = 2500
    version = commit_erased(app, [gone2])
    assert gone2 not in search(server, v[[gone2 - 1]], 3)[1][0].tolist()
    assert rows.count() == 3018
    writer.persist(KEY)  # the server's watcher switches, with no search coming
    deadline = time.monotonic() + 30
    while [n for n in open_in(folder) if n.endswith(" (deleted)")]:
        assert time.monotonic() < deadline, "the server kept the replaced segment open"
        time.sleep(0.05)
    assert v[gone2 - 1].tobytes() not in plain_pieces(store)

    # the server's own erasure: persisted, switched, closed, before apply returns
    gone3 = 5003
    with server.changing():
        version = commit_erased(app, [gone3])
        server.apply(KEY, version, removed=[gone3], save=True)
    assert not [n for n in open_in(folder) if n.endswith(" (deleted)")]
    assert extra[2].tobytes() not in plain_pieces(store)

    # compaction in the background while searches go on: the merged deltas' files are closed
    for n in range(4):
        commit_added(app, unit(5, 10 + n), 6000 + 10 * n)
        writer.persist(KEY)
    before = search(server, v[:50], 10)
    server.policy = CompactionPolicy(segment_rows=SEGMENT, max_deltas=1)
    stop = threading.Event()
    failures: list[BaseException] = []

    def searching() -> None:
        while not stop.is_set():
            try:
                search(server, v[:8], 10)
            except BaseException as exc:  # a search must never fail while files switch
                failures.append(exc)
                return

    threads = [threading.Thread(target=searching) for _ in range(3)]
    for t in threads:
        t.start()
    server.persist(KEY)  # the store is current; compaction is due: it runs in the background
    server.wait_for_compaction(120)
    stop.set()
    for t in threads:
        t.join(60)
    assert not failures
    assert server.writes["compaction"] == 1
    manifest = store.manifest()
    assert manifest is not None and not manifest.deltas
    search(server, v[:1], 1)
    assert not [n for n in open_in(folder) if n.endswith(" (deleted)")]
    assert {n for n in open_in(folder) if n.endswith(".rows")} == {
        f"{seg.name}.rows" for seg in manifest.segments
    }
    after = search(server, v[:50], 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert rows.in_ram == 0 and lean_of(server).rows is rows
    assert rows.count() == lean_of(server).count() == manifest.rows

    # a dropped state closes its files
    server.close()
    assert not open_in(folder) - {"LOCK"}


def test_auto_kind_serves_from_segments_above_its_switch(
    make_app: Callable[..., AppContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` above its flat limit (lowered here) re-ranks from the row files; a rebuild's
    in-RAM rows are handed over to the files once they are persisted; erasures below half the
    limit go back to exact flat search and close the files."""
    monkeypatch.setattr(AutoIndex.__init__, "__defaults__", (1500,))
    app = make_app()
    v = unit(2000, 3)
    commit_added(app, v, 1)
    server = manager(app, kind="auto")
    lean = lean_of(server)  # nothing stored: rebuilt from the database with rows in RAM,
    assert server.stats == {"rebuild": 1}  # persisted, then the rows handed to the files
    assert isinstance(lean.rows, SegmentRows) and lean.rows.in_ram == 0
    folder = server.folder_for(KEY)
    assert {n for n in open_in(folder) if n.endswith(".rows")}
    server.close()
    assert not open_in(folder)

    fresh = manager(app, kind="auto")
    rows = lean_of(fresh).rows
    assert isinstance(rows, SegmentRows) and fresh.stats == {"file": 1}
    assert search(fresh, v[[5, 1999]], 1)[1][:, 0].tolist() == [6, 2000]
    version = commit_erased(app, list(range(1, 1300)))
    fresh.apply(KEY, version, removed=list(range(1, 1300)), save=True)
    with fresh.reading(KEY) as loaded:
        assert isinstance(loaded.index, AutoIndex) and loaded.index.chosen == "flat"
        assert loaded.index.count() == 701
    assert not open_in(folder)  # the flat index holds its vectors; no row file stays open
    assert not [
        v[i].tobytes() for i in range(1299) if v[i].tobytes() in plain_pieces(fresh.store(KEY))
    ]
