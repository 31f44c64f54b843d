"""Index persistence at gallery scale: what a change writes, and what a new process pays to search.

Issue #16 asks, at 1M faces: a search from a new process in <= 2 s, enrolling one image <= 1 s,
and a running server picking up another process's enrolment of 100 images in <= 1 s.

Setup (bounded memory, chunk by chunk): a real data directory (``AppContext``: key file,
SQLite database), with N synthetic subjects, each one reference image row and one template row
holding a random unit 512-d vector, encrypted exactly as the enroller encrypts it, and one
change-log entry listing them; the stored index is written from the same vectors in segments
of 64k rows (as a rebuild or compaction would leave it). No image is stored for the synthetic
subjects (nothing here reads them). Then:

- ``before``: the single-file format of main (one AES-GCM blob of the FAISS index and JSON id
  maps): save and cold load of a ``--before-faces`` gallery, timed with main's code path.
- ``enrol_one``: the real CLI, ``retroface gallery enrol`` of one LFW image into the gallery
  (process start to exit: the delta and the manifest are on disk when it exits), and the
  persist step alone, in process.
- ``new_process_search``: a new Python process opens the data directory, streams the segments
  into a flat index and searches one probe vector for the top 50: wall time from spawn to the
  candidate list, and the load/search split inside it.
- ``pickup``: a server (``IndexManager`` in another process, its index loaded) and this process
  committing 100 templates as one enrolment batch and persisting them; the time the server's next
  search takes to catch up through the change log and search.
- ``erase_one``: erasing one template (it rewrites the one segment holding it).
- ``compaction``: merging the deltas left by the steps above.

    python bench/incremental.py                 # 1M faces (the issue's size; ~25 min here)
    python bench/incremental.py --faces 200000  # quicker

Results go to ``bench/results/incremental.json``; the table is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 512
K = 50
PASSWORD = "a long bench password"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def folder_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}


def written(before: dict[str, int], after: dict[str, int]) -> int:
    """Bytes of files that are new or changed (by size or name) between two listings."""
    return sum(
        size for name, size in after.items() if before.get(name) != size or name == "MANIFEST"
    )


def setup(home: Path, n: int, seed: int) -> dict[str, Any]:
    """The gallery of ``n`` synthetic faces: database rows and the stored segments."""
    from sqlalchemy import insert

    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.search.segments import SEGMENT_ROWS, Added
    from retroface.storage.crypto import template_aad
    from retroface.storage.tables import (
        FaceTemplate,
        GalleryChange,
        GalleryState,
        ReferenceImage,
        Subject,
    )

    t0 = time.perf_counter()
    ctx = AppContext(Settings(home=home, database_url=f"sqlite:///{home / 'retroface.db'}"))
    key = ctx.engine.identity.key
    ctx.users.ensure_admin("admin", PASSWORD)
    rng = np.random.default_rng(seed)
    index = ctx.index
    store = index.store(key)
    parts: list[Added] = []

    def generate() -> Any:
        for start in range(0, n, SEGMENT_ROWS):
            m = min(SEGMENT_ROWS, n - start)
            vectors = unit(rng, m)
            ids = np.arange(start + 1, start + m + 1, dtype=np.int64)
            for lo in range(0, m, 20_000):
                hi = min(m, lo + 20_000)
                subjects, images, templates = [], [], []
                for j in range(lo, hi):
                    i = int(ids[j])
                    digest = hashlib.sha256(f"synthetic-{i}".encode()).hexdigest()
                    subjects.append({"id": i, "reference": f"S{i:08d}", "created_by": "bench"})
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
                            "model_key": key,
                            "embedding_enc": ctx.cipher.encrypt(
                                vectors[j].tobytes(), aad=template_aad(digest, key)
                            ),
                            "det_score": 0.9,
                        }
                    )
                with ctx.db.session() as s:
                    s.execute(insert(Subject), subjects)
                    s.execute(insert(ReferenceImage), images)
                    s.execute(insert(FaceTemplate), templates)
            yield Added(ids, ids.copy(), ids.copy(), vectors)
            print(f"  setup: {start + m:,} / {n:,} faces", file=sys.stderr, flush=True)

    with ctx.db.session() as s:
        s.add(GalleryState(id=1, version=1))
        s.add(GalleryChange(version=1, added=list(range(1, n + 1)), removed=[]))
    with store.writer() as w:
        w.replace_all(1, generate())
    del parts
    files = folder_bytes(store.folder)
    ctx.close()
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "model_key": key,
        "store_bytes": sum(files.values()),
        "store_files": len(files),
        "db_bytes": (home / "retroface.db").stat().st_size,
    }


def before(n: int, seed: int) -> dict[str, Any]:
    """main's single-file format: save and cold load, timed with its code path."""
    from retroface.search.index import index_from_bytes, new_index
    from retroface.storage.crypto import Cipher
    from retroface.storage.files import atomic_write

    rng = np.random.default_rng(seed)
    cipher = Cipher(os.urandom(32))
    index = new_index("flat", DIM)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        index.add(np.arange(start, start + m, dtype=np.int64), unit(rng, m))
    ids = range(n)
    with tempfile.TemporaryDirectory(dir=HERE / "results") as tmp:
        path = Path(tmp) / "x.flat.idx.enc"
        t = time.perf_counter()
        header = json.dumps(
            {
                "version": 1,
                "model_key": "k",
                "kind": "flat",
                "count": n,
                "maps": {"subject": {i: i for i in ids}, "image": {i: i for i in ids}},
            }
        ).encode()
        raw = len(header).to_bytes(4, "big") + header + index.to_bytes()
        atomic_write(path, cipher.encrypt(raw, aad=b"k"))
        del raw
        save_s = time.perf_counter() - t
        size = path.stat().st_size
        del index
        t = time.perf_counter()
        raw = cipher.decrypt(path.read_bytes(), aad=b"k")
        hl = int.from_bytes(raw[:4], "big")
        head = json.loads(raw[4 : 4 + hl])
        loaded = index_from_bytes("flat", raw[4 + hl :])
        {int(k): v for k, v in head["maps"]["subject"].items()}
        {int(k): v for k, v in head["maps"]["image"].items()}
        load_s = time.perf_counter() - t
        assert loaded.count() == n
    return {"faces": n, "file_bytes": size, "save_s": round(save_s, 2), "load_s": round(load_s, 2)}


