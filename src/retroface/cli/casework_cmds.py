"""Cases, authorisation, search and review on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from retroface.cli.common import (
    console,
    err_console,
    fail,
    print_json,
    print_search_result,
    threshold_line,
    user_errors,
)
from retroface.cli.session import state

if TYPE_CHECKING:
    from retroface.search.batch import ProbeFile

case_app = typer.Typer(help="Cases: open, authorise, list, show.", no_args_is_help=True)
review_app = typer.Typer(help="Blind two-person review: queue, show, decide.", no_args_is_help=True)


@case_app.command("open")
def case_open(
    ref: str = typer.Option(..., "--ref", help="Case reference (e.g. crime number)."),
    offence: str = typer.Option(..., help="Offence category (see `retroface case categories`)."),
    purpose: str = typer.Option(..., help="What the search is for."),
    justification: str = typer.Option(..., help="Why it is necessary and proportionate, in words."),
    urgent: bool = typer.Option(
        False, help="Search before approval; must be authorised within the urgent window."
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Open a case; searches need it approved (or urgent and within its window)."""
    with user_errors():
        data = state.ctx.cases.open(
            state.principal(), ref, offence, purpose, justification, urgent=urgent
        )
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    note = (
        f" — URGENT: must be authorised by {data.urgent_deadline:%Y-%m-%d %H:%M} UTC"
        if urgent
        else " — awaiting authorisation"
    )
    console.print(f"case {ref} opened{note}")


