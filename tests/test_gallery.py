"""Gallery storage, enrolment, index and erasure, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from tests.conftest import ADMIN

from retroface.context import AppContext
from retroface.core.errors import InvalidInputError, NotFoundError
from retroface.gallery.enrol import EnrolItem, choose_face, items_from_manifest, items_from_paths
from retroface.media.images import load_image
from retroface.search.matcher import Aggregate
from retroface.storage.blobstore import content_hash
from retroface.storage.crypto import template_aad
from retroface.storage.tables import FaceTemplate, ReferenceImage, Subject
from retroface.vision.engines import primary_face

PEOPLE = ("barack_obama", "joe_biden", "kit_harington", "rose_leslie")


def people_items(data_dir: Path) -> list[EnrolItem]:
    return list(items_from_paths([data_dir / "people" / p for p in PEOPLE]))


def embedding_of(app: AppContext, path: Path) -> np.ndarray:
    img = load_image(path)
    face = primary_face(app.engine.analyse(img), img.shape)
    assert face is not None
    return face.embedding


def subject_refs(app: AppContext) -> dict[int, str]:
    with app.db.session() as s:
        return dict(s.execute(select(Subject.id, Subject.reference)).all())


def test_enrol_search_idempotent(app: AppContext, data_dir: Path) -> None:
    items = people_items(data_dir)
    first = app.enroller().run(ADMIN, items)
    assert first.enrolled >= 10 and first.subjects == 4
    assert {r.path for r in first.rejected} <= {str(i.path) for i in items}
    again = app.enroller().run(ADMIN, items)
    assert again.enrolled == 0 and again.skipped == first.enrolled
    assert len(again.rejected) == len(first.rejected)  # rejects are re-tried, and fail again
    with app.db.session() as s:
        assert s.scalar(select(func.count(ReferenceImage.id))) == first.enrolled
        assert s.scalar(select(func.count(FaceTemplate.id))) == first.enrolled
    key = app.engine.identity.key
    probe = embedding_of(app, data_dir / "people/_multi_face_scenes/obama_and_biden.jpg")
    matches, version = app.matcher.match(probe, key, top_k=4)
    assert version == app.gallery.stats(ADMIN).gallery_version > 0
    # each subject ranked once, best first
    assert len({m.subject_id for m in matches}) == len(matches) == 4
    assert [m.rank for m in matches] == [1, 2, 3, 4]
    assert all(a.similarity >= b.similarity for a, b in itertools.pairwise(matches))


def test_search_ranks_the_right_subject(app: AppContext, data_dir: Path) -> None:
    app.enroller().run(ADMIN, people_items(data_dir))
    refs = subject_refs(app)
    key = app.engine.identity.key
    img = load_image(data_dir / "people/_multi_face_scenes/obama_and_biden.jpg")
    for face in app.engine.analyse(img)[:2]:
        matches, _ = app.matcher.match(face.embedding, key, top_k=3)
        assert refs[matches[0].subject_id] in ("barack_obama", "joe_biden")
    thresholded, _ = app.matcher.match(face.embedding, key, top_k=20, threshold=0.99)
    assert thresholded == []


def test_rejections_have_reasons(app: AppContext, data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "junk" / "x.jpg"
    bad.parent.mkdir()
    bad.write_text("not an image")
    blank = tmp_path / "junk" / "blank.png"
    from PIL import Image

    Image.new("RGB", (300, 300), (120, 120, 120)).save(blank)
    group = data_dir / "people/_multi_face_scenes/kit_with_rose.jpg"
    summary = app.enroller().run(
        ADMIN, [EnrolItem(bad, "s1"), EnrolItem(blank, "s2"), EnrolItem(group, "s3")]
    )
    reasons = {Path(r.path).name: r.reason for r in summary.rejected}
    assert summary.enrolled == 0
    assert reasons["x.jpg"].startswith("unreadable")
    assert reasons["blank.png"] == "no face found"
    assert "choose one with the manifest's 'face' column" in reasons["kit_with_rose.jpg"]
    # the manifest's face column picks one explicitly
    chosen = app.enroller().run(ADMIN, [EnrolItem(group, "s3", face=0)])
    assert chosen.enrolled == 1


def test_enrolment_embeds_only_the_chosen_face_and_stores_what_analyse_gave(
    app: AppContext, data_dir: Path
) -> None:
    """Enrolment aligns and embeds only the face it takes (the bystanders SCRFD finds at the
    edge of these LFW images are never embedded), and the template, box and quality it stores are
    those of that face as a full ``analyse`` gives them (the pipeline before issue #16)."""
    lfw = data_dir / "lfw"
    paths = [
        lfw / "John_Warner/John_Warner_0002.jpg",  # two faces: a bystander cut off at the left
        lfw / "Lars_Von_Trier/Lars_Von_Trier_0003.jpg",  # two faces
        lfw / "Joseph_Biden/Joseph_Biden_0001.jpg",  # one face
    ]
    engine = app.batch_engine
    expected = []
    for p in paths:
        img = load_image(p)
        expected.append(choose_face(engine.analyse(img), img.shape, None, "main"))
    assert sum(len(engine.analyse(load_image(p))) for p in paths) == 5  # the test's premise

    embedded: list[int] = []
    recogniser = engine.recogniser  # type: ignore[attr-defined]
    real = recogniser.embed_raw

    def counting(crops: list[np.ndarray], flip: bool = False) -> object:
        embedded.append(len(crops))
        return real(crops, flip=flip)

    recogniser.embed_raw = counting
    try:
        summary = app.enroller(require_quality=False, multi_face="main").run(
            ADMIN, [EnrolItem(path=p, subject=p.parent.name) for p in paths]
        )
    finally:
        recogniser.embed_raw = real
    assert summary.enrolled == 3 and embedded == [1, 1, 1]
    with app.db.session() as s:
        rows = s.execute(
            select(ReferenceImage.original_name, FaceTemplate)
            .join(FaceTemplate, FaceTemplate.image_id == ReferenceImage.id)
            .order_by(ReferenceImage.id)
        ).all()
        stored = {name: t for name, t in rows}
        for p, face in zip(paths, expected, strict=True):
            t = stored[p.name]
            vector = np.frombuffer(
                app.cipher.decrypt(
                    t.embedding_enc, aad=template_aad(content_hash(p.read_bytes()), t.model_key)
                ),
                dtype=np.float32,
            )
            # the same crop through the same single-threaded session: identical on this CPU;
            # the tolerance only covers a CPU whose kernels depend on the batch size
            np.testing.assert_allclose(vector, face.embedding, rtol=0, atol=1e-6)
            assert t.box["box"] == list(face.box)
            assert t.quality == face.quality.to_dict()
    # the refusals are the same as when every face was analysed
    group = data_dir / "people/_multi_face_scenes/obama_and_biden.jpg"
    n = len(engine.analyse(load_image(group)))
    refused = app.enroller().run(ADMIN, [EnrolItem(path=group, subject="group")])
    assert [r.reason for r in refused.rejected] == [
        f"{n} faces and none clearly the main one: choose one with the manifest's 'face' column "
        "(see `retroface detect`)"
    ]
    wrong = app.enroller().run(ADMIN, [EnrolItem(path=group, subject="group", face=n)])
    assert [r.reason for r in wrong.rejected] == [f"face {n} requested but {n} found"]


def test_manifest(tmp_path: Path, data_dir: Path) -> None:
    m = tmp_path / "m.csv"
    with m.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["path", "subject", "inclusion_reason", "capture_date", "face", "retention_until"]
        )
        w.writerow(
            [
                data_dir / "people/joe_biden/biden.jpg",
                "JB-1",
                "custody image",
                "2020-01-02",
                "",
                "2030-06-30",
            ]
        )
    (item,) = items_from_manifest(m)
    assert item.subject == "JB-1" and item.inclusion_reason == "custody image"
    assert item.capture_date is not None and item.face is None
    assert item.retention_until is not None and item.retention_until.year == 2030
    assert item.retention_until.tzinfo is not None
    bad = tmp_path / "bad.csv"
    bad.write_text("file,name\na,b\n")
    with pytest.raises(InvalidInputError, match="needs columns path,subject"):
        list(items_from_manifest(bad))


