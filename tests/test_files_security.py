"""Files and docs hardening (issue #11, findings 8, 9 and three of 11).

- Batch enrolment reads only files that really lie in ``RETROFACE_IMPORT_DIR``: links out of it
  are refused at submission, when the job runs and when each file is opened; ``/etc/passwd`` is
  never opened.
- Uploads never touch the disk in plaintext: nothing is written under the temp folder while an
  image is enrolled or a probe submitted, even an upload bigger than Starlette's 1 MiB spool.
- Subject references containing ``/`` can be shown, enrolled into and erased over the API.
- The SQLite database and its ``-wal``/``-shm`` files are owner-only.
- The docs pages fetch nothing from another host; they are public only while
  ``RETROFACE_PUBLIC_DOCS`` is true.

File activity is observed with a Python audit hook (``sys.addaudithook``): it sees every
``open`` and ``tempfile`` call the process makes, including the unnamed ``O_TMPFILE`` file a
rolled-over ``SpooledTemporaryFile`` uses, which a directory scan cannot see.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import ADMIN
from tests.test_api import token_for

from retroface.api.app import create_app
from retroface.context import AppContext
from retroface.gallery.enrol import EnrolItem
from retroface.jobs.handlers import enrol_handler
from retroface.storage.db import Database

PASSWORD = "a long test password"


@pytest.fixture
def client(app: AppContext) -> Iterator[TestClient]:
    with TestClient(create_app(app)) as c:
        yield c


_watching: list[tuple[str, str]] | None = None


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _watching is None:
        return
    if event in ("open", "tempfile.mkstemp", "tempfile.mkdtemp", "os.mkdir") and args:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            _watching.append((event, os.fsdecode(path)))


sys.addaudithook(_hook)  # audit hooks cannot be removed: this one records only while watching


class FileWatch:
    """The paths the process opens or creates while in the ``with`` block."""

    def __enter__(self) -> FileWatch:
        global _watching
        _watching = []
        self.events = _watching
        return self

    def __exit__(self, *exc: object) -> None:
        global _watching
        _watching = None

    def under(self, folder: Path) -> list[tuple[str, str]]:
        base = os.path.realpath(folder)
        return [(e, p) for e, p in self.events if os.path.realpath(p).startswith(base)]

    def opened(self, path: str) -> bool:
        return any(p == path for _, p in self.events)


# ------------------------------------------------------------------ finding 8: import folder


@pytest.fixture
def import_tree(tmp_path: Path, data_dir: Path) -> tuple[Path, Path]:
    """``imp/`` with a real image, links to an image and to /etc/passwd outside it, and a linked
    folder pointing outside; ``outside/`` beside it."""
    people = data_dir / "people"
    imp, outside = tmp_path / "imp", tmp_path / "outside"
    (imp / "batch" / "joe_biden").mkdir(parents=True)
    (outside / "rose_leslie").mkdir(parents=True)
    shutil.copy(people / "joe_biden" / "biden.jpg", imp / "batch" / "joe_biden" / "biden.jpg")
    shutil.copy(people / "rose_leslie" / "img1.jpg", outside / "rose_leslie" / "img1.jpg")
    shutil.copy(people / "rose_leslie" / "img2.jpg", outside / "rose.jpg")
    (imp / "batch" / "joe_biden" / "linked.jpg").symlink_to(outside / "rose.jpg")
    (imp / "batch" / "joe_biden" / "passwd.jpg").symlink_to("/etc/passwd")
    (imp / "batch" / "rose_leslie").symlink_to(outside / "rose_leslie", target_is_directory=True)
    (imp / "linked_folder").symlink_to(outside, target_is_directory=True)
    (imp / "passwd.jpg").symlink_to("/etc/passwd")
    return imp, outside


def test_links_out_of_the_import_folder_are_refused(
    app: AppContext, client: TestClient, import_tree: tuple[Path, Path]
) -> None:
    imp, _ = import_tree
    app.settings.import_dir = imp
    admin = token_for(app, "admin2", "admin")
    # at submission: a linked folder or file pointing outside is refused outright
    for path in ("linked_folder", "passwd.jpg", "linked_folder/rose_leslie"):
        r = client.post("/api/v1/gallery/enrolments", headers=admin, json={"paths": [path]})
        assert r.status_code == 422, (path, r.text)
        assert "outside the import folder" in r.json()["error"]["message"]
    # a folder inside: the real image is enrolled, every link out is listed as refused, unread
    with FileWatch() as watch:
        r = client.post("/api/v1/gallery/enrolments", headers=admin, json={"paths": ["batch"]})
        assert r.status_code == 202, r.text
        app.jobs.wait_idle(120)
    job = client.get(f"/api/v1/jobs/{r.json()['id']}", headers=admin).json()
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["enrolled"] == 1
    rejected = {Path(x["path"]).name: x["reason"] for x in result["rejected"]}
    assert set(rejected) == {"linked.jpg", "passwd.jpg", "rose_leslie"}, rejected
    assert all("outside the import folder" in reason for reason in rejected.values()), rejected
    assert not watch.opened("/etc/passwd")
    assert watch.under(import_tree[1]) == []
    subjects = [s.reference for s in app.gallery.list_subjects(ADMIN, 0, 100)]
    assert subjects == ["joe_biden"]


def test_links_changed_after_submission_are_refused_when_the_job_runs(
    app: AppContext, import_tree: tuple[Path, Path]
) -> None:
    """The job checks again: a path that was a real folder at submission and is now a link out."""
    imp, outside = import_tree
    app.settings.import_dir = imp
    services = replace(app.job_services, import_dir=imp)
    (imp / "later").symlink_to(outside, target_is_directory=True)
    payload = {"paths": ["later", "passwd.jpg"], "actor": ADMIN.username}
    app.users.ensure_admin("admin", PASSWORD)
    with FileWatch() as watch:
        result = enrol_handler(services)(payload, lambda done, total: None)
    assert result["enrolled"] == 0
    assert {x["path"] for x in result["rejected"]} == {"later", "passwd.jpg"}
    assert not watch.opened("/etc/passwd")
    assert not watch.under(outside)


# ------------------------------------------------------------------ finding 9: uploads


def _big_face_jpeg(data_dir: Path) -> bytes:
    """A real face photo padded past Starlette's 1 MiB spool with random bytes after the JPEG's
    end marker (decoders stop there), so that a spill to disk would happen if it could."""
    jpeg = (data_dir / "people" / "joe_biden" / "biden.jpg").read_bytes()
    return jpeg + os.urandom(1_600_000)


def _files_containing(folder: Path, needle: bytes) -> list[Path]:
    found = []
    for f in folder.rglob("*"):
        if f.is_file() and needle in f.read_bytes():
            found.append(f)
    return found


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's temp folder for this test: a fresh folder nothing else writes to."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_gallery_upload_never_touches_disk_in_plaintext(
    app: AppContext, client: TestClient, data_dir: Path, private_tmp: Path
) -> None:
    admin = token_for(app, "admin2", "admin")
    image = _big_face_jpeg(data_dir)
    assert len(image) > 1024 * 1024
    with FileWatch() as watch:
        r = client.post(
            "/api/v1/gallery/subjects/joe_biden/images",
            headers=admin,
            files={"file": ("biden.jpg", image, "image/jpeg")},
            data={"inclusion_reason": "custody image"},
        )
    assert r.status_code == 201, r.text
    assert r.json()["enrolled"] == 1
    assert watch.under(private_tmp) == []
    assert _files_containing(private_tmp, image[:4096]) == []
    # nor anywhere in the data directory: only the encrypted blob is stored there
    assert _files_containing(app.home, image[:4096]) == []


def test_probe_upload_never_touches_disk_in_plaintext(
    app: AppContext, client: TestClient, data_dir: Path, private_tmp: Path
) -> None:
    op = token_for(app, "olive", "operator")
    auth = token_for(app, "arthur", "authoriser")
    case = {
        "reference": "C1",
        "offence_category": "robbery",
        "purpose": "identify the suspect",
        "justification": "serious offence, the only lead available",
    }
    assert client.post("/api/v1/cases", headers=op, json=case).status_code == 201
    decision = {"approve": True, "note": "ok"}
    assert client.post("/api/v1/cases/C1/decision", headers=auth, json=decision).is_success
    image = _big_face_jpeg(data_dir)
    with FileWatch() as watch:
        r = client.post(
            "/api/v1/cases/C1/probes",
            headers=op,
            files={"file": ("cctv.jpg", image, "image/jpeg")},
            data={"source": "CCTV", "how_obtained": "exhibit AB/1"},
        )
    assert r.status_code == 201, r.text
    assert watch.under(private_tmp) == []
    assert _files_containing(private_tmp, image[:4096]) == []


def test_oversized_body_refused_before_parsing(
    app: AppContext, client: TestClient, private_tmp: Path
) -> None:
    admin = token_for(app, "admin2", "admin")
    app.settings.max_upload_bytes = 1000
    # 3 MB: past Starlette's 1 MiB spool, so parsing it before refusing would write it to disk
    with FileWatch() as watch:
        r = client.post(
            "/api/v1/gallery/subjects/x/images",
            headers=admin,
            files={"file": ("big.jpg", os.urandom(3_000_000), "image/jpeg")},
        )
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
    assert "X-Request-ID" in r.headers
    assert watch.under(private_tmp) == []


# ------------------------------------------------------------------ finding 11: '/' in references


def test_subject_references_with_a_slash(
    app: AppContext, client: TestClient, data_dir: Path
) -> None:
    admin = token_for(app, "admin2", "admin")
    # a manifest may name such a subject; enrolled here the way the CLI does
    item = EnrolItem(data_dir / "people" / "joe_biden" / "biden.jpg", "unit/7")
    assert app.enroller().run(ADMIN, [item]).enrolled == 1
    r = client.get("/api/v1/gallery/subjects/unit/7", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["reference"] == "unit/7"
    other = (data_dir / "people" / "rose_leslie" / "img1.jpg").read_bytes()
    r = client.post(
        "/api/v1/gallery/subjects/unit/8/images",
        headers=admin,
        files={"file": ("img1.jpg", other, "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    assert client.get("/api/v1/gallery/subjects/unit/8", headers=admin).status_code == 200
    r = client.delete("/api/v1/gallery/subjects/unit/7?reason=test", headers=admin)
    assert r.status_code == 200, r.text
    assert client.get("/api/v1/gallery/subjects/unit/7", headers=admin).status_code == 404
    assert client.get("/api/v1/gallery/subjects/unit/8", headers=admin).status_code == 200


# ------------------------------------------------------------------ finding 11: database mode


def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, under which SQLite would create 0644 files
    try:
        path = tmp_path / "home" / "retroface.db"
        db = Database(f"sqlite:///{path}")
        db.migrate()
        with db.engine.connect() as conn:  # a reader keeps -wal and -shm in place
            conn.exec_driver_sql("SELECT 1")
            modes = {f.name: f.stat().st_mode & 0o777 for f in path.parent.iterdir() if f.is_file()}
        db.dispose()
        assert {"retroface.db", "retroface.db-wal", "retroface.db-shm"} <= set(modes), modes
        assert all(m == 0o600 for m in modes.values()), {k: oct(v) for k, v in modes.items()}
        # a database left readable by an earlier version is tightened when next opened
        path.chmod(0o644)
        Database(f"sqlite:///{path}").dispose()
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# ------------------------------------------------------------------ finding 11: docs


def _foreign_urls(text: str) -> list[str]:
    return [
        u for u in re.findall(r"(?:https?:)?//[\w.-]+[^\s\"'<>]*", text) if "testserver" not in u
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_docs_load_nothing_from_another_host(client: TestClient) -> None:
    for url in ("/api/v1/docs", "/api/v1/redoc"):
        r = client.get(url)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert _foreign_urls(r.text) == [], (url, _foreign_urls(r.text))
        assert "/api/v1/openapi.json" in r.text
        for asset in re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text):
            assert client.get(asset).status_code == 200, asset
    assert client.get("/api/v1/openapi.json").json()["info"]["title"] == "retroface"
    assert client.get("/api/v1/docs/assets/..%2F__init__.py").status_code in (401, 404)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_docs_behind_a_token_when_not_public(app: AppContext) -> None:
    app.settings.public_docs = False
    with TestClient(create_app(app)) as client:
        for url in ("/api/v1/openapi.json", "/api/v1/docs", "/api/v1/redoc"):
            r = client.get(url)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        headers = token_for(app, "rita", "reviewer")  # any role may read them
        for url in ("/api/v1/openapi.json", "/api/v1/docs", "/api/v1/redoc"):
            assert client.get(url, headers=headers).status_code == 200, url


def test_video_folder_jobs_skip_links_out_of_the_import_folder(tmp_path: Path) -> None:
    from retroface.jobs.video import payload_paths

    imp, outside = tmp_path / "imp", tmp_path / "outside"
    (imp / "cams").mkdir(parents=True)
    outside.mkdir()
    (imp / "cams" / "a.mp4").write_bytes(b"\0")
    (outside / "b.mp4").write_bytes(b"\0")
    (imp / "cams" / "b.mp4").symlink_to(outside / "b.mp4")
    assert payload_paths(imp, {"folder": "cams"}) == [imp / "cams" / "a.mp4"]
