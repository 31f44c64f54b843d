"""The stored index as segments (issue #16): a change writes only itself, an erasure leaves no
byte of the erased vector in any stored piece, and a writer killed between a delta and its
compaction loses nothing and resurrects nothing.

Real models (templates embedded from LFW images by the real engine), real SQLite and PostgreSQL,
real processes: the kill is a real SIGKILL of a real second process, and the concurrent writers
are two real processes taking the store's flock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from tests.conftest import ADMIN
from tests.test_gallery import embedding_of
from tests.test_index_follow import enrol, stored_template_ids, template_ids

import retroface
from retroface.context import AppContext
from retroface.search.segments import LOCK, MANIFEST, PAUSE_ENV, Manifest, SegmentStore
from retroface.storage.crypto import template_aad
from retroface.storage.rowfile import RowFile
from retroface.storage.tables import FaceTemplate, ReferenceImage, Subject
from retroface.storage.versions import gallery_version

WORKER = Path(__file__).with_name("index_store_proc.py")


def db_version(app: AppContext) -> int:
    with app.db.session() as s:
        return gallery_version(s)


def vectors_of(app: AppContext, reference: str) -> list[bytes]:
    """The person's template vectors as stored bytes (float32), decrypted from the database."""
    key = app.engine.identity.key
    with app.db.session() as s:
        rows = s.execute(
            select(FaceTemplate.embedding_enc, ReferenceImage.content_hash)
            .join(FaceTemplate.image)
            .join(Subject, FaceTemplate.subject_id == Subject.id)
            .where(Subject.reference == reference)
        ).all()
    assert rows
    return [app.cipher.decrypt(enc, aad=template_aad(digest, key)) for enc, digest in rows]


def referenced(manifest: Manifest | None) -> set[str]:
    names = {LOCK, MANIFEST}
    for seg in manifest.segments if manifest else ():
        names |= {f"{seg.name}.rows", f"{seg.name}.ids"}
    return names


def decrypt_every_piece(store: SegmentStore) -> dict[str, bytes]:
    """Every file in the model's index folder, decrypted with the key (referenced or not)."""
    out: dict[str, bytes] = {}
    for path in store.files():
        name = path.stem
        if path.name == LOCK:
            out[path.name] = path.read_bytes()
        elif path.name == MANIFEST:
            out[path.name] = store.cipher.decrypt(path.read_bytes(), aad=store._manifest_aad())
        elif path.suffix == ".ids":
            out[path.name] = store.cipher.decrypt(path.read_bytes(), aad=store._ids_aad(name))
        elif path.suffix == ".rows":
            with RowFile(path, store.cipher, context=store._rows_context(name)) as rf:
                out[path.name] = rf.read_all().tobytes()
        else:
            raise AssertionError(f"unexpected file in the index folder: {path.name}")
    return out


def holding(pieces: dict[str, bytes], vectors: list[bytes]) -> set[str]:
    return {name for name, plain in pieces.items() if any(v in plain for v in vectors)}


def test_enrolment_persists_only_a_delta(
    make_app: Callable[..., AppContext], data_dir: Path
) -> None:
    app = make_app()
    key = app.engine.identity.key
    # the single file of earlier versions (the whole gallery in one blob) is deleted, not read
    legacy = app.index.folder / f"{app.index.folder_for(key).name}.flat.idx.enc"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_bytes(b"an old whole-gallery file")
    enrol(app, data_dir, "barack_obama", "joe_biden")
    assert not legacy.exists()
    store = app.index.store(key)
    first = store.manifest()
    assert first is not None and first.version == db_version(app)
    assert app.index.stats == {}  # the enroller loaded no index: it persisted its change only
    before = {p.name: p.read_bytes() for p in store.files()}

    enrol(app, data_dir, "kit_harington")
    second = store.manifest()
    assert second is not None and second.version == db_version(app)
    after = {p.name: p.read_bytes() for p in store.files()}
    assert set(before) <= set(after)  # nothing deleted
    assert all(after[n] == before[n] for n in before if n != MANIFEST)  # nothing rewritten
    assert second.segments[: len(first.segments)] == first.segments
    (delta,) = second.segments[len(first.segments) :]
    assert set(after) - set(before) == {f"{delta.name}.rows", f"{delta.name}.ids"}
    kit = template_ids(app, "kit_harington")
    assert delta.level == "delta" and set(store.read_ids(delta)[0].tolist()) == kit
    # bytes written: the new pieces and the manifest, about one encrypted vector per template
    written = sum(len(after[n]) for n in set(after) - set(before)) + len(after[MANIFEST])
    assert written < len(kit) * (512 * 4 + 64) + 4096
    assert app.index.writes == {"full": 1, "delta": 1}
    assert app.index.stats == {}

    server = make_app()  # a new process streams the segments: no rebuild, no catch-up
    loaded = server.index.get(key)
    assert server.index.stats == {"file": 1}
    assert set(loaded.subject_of) == template_ids(app) and loaded.version == second.version
    assert server.gallery.check(ADMIN, key).index_matches_database