def test_store_is_encrypted(app: AppContext, data_dir: Path) -> None:
    items = people_items(data_dir)[:3]
    app.enroller().run(ADMIN, items)
    files = list((app.home / "images").rglob("*.enc"))
    assert len(files) == 3
    originals = [i.path.read_bytes() for i in items]
    for f in files:
        blob = f.read_bytes()
        assert b"\xff\xd8\xff" not in blob[:64] and b"JFIF" not in blob and b"Exif" not in blob
        for original in originals:
            assert original[100:164] not in blob  # no plaintext run of the image
    # templates in the database are ciphertext too
    with app.db.session() as s:
        enc = s.scalars(select(FaceTemplate.embedding_enc)).first()
    assert enc is not None and enc.startswith(b"RFE1") and len(enc) == 4 + 12 + 512 * 4 + 16
    # file names are keyed, not the image's hash; the store decrypts by the recorded hash
    with app.db.session() as s:
        digests = list(s.scalars(select(ReferenceImage.content_hash)))
    assert not {f.name.removesuffix(".enc") for f in files} & set(digests)
    assert {app.blobs.get(d) for d in digests} == set(originals)
    key_file = app.home / "keys" / "data.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_erase_makes_subject_unfindable(app: AppContext, data_dir: Path) -> None:
    app.enroller().run(ADMIN, people_items(data_dir))
    key = app.engine.identity.key
    probe = embedding_of(app, data_dir / "people/joe_biden/biden2.jpg")
    refs = subject_refs(app)
    top, _ = app.matcher.match(probe, key, top_k=1)
    assert refs[top[0].subject_id] == "joe_biden"
    before = set((app.home / "images").rglob("*.enc"))
    result = app.gallery.erase(ADMIN, "joe_biden")
    assert result.images == result.files_deleted == 2
    after = set((app.home / "images").rglob("*.enc"))
    assert len(before - after) == 2
    matches, _ = app.matcher.match(probe, key, top_k=10)
    assert "joe_biden" not in {refs.get(m.subject_id) for m in matches}
    # a fresh process (new context, index read from disk) agrees
    fresh = AppContext(app.settings, engine=app.engine)
    matches, _ = fresh.matcher.match(probe, key, top_k=10)
    assert all(m.subject_id != top[0].subject_id for m in matches)
    assert fresh.gallery.check(ADMIN, key).index_matches_database
    fresh.close()
    with pytest.raises(NotFoundError):
        app.gallery.erase(ADMIN, "joe_biden")


