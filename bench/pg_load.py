"""PostgreSQL as the system of record under concurrency: enrolment and search at once.

Creates a fresh schema in a PostgreSQL database (dropped at the end), seeds a gallery, users and
an approved case, starts the real server (``retroface serve``: the API on uvicorn) on loopback,
then for ``--seconds`` runs at the same time

- ``--workers`` enrolment worker *processes* (default 8), each with its own application context
  on the same database and data directory (as RQ workers would run), enrolling LFW identities
  (up to ``--images-per-identity`` images each, one identity per enrolment run) from their share
  of the identities not yet in the gallery, and reporting what they enrolled;
- ``--clients`` search clients (default 50) posting ``/api/v1/searches`` in a loop, rotating over
  a few probes, as ``bench/api_load.py`` does.

Then it checks that nothing was lost, against the database and the live server:

- every image a worker reports enrolled is in ``reference_images`` with a template, and the
  counts of images, templates and subjects equal the seed plus what the workers report;
- every template is searchable: a fresh context (its own index, built from the database and the
  encrypted files) finds each template's subject among its top 5 with similarity ≥ 0.99;
- the live server (which followed the workers' enrolments) finds the subject at rank 1 for a
  sample of the enrolled images uploaded as probes;
- a search record and a ``search.run`` audit record exist for every search answered 201;
- the audit chain verifies (hash chain, checkpoints, anchor) after 9 processes wrote it.

It reports errors, throughput and p50/p99 per operation, prints a table and writes JSON. Nothing
leaves the machine; the default duration is the ten minutes of issue #14.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from api_load import DATA, PASSWORD, free_port, scratch_schema, server_side

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
#: Probes the search clients rotate over: the second image of this many seeded people.
PROBE_PEOPLE = 4


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.array(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def seed(home: Path, url: str, names: list[str]) -> int:
    """Gallery (first image of each of ``names``), users and an approved case; returns the number
    of images enrolled."""
    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.gallery.enrol import EnrolItem

    ctx = AppContext(Settings(home=home, database_url=url))
    ctx.db  # noqa: B018 - opening the database migrates the fresh schema to head
    assert ctx.schema_change is not None
    ctx.schema.record_upgrade(ctx.schema_change, by="bench/pg_load.py")
    admin = ctx.users.ensure_admin("admin", PASSWORD) or ctx.users.principal_for("admin")
    items = [EnrolItem(sorted((DATA / "lfw" / n).glob("*.jpg"))[0], n) for n in names]
    summary = ctx.enroller(require_quality=False, multi_face="main").run(admin, items)
    op = ctx.users.add(admin, "olive", "operator", PASSWORD)
    auth = ctx.users.add(admin, "arthur", "authoriser", PASSWORD)
    ctx.cases.open(op, "LOAD-1", "robbery", "load test case", "load test on loopback only")
    ctx.cases.authorise(auth, "LOAD-1", True, "load test", valid_days=1)
    ctx.close()
    return summary.enrolled


def enrol_worker(
    index: int, home: str, url: str, names: list[str], per_identity: int, until: float, out: str
) -> None:
    """One enrolment process: one identity per run until the time is up; writes its report."""
    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.gallery.enrol import EnrolItem
    from retroface.storage.blobstore import content_hash

    report: dict[str, Any] = {"worker": index, "runs": [], "enrolled": [], "errors": []}
    ctx = AppContext(Settings(home=Path(home), database_url=url, threads=1))
    try:
        admin = ctx.users.authenticate_password("admin", PASSWORD)
        enroller = ctx.enroller(require_quality=False, multi_face="main")
        for name in names:
            if time.time() >= until:
                break
            paths = sorted((DATA / "lfw" / name).glob("*.jpg"))[:per_identity]
            items = [EnrolItem(p, name) for p in paths]
            t = time.perf_counter()
            try:
                summary = enroller.run(admin, items)
            except Exception as exc:
                report["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            took = time.perf_counter() - t
            rejected = {r.path for r in summary.rejected}
            done = [p for p in paths if str(p) not in rejected]
            if summary.enrolled != len(done):  # skipped: an identical image enrolled before
                report["errors"].append(
                    f"{name}: enrolled {summary.enrolled} of {len(done)} accepted images"
                )
            report["runs"].append([round(took, 4), summary.enrolled, len(rejected)])
            report["enrolled"] += [[name, content_hash(p.read_bytes())] for p in done]
    finally:
        ctx.close()
        Path(out).write_text(json.dumps(report))


async def search_client(
    c: httpx.AsyncClient,
    bodies: list[dict[str, object]],
    until: float,
    lat: list[float],
    errors: list[str],
    ok: list[int],
) -> None:
    n = random.randrange(len(bodies))
    while time.perf_counter() < until:
        t = time.perf_counter()
        try:
            r = await c.post("/api/v1/searches", json=bodies[n % len(bodies)])
            if r.status_code == 201:
                ok.append(r.json()["search_id"])
            else:
                errors.append(f"{r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        lat.append(time.perf_counter() - t)
        n += 1


async def upload_probe(c: httpx.AsyncClient, path: Path) -> dict[str, object]:
    """Upload ``path`` to case LOAD-1; the search body for its largest face."""
    r = await c.post(
        "/api/v1/cases/LOAD-1/probes",
        data={"source": "CCTV", "how_obtained": "load test exhibit"},
        files={"file": (path.name, path.read_bytes(), "image/jpeg")},
    )
    r.raise_for_status()
    probe = r.json()
    faces = probe["faces"]

    def area(f: dict[str, Any]) -> float:
        b = f["box"]
        return float((b[2] - b[0]) * (b[3] - b[1]))

    face = max(faces, key=area)["face"] if faces else 0
    return {"case": "LOAD-1", "probe_id": probe["probe_id"], "face": face, "top_k": 20}


async def login(base: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        r = await c.post("/api/v1/auth/token", json={"username": "olive", "password": PASSWORD})
        r.raise_for_status()
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def search_load(
    base: str, clients: int, seconds: float, probes: list[Path]
) -> dict[str, Any]:
    headers = await login(base)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits, headers=headers) as c:
        bodies = [await upload_probe(c, p) for p in probes]
        for body in bodies:  # before the clock starts: the server loads the index on the first
            (await c.post("/api/v1/searches", json=body)).raise_for_status()
        lat: list[float] = []
        errors: list[str] = []
        ok: list[int] = []
        start = time.perf_counter()
        await asyncio.gather(
            *(search_client(c, bodies, start + seconds, lat, errors, ok) for _ in range(clients))
        )
        elapsed = time.perf_counter() - start
    return {
        "requests": len(lat),
        "ok": len(ok),
        "ok_ids": ok,
        "errors": errors,
        "seconds": elapsed,
        "latencies": lat,
    }


async def live_check(base: str, sample: list[tuple[str, str]]) -> dict[str, Any]:
    """Search the live server for each (identity, image path): the identity must be rank 1."""
    headers = await login(base)
    found, missed = 0, []
    async with httpx.AsyncClient(base_url=base, timeout=120, headers=headers) as c:
        for name, path in sample:
            body = await upload_probe(c, Path(path))
            r = await c.post("/api/v1/searches", json=body)
            r.raise_for_status()
            cands = r.json()["candidates"]
            if cands and cands[0]["subject"] == name:
                found += 1
            else:
                missed.append([name, [c["subject"] for c in cands[:3]]])
    return {"sampled": len(sample), "rank1": found, "missed": missed}


def reconcile(home: Path, url: str, seeded: int, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Compare the database (and a fresh index built from it) with what the workers report."""
    from sqlalchemy import func, select

    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.storage.crypto import template_aad
    from retroface.storage.tables import FaceTemplate, ReferenceImage, Subject

    ctx = AppContext(Settings(home=home, database_url=url, threads=1))
    try:
        enrolled = [tuple(e) for r in reports for e in r["enrolled"]]
        model_key = ctx.engine.identity.key
        with ctx.db.session() as s:
            images = dict(s.execute(select(ReferenceImage.content_hash, ReferenceImage.id)).all())
            n_templates = s.scalar(select(func.count(FaceTemplate.id)))
            n_subjects = s.scalar(select(func.count(Subject.id)))
            with_template = set(s.scalars(select(FaceTemplate.image_id)))
            templates = s.execute(
                select(
                    FaceTemplate.subject_id,
                    FaceTemplate.image_id,
                    FaceTemplate.embedding_enc,
                    ReferenceImage.content_hash,
                ).join(ReferenceImage, FaceTemplate.image_id == ReferenceImage.id)
            ).all()
        missing = [h for _, h in enrolled if h not in images]
        no_template = [h for _, h in enrolled if h in images and images[h] not in with_template]
        not_found: list[int] = []
        for subject_id, image_id, enc, digest in templates:
            vec = np.frombuffer(ctx.cipher.decrypt(enc, aad=template_aad(digest, model_key)), "f4")
            matches, _ = ctx.matcher.match(vec, model_key, 5, None)
            if not any(m.subject_id == subject_id and m.similarity >= 0.99 for m in matches):
                not_found.append(image_id)
        verify = ctx.audit.verify()
        return {
            "images_in_db": len(images),
            "images_expected": seeded + len(enrolled),
            "templates_in_db": n_templates,
            "subjects_in_db": n_subjects,
            "enrolled_missing": len(missing),
            "enrolled_without_template": len(no_template),
            "templates_checked": len(templates),
            "templates_not_found_by_fresh_index": len(not_found),
            "audit_chain_ok": verify.ok,
            "audit_records_checked": verify.checked,
            "audit_problem": verify.problem,
        }
    finally:
        ctx.close()