def cpu_seconds(who: int) -> float:
    """User + system CPU time: on a loaded machine, wall time includes waiting for a core."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def child_env(home: Path) -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "RETROFACE_HOME": str(home),
        "RETROFACE_DATABASE_URL": f"sqlite:///{home / 'retroface.db'}",
    }


def child(role: str, home: Path, key: str) -> None:
    """Runs in the spawned process: ``search`` (a new process's first search) or ``server``."""
    t0 = time.perf_counter()
    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.search.index_manager import IndexManager

    imported = time.perf_counter()
    ctx = AppContext(Settings(home=home, database_url=f"sqlite:///{home / 'retroface.db'}"))
    manager = IndexManager(ctx.db, ctx.cipher, home / "index", dim=DIM)  # db: migrations checked
    probe = unit(np.random.default_rng(7), 1)
    opened = time.perf_counter()
    with manager.reading(key) as loaded:
        loaded_at = time.perf_counter()
        _, ids = loaded.index.search(probe, K)
        candidates = [(int(i), loaded.subject_of[int(i)]) for i in ids[0] if i >= 0]
    done = time.perf_counter()
    out = {
        "imports_s": imported - t0,
        "open_s": opened - imported,
        "load_s": loaded_at - opened,
        "search_s": done - loaded_at,
        "candidates": len(candidates),
        "count": loaded.index.count(),
        "stats": dict(manager.stats),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_s": cpu_seconds(resource.RUSAGE_SELF),
    }
    print(json.dumps(out), flush=True)
    if role != "server":
        return
    for line in sys.stdin:  # each line: another process has persisted a change; search now
        t = time.perf_counter()
        with manager.reading(key) as loaded:
            caught_up = time.perf_counter()  # the change read and applied; the search follows
            _, ids = loaded.index.search(probe, K)
            count, version = loaded.index.count(), loaded.version
        done = time.perf_counter()
        print(
            json.dumps(
                {
                    "pickup_s": done - t,
                    "catch_up_s": caught_up - t,
                    "search_s": done - caught_up,
                    "count": count,
                    "version": version,
                    "stats": dict(manager.stats),
                    "tag": line.strip(),
                }
            ),
            flush=True,
        )


def spawn(role: str, home: Path, key: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            role,
            "--home",
            str(home),
            "--key",
            key,
        ],
        env=child_env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def commit_batch(ctx: Any, key: str, first_id: int, m: int, seed: int) -> int:
    """One enrolment batch as the enroller commits it: rows, then the version bump with the
    change-log entry, in one transaction."""
    from retroface.storage.crypto import template_aad
    from retroface.storage.tables import FaceTemplate, ReferenceImage, Subject
    from retroface.storage.versions import bump_gallery_version

    vectors = unit(np.random.default_rng(seed), m)
    with ctx.db.session() as s:
        added = []
        for j in range(m):
            digest = hashlib.sha256(f"batch-{seed}-{j}".encode()).hexdigest()
            subject = Subject(reference=f"B{seed}-{j}", created_by="bench")
            image = ReferenceImage(
                subject=subject, content_hash=digest, original_name="x.jpg", width=112, height=112
            )
            s.add_all([subject, image])
            s.flush()
            template = FaceTemplate(
                image=image,
                subject_id=subject.id,
                model_key=key,
                embedding_enc=ctx.cipher.encrypt(
                    vectors[j].tobytes(), aad=template_aad(digest, key)
                ),
                det_score=0.9,
            )
            s.add(template)
            s.flush()
            added.append(template.id)
        return bump_gallery_version(s, added=added)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--before-faces", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "incremental.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--key", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home, args.key)
        return

    (HERE / "results").mkdir(exist_ok=True)
    work = args.dir or Path(tempfile.mkdtemp(dir=HERE / "results", prefix="incremental-"))
    home = work / "home"
    result: dict[str, Any] = {"faces": args.faces, "load_before": os.getloadavg()}
    try:
        print(f"setup: {args.faces:,} faces in {home}", file=sys.stderr)
        result["setup"] = setup(home, args.faces, args.seed)
        key = result["setup"]["model_key"]
        folder = None

        from retroface.config import Settings
        from retroface.context import AppContext

        ctx = AppContext(Settings(home=home, database_url=f"sqlite:///{home / 'retroface.db'}"))
        folder = ctx.index.folder_for(key)

        # a new process's first search (twice: the second with the files in the page cache)
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            proc = spawn("search", home, key)
            out, _ = proc.communicate()
            runs.append({"wall_s": time.perf_counter() - t, **json.loads(out)})
            runs[-1]["load_avg"] = os.getloadavg()[0]
        result["new_process_search"] = runs

        # the server: loaded once, then follows other processes' changes
        server = spawn("server", home, key)
        assert server.stdout is not None and server.stdin is not None
        result["server_start"] = json.loads(server.stdout.readline())

        # enrolling one image through the real CLI (start to exit; persisted when it exits)
        image = sorted((ROOT.parent / "shared/data/lfw").rglob("*.jpg"))[0]
        listing = folder_bytes(folder)
        env = child_env(home) | {"RETROFACE_USER": "admin", "RETROFACE_PASSWORD": PASSWORD}
        cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "retroface.cli.main",
                "gallery",
                "enrol",
                "--multi-face",
                "main",
                "--allow-low-quality",
                "--json",
                str(image),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        cli_s = time.perf_counter() - t
        assert cli.returncode == 0, cli.stderr
        result["enrol_one_cli"] = {
            "wall_s": cli_s,
            "cpu_s": cpu_seconds(resource.RUSAGE_CHILDREN) - cpu,
            "bytes_written": written(listing, folder_bytes(folder)),
            "enrolled": json.loads(cli.stdout).get("enrolled"),
        }
        server.stdin.write("cli-enrol-1\n")
        server.stdin.flush()
        result["pickup_cli"] = json.loads(server.stdout.readline())

        # the persist step alone, for one template and for a batch of 100
        index = ctx.index
        for label, m, seed in (("persist_one", 1, 101), ("persist_100", 100, 102)):
            commit_batch(ctx, key, 0, m, seed)
            listing = folder_bytes(folder)
            t = time.perf_counter()
            index.persist(key)
            result[label] = {
                "seconds": time.perf_counter() - t,
                "bytes_written": written(listing, folder_bytes(folder)),
            }
            server.stdin.write(f"{label}\n")
            server.stdin.flush()
            result[f"pickup_{label.split('_')[1]}"] = json.loads(server.stdout.readline())

        # erasing one synthetic subject: the one segment holding it is rewritten
        from retroface.core.access import Principal
        from retroface.core.roles import Role

        admin = Principal(id=1, username="admin", roles=frozenset({Role.ADMIN}))
        listing = folder_bytes(folder)
        t = time.perf_counter()
        ctx.gallery.erase(admin, "S00000005", reason="bench")
        result["erase_one"] = {
            "seconds": time.perf_counter() - t,
            "bytes_written": written(listing, folder_bytes(folder)),
        }
        server.stdin.write("erase\n")
        server.stdin.flush()
        result["pickup_erase"] = json.loads(server.stdout.readline())

        manifest = ctx.index.store(key).manifest()
        assert manifest is not None
        result["deltas_before_compaction"] = len(manifest.deltas)
        t = time.perf_counter()
        ctx.index.compact(key, force=True)
        result["compaction_s"] = time.perf_counter() - t
        server.stdin.close()
        server.wait(60)
        ctx.close()
        # a new process after all that: still loads from the segments
        t = time.perf_counter()
        proc = spawn("search", home, key)
        out, _ = proc.communicate()
        result["new_process_search_after"] = {"wall_s": time.perf_counter() - t, **json.loads(out)}
        result["before"] = before(args.before_faces, args.seed)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2))
    report(result)