def test_index_rebuilt_when_missing_stale_or_corrupt(
    make_app: Callable[..., AppContext], data_dir: Path
) -> None:
    a = make_app()
    a.enroller().run(ADMIN, people_items(data_dir)[:4])
    key = a.engine.identity.key
    path = a.index.path_for(key)
    assert path.exists()

    b = make_app()  # another process: loads the saved file
    assert not b.index.get(key).rebuilt

    path.write_bytes(b"garbage")
    c = make_app()
    loaded = c.index.get(key)
    assert loaded.rebuilt and loaded.index.count() == 4

    path.unlink()
    d = make_app()
    assert d.index.get(key).rebuilt

    # a change made elsewhere makes a loaded index stale: it follows the database
    a.enroller().run(ADMIN, people_items(data_dir)[4:6])
    assert d.index.get(key).index.count() == 6
    assert d.gallery.check(ADMIN, key).index_matches_database


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "lean"])
def test_approximate_index_matches_flat(
    make_app: Callable[..., AppContext], data_dir: Path, kind: str
) -> None:
    flat = make_app()
    flat.enroller().run(ADMIN, people_items(data_dir))
    hnsw = make_app(index_kind=kind)
    key = flat.engine.identity.key
    probe = embedding_of(flat, data_dir / "people/kit_harington/john2.jpeg")
    # IVF keeps no id -> vector map, so its fused search falls back to max: compare max there
    agg: Aggregate = "max" if kind == "ivf" else "fused"
    a, _ = flat.matcher.match(probe, key, top_k=4, aggregate=agg)
    found = hnsw.matcher.search(probe, key, top_k=4)
    assert found.aggregate == agg
    b = found.matches
    assert [m.subject_id for m in a] == [m.subject_id for m in b]
    assert np.allclose([m.similarity for m in a], [m.similarity for m in b], atol=1e-5)


