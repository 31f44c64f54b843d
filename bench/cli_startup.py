"""How long `retroface` takes to start: wall and CPU time of commands that load no model.

Each command runs ``--runs`` times in a fresh process (after ``--warmup`` runs, so the page cache
and the byte-code caches are warm, as for a user's second call). Wall time depends on what else
the machine is doing; the CPU time (user + system of the child) much less, so both are reported,
with the load average at the start and end. ``--src`` runs another checkout's sources through the
same interpreter, for a before/after on one machine in the same minute:

    python bench/cli_startup.py
    python bench/cli_startup.py --src /tmp/before/src --label before

Output: a table, and ``bench/results/cli_startup[-LABEL].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

COMMANDS = (
    ("--help",),
    ("version",),
    ("search", "--help"),
    ("case", "--help"),
)


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--src", type=Path, help="Run the sources in this folder instead.")
    parser.add_argument("--label", default="", help="Suffix of the JSON file's name.")
    args = parser.parse_args()

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install keeps its byte-code caches
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve())
    env["COLUMNS"] = "100"
    entry = "import sys; from retroface.cli.main import app; sys.argv[0] = 'retroface'; app()"
    baseline = [sys.executable, "-c", "pass"]
    load_start = os.getloadavg()[0]
    rows = []
    for command in (("python -c pass",), *COMMANDS):
        argv = (
            baseline if command == ("python -c pass",) else [sys.executable, "-c", entry, *command]
        )
        for _ in range(args.warmup):
            run_once(argv, env)
        samples = [run_once(argv, env) for _ in range(args.runs)]
        walls, cpus = [w for w, _ in samples], [c for _, c in samples]
        rows.append(
            {
                "command": "retroface " + " ".join(command) if argv is not baseline else command[0],
                "runs": args.runs,
                "wall_median_s": round(statistics.median(walls), 3),
                "wall_min_s": round(min(walls), 3),
                "cpu_median_s": round(statistics.median(cpus), 3),
            }
        )
    load_end = os.getloadavg()[0]

    table = Table(
        title=f"CLI start-up, {args.runs} runs each (load {load_start:.1f} → {load_end:.1f})"
    )
    for col in ("command", "wall median s", "wall min s", "CPU median s"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["command"],
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
