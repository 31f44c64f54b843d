"""How long the monthly oversight figures take over a busy year, on SQLite and PostgreSQL.

A synthetic year of activity is written straight into the tables (the figures read counts, not
faces, so no model runs): ``--searches`` ``search.run`` audit records spread from January to
mid-December with five candidates each, a case per ten searches (a tenth of them urgent, a tenth
refused), two blind decisions per search (one pair in five disputed and settled by a tiebreak),
one probe upload per search, and a retention run at each month's start deleting the probes since
the last (with their due times, as retention records them). The audit rows are not hash-chained
(nothing here verifies the chain). Then ``OversightService.monthly`` runs for 12 months,
``--repeat`` times, and the median and maximum are reported.

Run: ``python bench/oversight_figures.py --searches 100000`` (``--stores sqlite`` to skip
PostgreSQL). Results go to ``bench/results/oversight_figures.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from retroface.config import Settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.roles import Role
from retroface.storage.tables import AuditRecord, Case, User

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "bench" / "results" / "oversight_figures.json"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)
OVERSIGHT = Principal(id=1, username="panel", roles=frozenset({Role.OVERSIGHT}))


def _fill(ctx: AppContext, searches: int) -> int:
    """The synthetic year; returns how many audit records it wrote."""
    start = datetime(2026, 1, 1, tzinfo=UTC)  # the first of the 12 months the figures cover
    step = (NOW - timedelta(days=1) - start) / searches
    records: list[dict[str, Any]] = []
    cases: list[dict[str, Any]] = []

    def audit(ts: datetime, action: str, **kw: Any) -> None:
        row = {"case_ref": None, "object_type": None, "object_id": None, "justification": None}
        row["details"] = {}
        records.append(
            row
            | {"seq": len(records) + 1, "ts": ts, "actor": "someone", "action": action}
            | {"prev_hash": "0" * 64, "hash": "0" * 64}
            | kw
        )

    deleted: list[tuple[int, str]] = []
    month = start.month
    for i in range(searches):
        ts = start + i * step
        ref = f"C/{i // 10}"
        if i % 10 == 0:
            urgent, refused = (i // 10) % 10 == 1, (i // 10) % 10 == 2
            cases.append(
                {
                    "reference": ref,
                    "offence_category": ("robbery", "burglary", "homicide")[(i // 10) % 3],
                    "purpose": "p",
                    "justification": "j",
                    "status": "refused" if refused else "approved",
                    "urgent": urgent,
                    "urgent_deadline": ts + timedelta(hours=48) if urgent else None,
                    "opened_by": 1,
                    "opened_at": ts - timedelta(hours=3),
                    "decided_by": 1,
                    "decided_at": ts + timedelta(hours=1) if urgent else ts - timedelta(hours=1),
                    "purged_at": ts if refused else None,
                }
            )
        audit(ts, "probe.add", case_ref=ref, object_id=str(i + 1), details={"faces": 1})
        candidates = [[f"subject{j}", 0.5] for j in range(5)]
        audit(
            ts, "search.run", case_ref=ref, object_id=str(i + 1), details={"candidates": candidates}
        )
        first = {"stage": "first", "decision": "no match", "rank": None}
        audit(ts + timedelta(hours=2), "review.decide", object_id=str(i + 1), details=first)
        second = dict(first, stage="second")
        if i % 5 == 0:
            second = {"stage": "second", "decision": "possible match", "rank": 1}
        audit(ts + timedelta(hours=3), "review.decide", object_id=str(i + 1), details=second)
        if i % 5 == 0:
            tiebreak = dict(first, stage="tiebreak")
            audit(ts + timedelta(hours=4), "review.decide", object_id=str(i + 1), details=tiebreak)
        deleted.append((i + 1, (ts + timedelta(days=30)).isoformat()))
        if ts.month != month:  # a retention run at each month's start
            month = ts.month
            ids, due = [d[0] for d in deleted], [d[1] for d in deleted]
            audit(ts, "retention.probe_delete", details={"count": len(ids), "ids": ids, "due": due})
            deleted = []
    with ctx.db.session() as s:
        s.execute(insert(User), [{"id": 1, "username": "panel", "roles": "oversight"}])
        for chunk in range(0, len(cases), 5000):
            s.execute(insert(Case), cases[chunk : chunk + 5000])
        for chunk in range(0, len(records), 5000):
            s.execute(insert(AuditRecord), records[chunk : chunk + 5000])
    return len(records)


def _run(store: str, searches: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url, schema = f"sqlite:///{tmp}/bench.db", None
        if store == "postgresql":
            schema = f"bench_{secrets.token_hex(4)}"
            with create_engine(
                PG_URL.replace("postgresql://", "postgresql+psycopg://")
            ).begin() as c:
                c.execute(text(f"CREATE SCHEMA {schema}"))
            url = f"{PG_URL}?options=-csearch_path%3D{schema}"
        ctx = AppContext(Settings(home=Path(tmp) / "home", database_url=url), clock=lambda: NOW)
        try:
            ctx.db.migrate()
            started = time.perf_counter()
            n_records = _fill(ctx, searches)
            fill_s = time.perf_counter() - started
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                figures = ctx.oversight.monthly(OVERSIGHT, 12)
                times.append(time.perf_counter() - started)
            assert figures.total.searches.run == searches, figures.total.searches.run
        finally:
            ctx.close()
            if schema:
                engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
                with engine.begin() as c:
                    c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    return {
        "store": store,
        "searches": searches,
        "audit_records": n_records,
        "fill_s": round(fill_s, 1),
        "monthly_median_s": round(statistics.median(times), 3),
        "monthly_max_s": round(max(times), 3),
        "pairs": figures.total.reviews.pairs,
        "kappa": figures.total.reviews.kappa,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    rows = [_run(store, args.searches, args.repeat) for store in args.stores.split(",")]
    print(
        f"{'store':<11} {'searches':>9} {'records':>9} {'fill s':>7} {'median s':>9} {'max s':>7}"
    )
    for r in rows:
        print(
            f"{r['store']:<11} {r['searches']:>9} {r['audit_records']:>9} {r['fill_s']:>7} "
            f"{r['monthly_median_s']:>9} {r['monthly_max_s']:>7}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"machine": platform.platform(), "cpus": os.cpu_count(), "results": rows}, indent=2
        )
    )
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