def split(pickup: dict[str, float]) -> str:
    return f"{pickup['catch_up_s'] * 1000:.0f} + {pickup['search_s'] * 1000:.0f} ms"


def report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"index persistence, {r['faces']:,} synthetic faces")
    table.add_column("measure")
    table.add_column("value", justify="right")
    s = r["setup"]
    rows = [
        (
            "stored index (segments + manifest)",
            f"{s['store_bytes'] / 1e9:.2f} GB, {s['store_files']} files",
        ),
        ("new process: spawn to top-50 (first)", f"{r['new_process_search'][0]['wall_s']:.2f} s"),
        (
            "new process: spawn to top-50 (second)",
            f"{r['new_process_search'][1]['wall_s']:.2f} s",
        ),
        ("  of which load (stream segments)", f"{r['new_process_search'][1]['load_s']:.2f} s"),
        ("  of which search", f"{r['new_process_search'][1]['search_s'] * 1000:.0f} ms"),
        ("  of which imports", f"{r['new_process_search'][1]['imports_s']:.2f} s"),
        ("  of which opening the database", f"{r['new_process_search'][1]['open_s']:.2f} s"),
        ("enrol one image, real CLI, start to exit", f"{r['enrol_one_cli']['wall_s']:.2f} s"),
        ("  its CPU time", f"{r['enrol_one_cli']['cpu_s']:.2f} s"),
        ("  bytes written", f"{r['enrol_one_cli']['bytes_written']:,}"),
        ("persist one template (in process)", f"{r['persist_one']['seconds'] * 1000:.0f} ms"),
        ("persist 100 templates (in process)", f"{r['persist_100']['seconds'] * 1000:.0f} ms"),
        ("  bytes written", f"{r['persist_100']['bytes_written']:,}"),
        (
            "server picks up the CLI enrolment: catch-up + search",
            split(r["pickup_cli"]),
        ),
        (
            "server picks up 1: catch-up + search",
            split(r["pickup_one"]),
        ),
        (
            "server picks up 100: catch-up + search",
            split(r["pickup_100"]),
        ),
        ("erase one subject (rewrites one segment)", f"{r['erase_one']['seconds']:.2f} s"),
        ("  bytes written", f"{r['erase_one']['bytes_written']:,}"),
        (
            "server picks up the erasure: catch-up + search",
            split(r["pickup_erase"]),
        ),
        (f"compaction of {r['deltas_before_compaction']} deltas", f"{r['compaction_s']:.2f} s"),
        ("new process after compaction", f"{r['new_process_search_after']['wall_s']:.2f} s"),
        (
            f"before (main), {r['before']['faces']:,} faces: file",
            f"{r['before']['file_bytes'] / 1e9:.2f} GB",
        ),
        ("before (main): save whole file", f"{r['before']['save_s']:.2f} s"),
        ("before (main): cold load", f"{r['before']['load_s']:.2f} s"),
        ("load average before / after", f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}"),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