@case_app.command("authorise")
def case_authorise(
    ref: str,
    approve: bool = typer.Option(None, "--approve/--refuse", help="Approve or refuse."),
    note: str = typer.Option(..., help="Reasons for the decision."),
    days: float | None = typer.Option(None, help="Authorisation validity in days."),
    investigation_mode: bool = typer.Option(
        False,
        "--investigation-mode",
        help="Allow investigation mode: searches list the top-k whatever their score, those "
        "below the operating threshold marked so (with --approve only).",
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Approve or refuse a case (not your own); refusal deletes everything it produced."""
    if approve is None:
        fail("say --approve or --refuse")
    with user_errors():
        data = state.ctx.cases.authorise(
            state.principal(), ref, approve, note, days, investigation_mode=investigation_mode
        )
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    mode = " (investigation mode allowed)" if data.investigation_mode else ""
    console.print(f"case {ref}: {data.status}{mode}")


@case_app.command("list")
def case_list(
    status: str | None = typer.Option(None), json_out: bool = typer.Option(False, "--json")
) -> None:
    """Cases, newest first."""
    with user_errors():
        rows = state.ctx.cases.list_cases(state.principal(), status)
    if json_out:
        print_json({"cases": [r.model_dump(mode="json") for r in rows]})
        return
    table = Table()
    for col in ("reference", "offence", "status", "urgent", "opened"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.reference,
            r.offence_category,
            r.status,
            "yes" if r.urgent else "",
            f"{r.opened_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@case_app.command("show")
def case_show(ref: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """One case."""
    with user_errors():
        data = state.ctx.cases.show(state.principal(), ref)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    for k, v in data:
        console.print(f"{k}: {v}")


team_app = typer.Typer(
    help="A case's team (need-to-know): the owner adds operators; an authoriser adds supervisors.",
    no_args_is_help=True,
)
case_app.add_typer(team_app, name="team")


@team_app.command("list")
def team_list(ref: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """Who has need-to-know on a case: its owner, members and supervisors."""
    with user_errors():
        rows = state.ctx.cases.team.members(state.principal(), ref)
    if json_out:
        print_json({"team": [r.model_dump(mode="json") for r in rows]})
        return
    for r in rows:
        by = f" (added by {r.added_by})" if r.added_by else ""
        console.print(f"{r.username}: {r.role}{by}")


@team_app.command("add")
def team_add(
    ref: str,
    username: str,
    supervisor: bool = typer.Option(
        False, "--supervisor", help="Add as supervisor (an authoriser's decision)."
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Add an operator to a case's team (you own the case) or as supervisor (you authorise)."""
    with user_errors():
        data = state.ctx.cases.team.add(
            state.principal(), ref, username, "supervisor" if supervisor else "member"
        )
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(f"case {ref}: {data.username} added as {data.role}")


@team_app.command("remove")
def team_remove(ref: str, username: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """Remove someone from a case's team (members: the owner; supervisors: an authoriser)."""
    with user_errors():
        data = state.ctx.cases.team.remove(state.principal(), ref, username)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(f"case {ref}: {data.username} ({data.role}) removed")


@case_app.command("categories")
def case_categories() -> None:
    """The configured offence categories."""
    for c in state.ctx.policy.offence_categories:
        console.print(c)


def search(
    images: list[Path] | None = typer.Argument(
        None,
        help="Probe images, or folders of them (searched recursively; omit with --probe or "
        "--video). Each image is its own audited search.",
        show_default=False,
    ),
    case: str = typer.Option(..., "--case", help="The authorised case these searches serve."),
    source: str | None = typer.Option(None, help="Probe source, e.g. CCTV, witness."),
    how_obtained: str | None = typer.Option(None, help="How the probe was obtained (exhibit)."),
    probe: int | None = typer.Option(None, help="Search an already submitted probe."),
    face: int | None = typer.Option(
        None, help="Which face of the probe (see the probe's faces); applies to every image."
    ),
    main_face: bool = typer.Option(
        False,
        "--main-face",
        help="Images with several faces: search the main one when it clearly is (twice as "
        "prominent as the next, as enrolment's rule); without it, such an image is an error.",
    ),
    top: int = typer.Option(20, "--top", min=1, max=200, help="Candidate list length."),
    threshold: float | None = typer.Option(None, help="Only candidates at or above this."),
    video: Path | None = typer.Option(
        None, "--video", help="Probe video: search one face track of it (with --track)."
    ),
    track: int | None = typer.Option(None, help="Video: track id from `retroface video scan`."),
    template: str = typer.Option(
        "fused", help="Video: 'fused' (mean of the track's best faces) or 'best' (best shot)."
    ),
    fps: float = typer.Option(5.0, help="Video: the sampling rate the track ids come from."),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: for images, one array with an object per image, in input order.",
    ),
) -> None:
    """Search faces under an authorised case: images (each its own search), a probe, a video track.

    Images that fail (unreadable, no face, several faces without --face) get an error entry and
    the others go on; the exit status is 2 if any failed.
    """
    if video is not None:
        if images or probe is not None:
            fail("give probe IMAGES, --probe ID or --video VIDEO, not several")
        if track is None:
            fail("--video needs --track ID (see `retroface video scan VIDEO`)")
        from retroface.cli.video_cmds import run_video_search

        run_video_search(
            video, track, case, source, how_obtained, template, fps, top, threshold, json_out
        )
        return
    if probe is not None:
        if images:
            fail("give probe IMAGES or --probe ID, not both")
        with user_errors():
            result = state.ctx.searches.search(state.principal(), case, probe, face, top, threshold)
        if json_out:
            print_json(result.model_dump(mode="json"))
            return
        print_search_result(result)
        return
    if not images:
        fail("give probe IMAGES (files or folders) or --probe ID")
    if not source or not how_obtained:
        fail("a new probe needs --source and --how-obtained (its provenance)")
    _search_images(images, case, source, how_obtained, face, top, threshold, json_out, main_face)


def _probe_files(paths: list[Path]) -> list[ProbeFile]:
    """The images named, folders expanded (recursively, sorted, image extensions, no hidden)."""
    from retroface.media.images import is_image_path
    from retroface.search.batch import ProbeFile

    files: list[ProbeFile] = []
    for p in paths:
        if not p.is_dir():
            files.append(ProbeFile(str(p), p.read_bytes))
            continue
        found = sorted(
            f
            for f in p.rglob("*")
            if f.is_file()
            and is_image_path(f)
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not found:
            fail(f"{p}: no image files in this folder")
        files.extend(ProbeFile(str(f), f.read_bytes) for f in found)
    return files


def _search_images(
    paths: list[Path],
    case: str,
    source: str,
    how_obtained: str,
    face: int | None,
    top: int,
    threshold: float | None,
    json_out: bool,
    main_face: bool = False,
) -> None:
    """Every image its own search, in one process: start-up, models and index paid once."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from retroface.search.batch import BatchEntry, search_batch
    from retroface.search.service import ProbeProvenance
    from retroface.search.views import BatchSearchFailure

    files = _probe_files(paths)
    several = len(files) > 1
    # a bar only for a person watching: not with --json, nor into a pipe or file
    bar_shown = several and not json_out and console.is_terminal

    def show(entry: BatchEntry) -> None:
        if isinstance(entry, BatchSearchFailure):
            # above the bar while it runs (both on the terminal), else on stderr like any error
            (console if bar_shown else err_console).print(
                f"[bold red]error:[/] {entry.error.message}", highlight=False, soft_wrap=True
            )
            return
        if several:
            console.print(f"[bold]{entry.input}[/]", highlight=False)
        print_search_result(entry)

    with user_errors():
        actor = state.principal()
        searches = state.ctx.searches
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not bar_shown,
        ) as bar:
            task = bar.add_task("Searching", total=len(files))

            def progress(done: int, total: int, entry: BatchEntry) -> None:
                bar.update(task, completed=done)
                if not json_out:
                    show(entry)

            entries = search_batch(
                searches,
                actor,
                case,
                files,
                ProbeProvenance(source, how_obtained),
                face=face,
                top_k=top,
                threshold=threshold,
                progress=progress,
                main_face=main_face,
            )
    failed = sum(isinstance(e, BatchSearchFailure) for e in entries)
    if json_out:
        print_json([e.model_dump(mode="json") for e in entries])
    elif several:
        console.print(f"{len(entries) - failed} searched, {failed} failed", highlight=False)
    if failed:
        raise typer.Exit(2)


@review_app.command("queue")
def review_queue(json_out: bool = typer.Option(False, "--json")) -> None:
    """Searches waiting for your review."""
    with user_errors():
        rows = state.ctx.reviews.queue(state.principal())
    if json_out:
        print_json({"queue": [r.model_dump(mode="json") for r in rows]})
        return
    if not rows:
        console.print("nothing to review")
    for r in rows:
        console.print(f"search {r.search_id} (case {r.case}): {r.needs}, {r.candidates} candidates")


@review_app.command("show")
def review_show(search_id: int, json_out: bool = typer.Option(False, "--json")) -> None:
    """A candidate list to adjudicate; others' decisions stay hidden until both are in."""
    with user_errors():
        data = state.ctx.reviews.show(state.principal(), search_id)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(f"search {search_id}: {data.status} — [yellow]{data.label}[/]")
    console.print(threshold_line(data.mode, data.operating_threshold, data.operating_source))
    for c in data.candidates:
        mark = {True: "above", False: "BELOW threshold", None: ""}[c.above_threshold]
        console.print(f"  {c.rank:>3}  {c.subject:<30} {c.similarity:.3f}  {mark}")
    if data.hidden:
        console.print(f"({data.hidden} other decision(s) hidden until both are in)")
    for r in data.reviews:
        console.print(f"  {r.stage}: {r.decision} {r.candidate_rank or ''} {r.note or ''}")


@review_app.command("decide")
def review_decide(
    search_id: int,
    decision: str = typer.Option(..., help="'possible match', 'no match' or 'inconclusive'."),
    note: str = typer.Option(..., help="Your reasons."),
    rank: int | None = typer.Option(None, help="Candidate rank for a possible match."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Record your independent decision on a candidate list."""
    with user_errors():
        data = state.ctx.reviews.decide(state.principal(), search_id, decision, note, rank)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(f"search {search_id}: {data.stage} review recorded; status {data.status}")