def test_stats_show_list(app: AppContext, data_dir: Path) -> None:
    items = [
        EnrolItem(i.path, i.subject, inclusion_reason="custody image", source="force A")
        for i in people_items(data_dir)
    ]
    app.enroller().run(ADMIN, items)
    stats = app.gallery.stats(ADMIN)
    assert stats.subjects == 4 and stats.subjects_by_inclusion_reason == {"custody image": 4}
    assert [r.reference for r in app.gallery.list_subjects(ADMIN)] == sorted(PEOPLE)
    shown = app.gallery.show(ADMIN, "kit_harington")
    assert shown.images == len(shown.reference_images) >= 2


def test_orphan_files_detected_and_repaired(app: AppContext, data_dir: Path) -> None:
    app.enroller().run(ADMIN, people_items(data_dir)[:2])
    app.blobs.put(b"left behind by a crash")
    key = app.engine.identity.key
    assert app.gallery.check(ADMIN, key).orphan_files == 1
    app.gallery.check(ADMIN, key, repair=True)
    assert app.gallery.check(ADMIN, key).orphan_files == 0


def test_kill_9_during_enrolment_then_rerun(app: AppContext, data_dir: Path) -> None:
    """A crash half way through leaves nothing a rerun cannot finish cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    people = sorted(p for p in (data_dir / "lfw").iterdir() if p.is_dir())[:160]
    paths = [str(p) for p in people]
    app.users.ensure_admin("admin", "a long test password")
    env = os.environ | {
        "RETROFACE_HOME": str(app.home),
        "RETROFACE_DATABASE_URL": app.settings.resolved_database_url,
        "RETROFACE_USER": "admin",
        "RETROFACE_PASSWORD": "a long test password",
    }
    cmd = [
        sys.executable,
        "-m",
        "retroface.cli.main",
        "gallery",
        "enrol",
        "--multi-face",
        "main",
        "--allow-low-quality",
        "--json",
        *paths,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        with app.db.session() as s:
            committed = s.scalar(select(func.count(ReferenceImage.id))) or 0
        if committed >= 40:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited early"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with app.db.session() as s:
        at_crash = s.scalar(select(func.count(ReferenceImage.id))) or 0
    assert 0 < at_crash < 160

    summary = app.enroller(require_quality=False, multi_face="main").run(
        ADMIN, list(items_from_paths([Path(p) for p in paths]))
    )
    assert summary.skipped == at_crash
    with app.db.session() as s:
        images = s.scalar(select(func.count(ReferenceImage.id)))
        distinct = s.scalar(select(func.count(func.distinct(ReferenceImage.content_hash))))
        templates = s.scalar(select(func.count(FaceTemplate.id)))
        hashes = set(s.scalars(select(ReferenceImage.content_hash)))
    assert images == distinct == templates == at_crash + summary.enrolled
    assert {app.blobs.name_for(h) for h in hashes} == set(
        app.blobs.names()
    )  # no orphans, none missing
    key = app.engine.identity.key
    fresh = AppContext(app.settings, engine=app.engine)
    report = fresh.gallery.check(ADMIN, key)
    assert report.index_matches_database and report.orphan_files == 0
    assert not list((app.home / "images").rglob(".tmp-*"))
    fresh.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "lean", "auto"])
def test_index_kinds_round_trip(kind: str) -> None:
    """Every index kind finds the same exact neighbours, removes, and survives serialisation."""
    import gc

    from retroface.search.index import index_from_bytes, new_index

    rng = np.random.default_rng(1)
    v = rng.standard_normal((3000, 512)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = new_index(kind, 512)
    index.add(np.arange(3000, dtype=np.int64) + 100, v)
    scores, ids = index.search(v[:5], 3)
    assert ids[:, 0].tolist() == [100, 101, 102, 103, 104]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert index.remove(np.array([100, 101], dtype=np.int64)) == 2
    assert index.count() == 2998
    data = index.to_bytes()
    del index
    gc.collect()
    again = index_from_bytes(kind, data)
    gc.collect()
    _, ids = again.search(v[:5], 3)
    assert again.count() == 2998 and 100 not in ids and ids[2:, 0].tolist() == [102, 103, 104]