def test_erasure_removes_the_vector_from_every_stored_piece(
    make_app: Callable[..., AppContext], data_dir: Path
) -> None:
    app = make_app()
    for person in ("barack_obama", "joe_biden", "kit_harington"):
        enrol(app, data_dir, person)
    key = app.engine.identity.key
    assert app.index.compact(key, force=True)  # Biden now shares a base segment with others
    enrol(app, data_dir, "rose_leslie")  # and a delta sits beside it
    store = app.index.store(key)
    manifest = store.manifest()
    assert manifest is not None and [s.level for s in manifest.segments] == ["base", "delta"]
    delta = manifest.segments[1]
    delta_bytes = {p.name: p.read_bytes() for p in store.files() if p.stem == delta.name}
    biden = vectors_of(app, "joe_biden")
    biden_ids = template_ids(app, "joe_biden")
    assert holding(decrypt_every_piece(store), biden) == {f"{manifest.segments[0].name}.rows"}

    app.gallery.erase(ADMIN, "joe_biden", reason="court order")
    after = store.manifest()
    assert after is not None and after.version == db_version(app)
    pieces = decrypt_every_piece(store)
    assert set(pieces) == referenced(after)  # no stale file left behind
    assert holding(pieces, biden) == set()
    assert not biden_ids & stored_template_ids(app, key)
    assert stored_template_ids(app, key) == template_ids(app)
    # only the segment that held Biden was rewritten; the delta beside it was not touched
    assert {p.name: p.read_bytes() for p in store.files() if p.stem == delta.name} == delta_bytes

    fresh = make_app()
    loaded = fresh.index.get(key)
    assert fresh.index.stats == {"file": 1}
    assert set(loaded.subject_of) == template_ids(app) and not biden_ids & set(loaded.subject_of)


def _worker_env(**extra: str) -> dict[str, str]:
    src = str(Path(retroface.__file__).resolve().parents[1])
    root = str(Path(__file__).resolve().parents[1])
    return os.environ | {"PYTHONPATH": os.pathsep.join([src, root])} | extra


