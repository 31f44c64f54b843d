"""Load test of the REST API on loopback: N concurrent clients searching for S seconds.

Starts `retroface serve` on 127.0.0.1 with a fresh data directory, enrols a gallery from LFW,
creates users and an approved case with one probe, then has N clients POST /api/v1/searches in a
loop until the time is up. Bounded in count and time; traffic never leaves the machine.
Reports throughput, latency p50/p99 and errors, and writes JSON.

``--postgres URL`` runs the server on PostgreSQL in a fresh schema of that database, dropped at the
end. ``--py-spy FILE`` samples the server with py-spy (PyPI ``py-spy``) for the whole load and
writes its collapsed stacks to FILE, with a breakdown by kind of work in the JSON
(:func:`breakdown`; docs/performance.md).

``--bad-logins M`` adds M clients that POST /api/v1/auth/token with wrong passwords as fast as
they are answered (ignoring Retry-After, as an attacker would), to show that a login flood
does not starve searches: compare searches/s with and without them, and count 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

DATA = Path(os.environ.get("RETROFACE_TEST_DATA", Path(__file__).parents[1] / "../shared/data"))
PASSWORD = "a long load-test password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def scratch_schema(url: str) -> Iterator[str]:
    """A fresh schema in the PostgreSQL database at ``url``, dropped (with everything in it) at
    the end; yields a URL whose connections use it (``search_path``)."""
    import secrets

    from sqlalchemy import create_engine, text

    schema = f"bench_{secrets.token_hex(5)}"
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


#: Waits told apart by the innermost frame of a sample (py-spy counts a thread blocked in C code
#: that released the GIL as active, so these are wall time, not CPU).
WAITS: dict[str, str] = {
    "Connection.wait (psycopg": "DB: waiting for PostgreSQL's answer",
    "EpollSelector.select": "event loop idle (epoll)",
    "Condition.wait (threading": "thread pool hand-off (wait/notify)",
    "Condition.notify (threading": "thread pool hand-off (wait/notify)",
    "_write_to_self (asyncio": "thread pool hand-off (wait/notify)",
}
#: A frame anywhere in the stack that names the wait: SQLite's BEGIN IMMEDIATE queues on the
#: database write lock inside the driver.
WAITS_ANYWHERE: dict[str, str] = {"_sqlite_begin": "DB: waiting for SQLite's write lock"}
#: Otherwise the first rule (innermost frame first) whose pattern occurs in a frame's
#: "function (file)" text names the kind of work.
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("image decode", ("decode_image", "imdecode", "media/images.py")),
    ("face detection", ("scrfd.py",)),
    ("embedding", ("arcface.py", "alignment.py")),
    ("index search (faiss)", ("search/index", "matcher.py", "faiss")),
    ("audit writes", ("audit/log.py", "audit/guard.py", "audit/chain.py", "audit/anchor.py")),
    ("password/token hashing", ("argon2", "hashlib", "_hash_token", "authenticate_token")),
    ("DB: SQLAlchemy + driver work", ("sqlalchemy", "psycopg", "sqlite3", "storage/db.py")),
    ("serialization (pydantic/json)", ("pydantic", "json", "jsonable_encoder", "serialize")),
    (
        "HTTP + event loop (uvicorn/starlette/anyio)",
        ("uvicorn", "starlette", "fastapi", "anyio", "h11", "httptools", "asyncio"),
    ),
]


def classify(frames: list[str]) -> str:
    inner = frames[-1]
    for pattern, kind in WAITS.items():
        if pattern in inner:
            return kind
    for pattern, kind in WAITS_ANYWHERE.items():
        if any(pattern in f for f in frames):
            return kind
    for frame in reversed(frames):
        hit = next((k for k, pats in KINDS if any(p in frame for p in pats)), None)
        if hit:
            return hit
    return "other"


def breakdown(collapsed: Path) -> dict[str, float]:
    """Share of samples per kind of work from py-spy's collapsed stacks (``frame;frame;… N``)."""
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        kind = classify(stack.split(";"))
        counts[kind] = counts.get(kind, 0) + int(n)
        total += int(n)
    return {k: round(100 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


#: Steps of POST /searches, by a function on the stack (inclusive: a step's share counts its
#: database work and waits too).
STEPS: dict[str, str] = {
    "the route in a worker thread (all steps)": "search (retroface/api/routers/casework.py",
    "token check (authorise dependency)": "UserService.authenticate_token",
    "need-to-know check": "TeamService.require_case",
    "lapsed urgent case check": "CaseService.purge_lapsed",
    "index search incl. gallery version read": "Matcher.match",
    "audit record incl. its lock": "AuditLog.record",
    "response model (pydantic)": "serialize_response",
}


def steps(collapsed: Path) -> dict[str, float]:
    """Share of all samples spent inside each step of the search (:data:`STEPS`)."""
    counts = dict.fromkeys(STEPS, 0)
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for step, pattern in STEPS.items():
            if pattern in stack:
                counts[step] += int(n)
    return {k: round(100 * v / total, 1) for k, v in counts.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``): the cost of the work
    itself, which depends much less than wall time on what else the machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seed(home: Path, identities: int, database_url: str | None) -> None:
    """Gallery, users and an approved case, written straight through the domain services."""
    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.gallery.enrol import EnrolItem

    ctx = AppContext(Settings(home=home, database_url=database_url))
    people = sorted(p for p in (DATA / "lfw").iterdir() if p.is_dir())[:identities]
    items = [EnrolItem(sorted(p.glob("*.jpg"))[0], p.name) for p in people]
    admin = ctx.users.ensure_admin("admin", PASSWORD) or ctx.users.principal_for("admin")
    ctx.enroller(require_quality=False, multi_face="main").run(admin, items)
    op = ctx.users.add(admin, "olive", "operator", PASSWORD)
    auth = ctx.users.add(admin, "arthur", "authoriser", PASSWORD)
    ctx.cases.open(op, "LOAD-1", "robbery", "load test case", "load test on loopback only")
    ctx.cases.authorise(auth, "LOAD-1", True, "load test", valid_days=1)
    ctx.close()


async def client_loop(
    c: httpx.AsyncClient, body: dict[str, object], until: float, lat: list[float], errors: list[str]
) -> None:
    while time.perf_counter() < until:
        t = time.perf_counter()
        try:
            r = await c.post("/api/v1/searches", json=body)
            if r.status_code != 201:
                errors.append(f"{r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        lat.append(time.perf_counter() - t)


async def bad_login_loop(
    c: httpx.AsyncClient, i: int, until: float, statuses: list[int], control: bool = False
) -> None:
    """Wrong passwords for real and made-up accounts, back to back; with ``control``, GET
    /health instead: the cost of any flood of cheap requests, to compare the login flood with."""
    names = ["olive", "admin", "arthur", f"nobody{i}"]
    n = 0
    while time.perf_counter() < until:
        body = {"username": names[n % len(names)], "password": f"wrong password number {n}"}
        n += 1
        try:
            if control:
                r = await c.get("/api/v1/health")
            else:
                r = await c.post("/api/v1/auth/token", json=body)
            statuses.append(r.status_code)
        except httpx.HTTPError:
            statuses.append(0)


async def run_load(
    base: str, clients: int, seconds: float, bad_logins: int = 0, control: bool = False
) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        tok = (
            await c.post("/api/v1/auth/token", json={"username": "olive", "password": PASSWORD})
        ).json()["access_token"]
        c.headers["Authorization"] = f"Bearer {tok}"
        probe = DATA / "lfw/Vladimir_Putin/Vladimir_Putin_0002.jpg"
        r = await c.post(
            "/api/v1/cases/LOAD-1/probes",
            data={"source": "CCTV", "how_obtained": "load test exhibit"},
            files={"file": (probe.name, probe.read_bytes(), "image/jpeg")},
        )
        r.raise_for_status()
        body = {"case": "LOAD-1", "probe_id": r.json()["probe_id"], "face": 0, "top_k": 20}
        # one search before the clock starts: the server loads the index on the first one
        (await c.post("/api/v1/searches", json=body)).raise_for_status()
        lat: list[float] = []
        errors: list[str] = []
        login_statuses: list[int] = []
        start = time.perf_counter()
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with (
            httpx.AsyncClient(
                base_url=base, timeout=60, limits=limits, headers=dict(c.headers)
            ) as lc,
            httpx.AsyncClient(base_url=base, timeout=60) as attacker,
        ):
            await asyncio.gather(
                *(client_loop(lc, body, start + seconds, lat, errors) for _ in range(clients)),
                *(
                    bad_login_loop(attacker, i, start + seconds, login_statuses, control)
                    for i in range(bad_logins)
                ),
            )
        elapsed = time.perf_counter() - start
    ms = np.array(lat) * 1000
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(lat),
        "throughput_rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "errors": len(errors),
        "server_errors_5xx": sum(e.startswith("5") for e in errors)
        + sum(st >= 500 for st in login_statuses),
        "bad_login_clients": bad_logins,
        "bad_login_control": control,
        "bad_login_requests": len(login_statuses),
        "bad_login_statuses": {
            str(k): login_statuses.count(k) for k in sorted(set(login_statuses))
        },
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "error_samples": errors[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument(
        "--bad-logins", type=int, default=0, help="clients sending wrong passwords meanwhile"
    )
    ap.add_argument(
        "--control",
        action="store_true",
        help="the --bad-logins clients GET /health instead (a flood of cheap requests)",
    )
    ap.add_argument("--identities", type=int, default=1000, help="LFW identities in the gallery")
    ap.add_argument("--database-url", default=None, help="default: SQLite in the temp home")
    ap.add_argument(
        "--postgres",
        default=None,
        metavar="URL",
        help="PostgreSQL database to run in, in a fresh schema dropped at the end",
    )
    ap.add_argument("--py-spy", type=Path, default=None, help="collapsed server stacks to FILE")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results/api_load.json")
    args = ap.parse_args()
    console = Console()
    with contextlib.ExitStack() as stack:
        if args.postgres:
            args.database_url = stack.enter_context(scratch_schema(args.postgres))
        result = run(args, console, stack.enter_context(tempfile.TemporaryDirectory()))
    result["gallery_identities"] = args.identities
    result["database"] = "postgresql" if args.database_url else "sqlite"
    table = Table(title="API load: POST /api/v1/searches")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        if k != "error_samples":
            table.add_row(k, str(v))
    console.print(table)
    for e in result["error_samples"]:  # type: ignore[attr-defined]
        console.print(f"[red]error[/] {e}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


def run(args: argparse.Namespace, console: Console, tmp: str) -> dict[str, object]:
    home = Path(tmp)
    with console.status("Seeding gallery, users and case…"):
        seed(home, args.identities, args.database_url)
    port = free_port()
    server_log = (home / "server.log").open("wb")
    env = os.environ | {"RETROFACE_HOME": str(home)}
    if args.database_url:
        env["RETROFACE_DATABASE_URL"] = args.database_url
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
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{base}/api/v1/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("server did not become ready")
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--nonblocking",
                    "--rate",
                    "50",
                    "--format",
                    "raw",
                    "--output",
                    str(args.py_spy),
                    "--duration",
                    str(int(args.seconds) + 5),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        cpu0 = cpu_seconds(server.pid)
        me0 = cpu_seconds(os.getpid())
        with console.status(f"{args.clients} clients searching for {args.seconds:.0f} s…"):
            result = asyncio.run(
                run_load(base, args.clients, args.seconds, args.bad_logins, args.control)
            )
        cpu = cpu_seconds(server.pid) - cpu0
        # the load generator shares the cores: its own CPU per request shows how much of the
        # clients' latency may be the clients themselves
        mine = cpu_seconds(os.getpid()) - me0
        n = max(1, int(str(result["requests"])))
        result["client_cpu_ms_per_request"] = round(1000 * mine / n, 1)
        result["server_cpu_s"] = round(cpu, 1)
        result["server_cpu_ms_per_request"] = round(1000 * cpu / n, 1)
        if spy is not None:
            spy.wait(timeout=120)
            result["profile"] = breakdown(args.py_spy)
            result["profile_steps"] = steps(args.py_spy)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server_log.close()
    result |= server_side(home / "server.log")
    return result


def server_side(log: Path) -> dict[str, object]:
    """p50/p99 of POST /searches as the server measured them (its request log: from the
    request reaching the application to the response), beside the clients' figures, which also
    count the wait for the event loop to read the request and the network."""
    ms = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("route") == "/api/v1/searches" and rec.get("method") == "POST":
            ms.append(float(rec["ms"]))
    if not ms:
        return {}
    return {
        "server_side_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "server_side_p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


if __name__ == "__main__":
    main()
