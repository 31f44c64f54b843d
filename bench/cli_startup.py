"""How long `retroface` takes to start: wall and CPU time of commands that load no model.

Each command runs ``--runs`` times in a fresh process (after ``--warmup`` runs, so the page cache
and the byte-code caches are warm, as for a user's second call). Wall time depends on what else
the machine is doing; the CPU time (user + system of the child) much less, so both are reported,
with the load average at the start and end. ``--src`` runs another checkout's sources through the
same interpreter, for a before/after on one machine in the same minute:

    python bench/cli_startup.py
    python bench/cli_startup.py --src /tmp/before/src --label before

``--search N`` also times ``retroface search PROBE`` from a new process until its candidate list
is printed, locally (the process opens the database, loads the models and the index) and through a
warm server (``RETROFACE_URL``: the process sends the image to ``retroface serve``, started here in
another process on loopback and warmed up first). The gallery is the first image of N LFW
identities that have two or more; the probe is the second image of the first one (its mate is
checked in the output). For the remote rows the CPU column is the CLI process's only: the search's
own work is done by the server.

    python bench/cli_startup.py --search 500 --search-runs 7 --batch 20

Output: a table, and ``bench/results/cli_startup[-LABEL].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

COMMANDS = (
    ("--help",),
    ("version",),
    ("search", "--help"),
    ("case", "--help"),
)


ENTRY = "import sys; from retroface.cli.main import app; sys.argv[0] = 'retroface'; app()"
PASSWORD = "a long benchmark password"
DATA = Path(
    os.environ.get(
        "RETROFACE_TEST_DATA", Path(__file__).resolve().parents[1] / ".." / "shared/data"
    )
).resolve()


def run_once(
    argv: list[str], env: dict[str, str], expect: str | None = None, ok: tuple[int, ...] = (0,)
) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` (whose output must contain ``expect``; a
    batch with an image that has several faces exits 2, so ``ok`` may allow that)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    if expect is not None and expect not in done.stdout.decode():
        raise SystemExit(f"{' '.join(argv)}: {expect!r} not in its output")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def timed(
    name: str,
    argv: list[str],
    env: dict[str, str],
    runs: int,
    warmup: int,
    expect: str | None,
    ok: tuple[int, ...] = (0,),
) -> dict[str, object]:
    for _ in range(warmup):
        run_once(argv, env, expect, ok)
    samples = [run_once(argv, env, expect, ok) for _ in range(runs)]
    walls, cpus = [w for w, _ in samples], [c for _, c in samples]
    return {
        "command": name,
        "runs": runs,
        "wall_median_s": round(statistics.median(walls), 3),
        "wall_min_s": round(min(walls), 3),
        "cpu_median_s": round(statistics.median(cpus), 3),
    }


def gallery_and_probe(identities: int) -> tuple[list[Path], list[Path], str]:
    """The first image of ``identities`` LFW people with two or more; their second images as
    probes, and the first person's name (the first probe's expected candidate)."""
    people = []
    for folder in sorted((DATA / "lfw").iterdir()):
        images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
        if len(images) >= 2:
            people.append(images)
        if len(people) == identities:
            break
    return [i[0] for i in people], [i[1] for i in people], people[0][0].parent.name


def prepare_home(home: Path, gallery: list[Path]) -> str:
    """A data directory with an operator, an approved case C1 and the gallery; olive's token."""
    from argon2 import PasswordHasher

    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.gallery.enrol import items_from_paths

    ctx = AppContext(Settings(home=home))
    try:
        ctx.users.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        ctx.users.ensure_admin("admin", PASSWORD)
        admin = ctx.users.principal_for("admin")
        ctx.users.add(admin, "olive", "operator", PASSWORD)
        ctx.users.add(admin, "alice", "authoriser", PASSWORD)
        olive, alice = ctx.users.principal_for("olive"), ctx.users.principal_for("alice")
        ctx.enroller().run(admin, items_from_paths(gallery))
        ctx.cases.open(
            olive, "C1", "robbery", "benchmark a search", "the start-up of a search, measured"
        )
        ctx.cases.authorise(alice, "C1", True, "benchmark")
        return ctx.users.issue_token(olive, "olive", "bench", timedelta(days=1))
    finally:
        ctx.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def server(env: dict[str, str]) -> Iterator[str]:
    """``retroface serve`` on a loopback port, until it answers ready (models loaded)."""
    port = _free_port()
    argv = [sys.executable, "-c", ENTRY, "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/api/v1/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"retroface serve did not start: {proc.stderr.read()!r}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def search_rows(
    identities: int, batch: int, runs: int, warmup: int, env: dict[str, str]
) -> list[dict[str, object]]:
    """A search from a new process, locally and through a warm server; with ``batch``, also one
    call searching that many images (one request per image through the server)."""
    gallery, probes, mate = gallery_and_probe(identities)
    probe = probes[0]
    with tempfile.TemporaryDirectory(prefix="retroface-bench-") as tmp:
        home = Path(tmp) / "home"
        env = {**env, "RETROFACE_HOME": str(home), "RETROFACE_RETENTION_INTERVAL_MINUTES": "0"}
        env["RETROFACE_TOKEN"] = prepare_home(home, gallery)
        options = ["--case", "C1", "--source", "benchmark", "--top", "5"]
        options += ["--how-obtained", "LFW image, bench/cli_startup.py"]
        argv = [sys.executable, "-c", ENTRY, "search", str(probe), *options]
        name = f"retroface search (gallery {len(gallery)})"
        several = [sys.executable, "-c", ENTRY, "search", *map(str, probes[:batch]), *options]
        several_name = f"retroface search, {batch} images (gallery {len(gallery)})"
        rows = [timed(name + ", local", argv, env, runs, warmup, mate)]
        if batch:
            rows.append(timed(several_name + ", local", several, env, runs, warmup, mate, (0, 2)))
        with server(env) as url:
            remote = {**env, "RETROFACE_URL": url}
            rows.append(timed(name + ", via warm server", argv, remote, runs, warmup, mate))
            if batch:
                rows.append(
                    timed(
                        several_name + ", via server", several, remote, runs, warmup, mate, (0, 2)
                    )
                )
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--src", type=Path, help="Run the sources in this folder instead.")
    parser.add_argument("--label", default="", help="Suffix of the JSON file's name.")
    parser.add_argument(
        "--search",
        type=int,
        default=0,
        metavar="N",
        help="Also time a search, locally and through a server, on a gallery of N identities.",
    )
    parser.add_argument("--search-runs", type=int, default=5)
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        metavar="B",
        help="With --search: also one call searching B images (B ≤ N), locally and remotely.",
    )
    args = parser.parse_args()

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install keeps its byte-code caches
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve())
    env["COLUMNS"] = "100"
    for var in ("RETROFACE_URL", "RETROFACE_TOKEN", "RETROFACE_DATABASE_URL"):
        env.pop(var, None)  # the benchmark's own data directory, nobody else's server
    load_start = os.getloadavg()[0]
    rows = [
        timed("python -c pass", [sys.executable, "-c", "pass"], env, args.runs, args.warmup, None)
    ]
    for command in COMMANDS:
        argv = [sys.executable, "-c", ENTRY, *command]
        rows.append(
            timed("retroface " + " ".join(command), argv, env, args.runs, args.warmup, None)
        )
    if args.search:
        if args.src is not None:  # the data directory is prepared with the sources timed
            sys.path.insert(0, str(args.src.resolve()))
        rows += search_rows(args.search, min(args.batch, args.search), args.search_runs, 1, env)
    load_end = os.getloadavg()[0]

    table = Table(
        title=f"CLI start-up, {args.runs} runs each ({args.search_runs} for a search; "
        f"load {load_start:.1f} → {load_end:.1f})"
    )
    for col in ("command", "wall median s", "wall min s", "CPU median s"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["command"]),
            f"{r['wall_median_s']:.3f}",
            f"{r['wall_min_s']:.3f}",
            f"{r['cpu_median_s']:.3f}",
        )
    Console().print(table)
    out = (
        Path(__file__).parent
        / "results"
        / f"cli_startup{'-' + args.label if args.label else ''}.json"
    )
    out.parent.mkdir(exist_ok=True)
    result = {"cores": os.cpu_count(), "load_start": load_start, "load_end": load_end, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
