"""Oversight reports on the command line: transparency (per period), DPIA facts, and the monthly
oversight figures.

Only auditors and admins may produce the first two, and producing one is itself audited: a report
reveals activity across every case, so who looked, and at what period, belongs in the trail. The
monthly figures name nobody, so an oversight account (a regulator, an ethics panel) may read them
too. The rules live in :class:`retroface.governance.oversight.OversightService`; this module only
translates.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.table import Table

from retroface.cli.common import UserError, console, print_json, user_errors
from retroface.cli.session import state

if TYPE_CHECKING:
    from retroface.governance.reports import DpiaReport, TransparencyReport
    from retroface.governance.views import OversightFigures

app = typer.Typer(
    help="Reports for oversight bodies: transparency, dpia, oversight.", no_args_is_help=True
)

_HTML_HELP = "Write a self-contained HTML report to this file."


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UserError(f"{option} must be a date written YYYY-MM-DD, not {value!r}") from None


def period(date_from: str, date_to: str) -> tuple[datetime, datetime]:
    """``[from 00:00, day after to 00:00)`` UTC: both named days are included in full."""
    first, last = _day(date_from, "--from"), _day(date_to, "--to")
    if last < first:
        raise UserError("--to must not be before --from")
    start = datetime.combine(first, time(), UTC)
    return start, datetime.combine(last + timedelta(days=1), time(), UTC)


@app.command()
def transparency(
    date_from: str = typer.Option(..., "--from", help="First day of the period, YYYY-MM-DD."),
    date_to: str = typer.Option(..., "--to", help="Last day of the period (included)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    html: Path | None = typer.Option(None, "--html", help=_HTML_HELP),
) -> None:
    """Searches, authorisations, reviews and deletions in a period (days in UTC)."""
    with user_errors():
        actor = state.principal()
        start, end = period(date_from, date_to)
        report = state.ctx.oversight.transparency(actor, start, end, html=html)
    if json_out:
        print_json(report)
    elif html is None:
        _print_transparency(report)
    if html is not None:
        console.print(f"transparency report written to {html}")


@app.command()
def dpia(
    json_out: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
    html: Path | None = typer.Option(None, "--html", help=_HTML_HELP),
) -> None:
    """Facts for the Data Protection Impact Assessment, read from the live system."""
    with user_errors():
        report = state.ctx.oversight.dpia(state.principal(), html=html)
    if json_out:
        print_json(report)
    elif html is None:
        _print_dpia(report)
    if html is not None:
        console.print(f"DPIA facts written to {html}")


@app.command()
def oversight(
    months: int = typer.Option(12, "--months", help="How many calendar months, this one last."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Figures per month (UTC) for an ethics panel or a regulator: no faces, no names."""
    with user_errors():
        figures = state.ctx.oversight.monthly(state.principal(), months)
    if json_out:
        print_json(figures.model_dump(mode="json"))
    else:
        _print_oversight(figures)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def _print_oversight(f: OversightFigures) -> None:
    # eleven narrow columns without borders: a month per line stays readable at 80 columns
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    table.add_column("month", no_wrap=True)
    for name in ("searches", "asked", "granted", "refused", "urgent", "lapsed", "pairs"):
        table.add_column(name, justify="right")
    for name in ("agree", "probes ok", "deleted on time"):
        table.add_column(name, justify="right")
    for m in [*f.months, f.total]:
        table.add_row(
            m.month,
            str(m.searches.run),
            str(m.authorisations.requested),
            str(m.authorisations.granted),
            str(m.authorisations.refused),
            str(m.urgent.opened),
            str(m.urgent.lapsed),
            str(m.reviews.pairs),
            _pct(m.reviews.agreement_rate),
            _pct(m.probe_quality.share_acceptable),
            f"{m.deletions.on_time}/{m.deletions.due}",
        )
    console.print(table)
    o = f.overdue_now
    console.print(
        f"held past their deletion date (over {f.deletion_grace_hours:g} h): {o.probes} probe(s), "
        f"{o.search_records} search record(s), {o.subjects} subject(s), "
        f"{o.urgent_cases} lapsed urgent case(s)"
    )
    console.print(f.notice)


def _print_transparency(report: TransparencyReport) -> None:
    s, a = report["searches"], report["authorisations"]
    v, d = report["reviews"], report["deletions"]
    k = v["agreement"]
    console.print(f"period {report['period']['start']} to {report['period']['end']} (exclusive)")
    table = Table("offence category", "searches run", "records held")
    for cat, n in s["by_offence_category"].items():
        table.add_row(cat, str(n["run"]), str(n["records_held"]))
    console.print(table)
    kappa = "n/a" if k["kappa"] is None else f"{k['kappa']:.3f}"
    console.print(
        f"authorisations: {a['granted']} granted, {a['refused']} refused; "
        f"urgent: {a['urgent']['opened']} opened, "
        f"{a['urgent']['refused_or_expired']} later refused or expired\n"
        f"reviews: {v['agreed']} agreed, {v['disputed']} disputed, {v['resolved']} resolved; "
        f"kappa {kappa} (n={k['n']})\n"
        f"deletions: {d['events']} events, {d['probes_deleted']} probe(s), "
        f"{d['search_records_deleted']} search record(s), {d['subjects_erased']} subject(s)"
    )
    for t in report["threshold_changes"]:
        o = t["fairness_override"]
        gate = f"fairness override by {o['by']}: {o['justification']}" if o else "within limits"
        console.print(
            f"threshold record {t['record_id']} ({t['model']}, {t['rule']}): "
            f"{t['threshold']:.4f}; {gate}",
            highlight=False,
        )
    console.print(report["notice"])


def _print_dpia(report: DpiaReport) -> None:
    table = Table("data category", "records", "retention")
    for c in report["data_categories"]:
        table.add_row(c["category"], str(c["count"]), c["retention"])
    console.print(table)
    for g in report["safeguards"]:
        mark = "[green]yes[/]" if g["enabled"] else "[bold red]NO[/]"
        console.print(f"{mark} {g['safeguard']}: {g['detail']}", highlight=False)