def search_records(home: Path, url: str, ids: list[int]) -> dict[str, int]:
    from sqlalchemy import func, select

    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.storage.tables import AuditRecord, SearchRecord

    ctx = AppContext(Settings(home=home, database_url=url))
    try:
        with ctx.db.session() as s:
            stored = set(s.scalars(select(SearchRecord.id)))
            audited = s.scalar(
                select(func.count(AuditRecord.seq)).where(AuditRecord.action == "search.run")
            )
        return {
            "answered_201": len(ids),
            "search_records_missing": len(set(ids) - stored),
            "search_records_total": len(stored),
            "search_run_audit_records": int(audited or 0),
        }
    finally:
        ctx.close()


def wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    for _ in range(240):
        if server.poll() is not None:
            raise SystemExit("server exited")
        try:
            if httpx.get(f"{base}/api/v1/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not become ready")


def run(args: argparse.Namespace, url: str, home: Path, console: Console) -> dict[str, Any]:
    people = sorted(p.name for p in (DATA / "lfw").iterdir() if p.is_dir())
    gallery, rest = people[: args.identities], people[args.identities :]
    probes = [
        imgs[1]
        for imgs in (sorted((DATA / "lfw" / n).glob("*.jpg")) for n in gallery)
        if len(imgs) > 1
    ][:PROBE_PEOPLE]
    with console.status(f"Seeding {len(gallery)} identities, users and a case…"):
        seeded = seed(home, url, gallery)
    port = free_port()
    server_log = args.json.with_suffix(".server.log").open("wb")
    env = os.environ | {"RETROFACE_HOME": str(home), "RETROFACE_DATABASE_URL": url}
    if args.api_threads:
        env["RETROFACE_API_THREADS"] = str(args.api_threads)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retroface.cli.main",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=server_log,
    )
    base = f"http://127.0.0.1:{port}"
    reports: list[dict[str, Any]] = []
    procs: list[Any] = []
    try:
        wait_ready(base, server)
        # the workers start loading their models now; the clock starts when the first is ready
        until = time.time() + args.seconds + 30
        spawn = mp.get_context("spawn")
        outs = [home / f"worker{i}.json" for i in range(args.workers)]
        procs = [
            spawn.Process(
                target=enrol_worker,
                args=(i, str(home), url, rest[i :: args.workers], args.images, until, str(o)),
            )
            for i, o in enumerate(outs)
        ]
        for p in procs:
            p.start()
        time.sleep(30)  # model loading in the workers, so that both loads overlap fully
        with console.status(
            f"{args.workers} enrolment workers and {args.clients} search clients for "
            f"{args.seconds:.0f} s…"
        ):
            searched = asyncio.run(search_load(base, args.clients, args.seconds, probes))
            for p in procs:
                p.join(timeout=600)
        reports = [json.loads(o.read_text()) for o in outs if o.exists()]
        enrolled = [tuple(e) for r in reports for e in r["enrolled"]]
        rng = random.Random(14)
        sample = rng.sample(enrolled, min(args.live_sample, len(enrolled)))
        paths = {}
        for name in {n for n, _ in sample}:
            from retroface.storage.blobstore import content_hash

            for p in sorted((DATA / "lfw" / name).glob("*.jpg")):
                paths[content_hash(p.read_bytes())] = str(p)
        with console.status("Checking the live server…"):
            live = asyncio.run(live_check(base, [(n, paths[h]) for n, h in sample]))
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=30)
        server.terminate()
        server.wait(timeout=60)
        server_log.close()
    with console.status("Reconciling the database…"):
        checks = reconcile(home, url, seeded, reports)
        checks |= search_records(home, url, searched["ok_ids"])
    runs = [r for rep in reports for r in rep["runs"]]
    enrol_images = sum(r[1] for r in runs)
    worker_errors = [e for rep in reports for e in rep["errors"]]
    errors = searched["errors"] + worker_errors
    if len(reports) != args.workers:
        errors.append(f"{args.workers - len(reports)} worker(s) wrote no report")
    enrol_span = args.seconds + 30
    return {
        "database": "postgresql",
        "seconds": round(searched["seconds"], 1),
        "search_clients": args.clients,
        "enrol_workers": args.workers,
        "gallery_seeded_images": seeded,
        "errors": len(errors),
        "error_samples": errors[:5],
        "search": {
            "requests": searched["requests"],
            "throughput_per_s": round(searched["requests"] / searched["seconds"], 1),
            **percentiles(searched["latencies"]),
            **server_side(args.json.with_suffix(".server.log")),
        },
        "enrol": {
            "runs": len(runs),
            "images": enrol_images,
            "rejected": sum(r[2] for r in runs),
            "images_per_s": round(enrol_images / enrol_span, 2),
            "run_" + "p50_ms": percentiles([r[0] for r in runs])["p50_ms"],
            "run_" + "p99_ms": percentiles([r[0] for r in runs])["p99_ms"],
            "per_image_p50_ms": percentiles([r[0] / r[1] for r in runs if r[1]])["p50_ms"],
        },
        "nothing_lost": {**checks, "live_server": live},
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--postgres", default=PG_DEFAULT, help="database to make a fresh schema in")
    ap.add_argument("--seconds", type=float, default=600, help="search load duration")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--workers", type=int, default=8, help="enrolment processes")
    ap.add_argument("--identities", type=int, default=500, help="LFW identities seeded")
    ap.add_argument("--images", type=int, default=4, help="images per identity enrolled")
    ap.add_argument("--live-sample", type=int, default=30, help="enrolled images searched live")
    ap.add_argument("--api-threads", type=int, default=0, help="RETROFACE_API_THREADS")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results/pg_load.json")
    args = ap.parse_args()
    console = Console()
    load_before = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with scratch_schema(args.postgres) as url, tempfile.TemporaryDirectory() as tmp:
        result = run(args, url, Path(tmp), console)
    result["load_average_before"] = load_before
    lost = result["nothing_lost"]
    ok = (
        result["errors"] == 0
        and lost["images_in_db"] == lost["images_expected"]
        and lost["enrolled_missing"] == 0
        and lost["enrolled_without_template"] == 0
        and lost["templates_not_found_by_fresh_index"] == 0
        and lost["search_records_missing"] == 0
        and lost["audit_chain_ok"]
        and lost["live_server"]["rank1"] == lost["live_server"]["sampled"]
    )
    result["passed"] = ok
    table = Table(title="PostgreSQL under load: enrolment workers + search clients")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                table.add_row(f"{k}.{k2}", str(v2))
        elif k != "error_samples":
            table.add_row(k, str(v))
    console.print(table)
    for e in result["error_samples"]:
        console.print(f"[red]error[/] {e}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