def test_kill_9_between_a_delta_and_its_compaction(
    make_app: Callable[..., AppContext], data_dir: Path, tmp_path: Path
) -> None:
    """A second process enrols (a delta), starts a compaction, is killed with SIGKILL once the
    compaction's new pieces are written and before its manifest: the delta is kept, and the
    dead compaction's pieces (which hold a person erased afterwards) are never read and are
    deleted by the next writer, so the erased person does not come back."""
    app = make_app()
    enrol(app, data_dir, "barack_obama")
    enrol(app, data_dir, "joe_biden")
    key = app.engine.identity.key
    marker = tmp_path / "paused"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "enrol",
            str(app.home),
            app.settings.resolved_database_url,
            str(data_dir / "people" / "kit_harington"),
        ],
        env=_worker_env(**{PAUSE_ENV: str(marker)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else ""
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout is not None and proc.stdout.read().decode().split() == ["delta"]

    store = app.index.store(key)
    manifest = store.manifest()
    assert manifest is not None and manifest.version == db_version(app)
    assert [s.level for s in manifest.segments] == ["base", "delta", "delta"]  # not compacted
    pieces = decrypt_every_piece(store)
    leftovers = set(pieces) - referenced(manifest)
    assert len(leftovers) == 2  # the dead compaction's rows and ids, never named by a manifest
    biden = vectors_of(app, "joe_biden")
    assert holding(pieces, biden) & leftovers  # they hold Biden's vector

    reopened = make_app()  # nothing lost: the delta the killed process wrote is there
    loaded = reopened.index.get(key)
    assert reopened.index.stats == {"file": 1}
    assert set(loaded.subject_of) == template_ids(app)
    assert template_ids(app, "kit_harington") <= set(loaded.subject_of)

    biden_ids = template_ids(app, "joe_biden")
    app.gallery.erase(ADMIN, "joe_biden", reason="court order")
    pieces = decrypt_every_piece(store)
    assert set(pieces) == referenced(store.manifest())  # the leftovers are gone
    assert holding(pieces, biden) == set()
    again = make_app()  # nothing resurrected
    loaded = again.index.get(key)
    assert again.index.stats == {"file": 1}
    assert set(loaded.subject_of) == template_ids(app) and not biden_ids & set(loaded.subject_of)
    # and a compaction that runs to its end keeps exactly the same templates
    assert app.index.compact(key, force=True)
    assert stored_template_ids(app, key) == template_ids(app)
    assert [s.level for s in store.manifest().segments] == ["base"]  # type: ignore[union-attr]


def test_two_writer_processes_lose_no_delta(
    make_app: Callable[..., AppContext], data_dir: Path, tmp_path: Path
) -> None:
    app = make_app()
    enrol(app, data_dir, "barack_obama")
    key = app.engine.identity.key
    images = sorted((data_dir / "lfw").rglob("*.jpg"))[:24]
    vectors = np.stack([embedding_of(app, p) for p in images]).astype(np.float32)
    np.save(tmp_path / "a.npy", vectors[:12])
    np.save(tmp_path / "b.npy", vectors[12:])
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "write",
                str(app.home),
                app.settings.resolved_database_url,
                key,
                str(tmp_path / f"{tag}.npy"),
                tag,
            ],
            env=_worker_env(),
            stderr=subprocess.PIPE,
        )
        for tag in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    store = app.index.store(key)
    manifest = store.verify()  # every piece matches the hashes the manifest records
    assert manifest is not None and manifest.version == db_version(app)
    stored = [int(i) for seg in manifest.segments for i in store.read_ids(seg)[0]]
    assert len(stored) == len(set(stored))  # nothing twice
    assert set(stored) == template_ids(app)  # nothing lost
    assert len(manifest.deltas) <= app.index.policy.max_deltas  # the writers compacted
    assert set(pieces := decrypt_every_piece(store)) == referenced(manifest)
    assert all(holding(pieces, [v.tobytes()]) for v in vectors)  # every writer's vectors kept
    fresh = make_app()
    loaded = fresh.index.get(key)
    assert fresh.index.stats == {"file": 1}
    assert set(loaded.subject_of) == template_ids(app)


def test_server_compacts_in_the_background_while_serving(
    make_app: Callable[..., AppContext], data_dir: Path
) -> None:
    from retroface.search.segments import CompactionPolicy

    app = make_app()
    key = app.engine.identity.key
    app.index.policy = CompactionPolicy(max_deltas=1)
    app.index.compact_in_background = True
    enrol(app, data_dir, "barack_obama")
    app.index.get(key)  # the server has its state cached
    probe = embedding_of(app, data_dir / "people/joe_biden/biden2.jpg")
    enrol(app, data_dir, "joe_biden")
    enrol(app, data_dir, "kit_harington")  # the second delta: compaction due
    before, _ = app.matcher.match(probe, key, top_k=5)  # searches go on meanwhile
    app.index.wait_for_compaction(120)
    assert app.index.writes["compaction"] == 1
    manifest = app.index.store(key).manifest()
    assert manifest is not None and not manifest.deltas
    after, _ = app.matcher.match(probe, key, top_k=5)
    same = [(m.template_id, m.similarity) for m in before]
    assert same == [(m.template_id, m.similarity) for m in after]
    assert "rebuild" not in app.index.stats
    fresh = make_app()
    assert set(fresh.index.get(key).subject_of) == template_ids(app)
    assert fresh.index.stats == {"file": 1}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_load_from_segments(
    make_app: Callable[..., AppContext], data_dir: Path, kind: str
) -> None:
    app = make_app(index_kind=kind)
    enrol(app, data_dir, "barack_obama", "joe_biden")
    enrol(app, data_dir, "kit_harington")
    key = app.engine.identity.key
    fresh = make_app(index_kind=kind)
    loaded = fresh.index.get(key)
    assert fresh.index.stats == {"file": 1}
    assert loaded.index.count() == len(template_ids(app))
