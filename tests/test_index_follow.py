"""A process follows another's enrolments and erasures through the change log (issue #16).

Two ``AppContext`` on one database and data directory are two processes (a server and a CLI run).
The follower must read only what changed: ``IndexManager.stats`` counts how each state came to be.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import delete, select
from tests.conftest import ADMIN
from tests.test_gallery import embedding_of

from retroface.context import AppContext
from retroface.gallery.enrol import items_from_paths
from retroface.storage.tables import FaceTemplate, GalleryChange, Subject


def enrol(app: AppContext, data_dir: Path, *people: str) -> None:
    app.enroller().run(ADMIN, items_from_paths([data_dir / "people" / p for p in people]))


def template_ids(app: AppContext, reference: str | None = None) -> set[int]:
    with app.db.session() as s:
        query = select(FaceTemplate.id)
        if reference is not None:
            query = query.join(Subject, FaceTemplate.subject_id == Subject.id).where(
                Subject.reference == reference
            )
        return set(s.scalars(query))


def stored_template_ids(app: AppContext, key: str) -> set[int]:
    """The template ids the stored segments hold."""
    store = app.index.store(key)
    manifest = store.manifest()
    assert manifest is not None
    return {int(i) for seg in manifest.segments for i in store.read_ids(seg)[0]}


def test_server_follows_another_process(
    make_app: Callable[..., AppContext], data_dir: Path
) -> None:
    cli = make_app()
    enrol(cli, data_dir, "barack_obama", "joe_biden")
    key = cli.engine.identity.key
    server = make_app()
    assert set(server.index.get(key).subject_of) == template_ids(cli)
    assert server.index.stats == {"file": 1}

    # another process enrols, then erases: the server reads only those changes, at once: no
    # change of its own is in flight, so it does not wait for an apply of its own (an hour here)
    server.index.catch_up_s = 3600
    enrol(cli, data_dir, "kit_harington", "rose_leslie")
    follower = threading.Thread(target=server.index.get, args=(key,), daemon=True)
    follower.start()
    follower.join(120)
    assert not follower.is_alive()
    assert set(server.index.get(key).subject_of) == template_ids(cli)
    erased = template_ids(cli, "joe_biden")
    cli.gallery.erase(ADMIN, "joe_biden", reason="court order")
    loaded = server.index.get(key)
    assert set(loaded.subject_of) == template_ids(cli) and not erased & set(loaded.subject_of)
    assert loaded.index.count() == len(template_ids(cli))
    assert server.index.stats == {"file": 1, "catch_up": 2}
    assert server.gallery.check(ADMIN, key).index_matches_database
    # the erased person is not found any more; the others are
    probe = embedding_of(server, data_dir / "people/joe_biden/biden2.jpg")
    matches, _ = server.matcher.match(probe, key, top_k=3)
    with server.db.session() as s:
        refs = {sid: ref for sid, ref in s.execute(select(Subject.id, Subject.reference))}
    assert "joe_biden" not in {refs.get(m.subject_id) for m in matches}


def test_new_process_brings_an_old_file_forward(
    make_app: Callable[..., AppContext], data_dir: Path, tmp_path: Path
) -> None:
    first = make_app()
    enrol(first, data_dir, "barack_obama")
    key = first.engine.identity.key
    folder = first.index.folder_for(key)
    old = tmp_path / "old-store"
    shutil.copytree(folder, old)
    obama = template_ids(first, "barack_obama")
    enrol(first, data_dir, "kit_harington", "rose_leslie")
    first.gallery.erase(ADMIN, "barack_obama", reason="retention")
    # the stored index is behind the database (e.g. a crash before persisting)
    shutil.rmtree(folder)
    shutil.copytree(old, folder)
    late = make_app()
    loaded = late.index.get(key)
    assert set(loaded.subject_of) == template_ids(first)
    assert late.index.stats == {"file": 1, "catch_up": 1}
    assert late.gallery.check(ADMIN, key).index_matches_database
    # the catch-up removed a template, so the store was written forward: Obama's vectors went
    store = late.index.store(key).manifest()
    assert store is not None and store.version == loaded.version
    stored = stored_template_ids(late, key)
    assert stored == template_ids(first) and not obama & stored


def test_gap_in_the_log_rebuilds(
    make_app: Callable[..., AppContext], data_dir: Path, tmp_path: Path
) -> None:
    first = make_app()
    enrol(first, data_dir, "barack_obama")
    key = first.engine.identity.key
    folder = first.index.folder_for(key)
    old = tmp_path / "old-store"
    shutil.copytree(folder, old)
    enrol(first, data_dir, "rose_leslie")
    with first.db.session() as s:  # versions from before the log existed look like this
        s.execute(delete(GalleryChange))
    shutil.rmtree(folder)
    shutil.copytree(old, folder)
    late = make_app()
    assert set(late.index.get(key).subject_of) == template_ids(first)
    assert late.index.stats["rebuild"] == 1 and "catch_up" not in late.index.stats
    assert stored_template_ids(late, key) == template_ids(first)
