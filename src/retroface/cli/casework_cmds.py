"""Cases, authorisation, search and review on the command line.

Each command runs the domain services in this process, or, with ``RETROFACE_URL`` set, calls the
same services through a running server's REST API (:mod:`retroface.cli.remote`), where the models
and the index are already loaded; either way it prints the same view models with the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

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
    from retroface.cli.remote import Remote
    from retroface.governance.views import CaseView
    from retroface.search.views import BatchSearchFailure, BatchSearchResult

    BatchEntry = BatchSearchResult | BatchSearchFailure

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
    from retroface.governance.views import CaseView

    remote = state.remote()
    if remote is not None:
        body = {
            "reference": ref,
            "offence_category": offence,
            "purpose": purpose,
            "justification": justification,
            "urgent": urgent,
        }
        data = CaseView.model_validate(remote.call("POST", "/cases", json=body))
    else:
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
    from retroface.governance.views import CaseView

    remote = state.remote()
    if remote is not None:
        body = {
            "approve": approve,
            "note": note,
            "valid_days": days,
            "investigation_mode": investigation_mode,
        }
        answer = remote.call("POST", f"/cases/{_ref(ref)}/decision", json=body)
        data = CaseView.model_validate(answer)
    else:
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
    remote = state.remote()
    if remote is not None:
        rows = _remote_cases(remote, status)
    else:
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
    from retroface.governance.views import CaseView

    remote = state.remote()
    if remote is not None:
        data = CaseView.model_validate(remote.call("GET", f"/cases/{_ref(ref)}"))
    else:
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
    from retroface.governance.views import TeamMemberView

    remote = state.remote()
    if remote is not None:
        answer = remote.call("GET", f"/cases/{_ref(ref)}/team")
        rows = [TeamMemberView.model_validate(r) for r in answer]
    else:
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
    from retroface.governance.views import TeamMemberView

    role: Literal["member", "supervisor"] = "supervisor" if supervisor else "member"
    remote = state.remote()
    if remote is not None:
        body = {"username": username, "role": role}
        answer = remote.call("POST", f"/cases/{_ref(ref)}/team", json=body)
        data = TeamMemberView.model_validate(answer)
    else:
        with user_errors():
            data = state.ctx.cases.team.add(state.principal(), ref, username, role)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(f"case {ref}: {data.username} added as {data.role}")


@team_app.command("remove")
def team_remove(ref: str, username: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """Remove someone from a case's team (members: the owner; supervisors: an authoriser)."""
    from retroface.governance.views import TeamMemberView

    remote = state.remote()
    if remote is not None:
        answer = remote.call("DELETE", f"/cases/{_ref(ref)}/team/{_ref(username, slash=False)}")
        data = TeamMemberView.model_validate(answer)
    else:
        with user_errors():
            data = state.ctx.cases.team.remove(state.principal(), ref, username)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(f"case {ref}: {data.username} ({data.role}) removed")


def _ref(value: str, slash: bool = True) -> str:
    """A value as a route segment: a case reference keeps its ``/`` (``{ref:path}`` routes)."""
    from urllib.parse import quote

    return quote(value, safe="/" if slash else "")


#: The API's largest page of cases; ``case list`` reads pages until a short one.
CASE_PAGE = 500


def _remote_cases(remote: Remote, status: str | None) -> list[CaseView]:
    from retroface.governance.views import CaseView

    rows: list[CaseView] = []
    while True:
        params: dict[str, object] = {"offset": len(rows), "limit": CASE_PAGE}
        if status is not None:
            params["status"] = status
        page = remote.call("GET", "/cases", params=params)
        rows.extend(CaseView.model_validate(r) for r in page)
        if len(page) < CASE_PAGE:
            return rows


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
        help="Images with several faces: search the main one when it clearly is (1.5 times as "
        "prominent as the next, by size and closeness to the centre, as enrolment's rule); "
        "without it, such an image is an error.",
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
        if state.server_url() is not None:
            # the API has no route for a video track's search yet: say so rather than search a
            # local database the user did not mean
            fail(
                "video searches run locally only: pass --local (on a machine with the data), "
                "or unset RETROFACE_URL"
            )
        from retroface.cli.video_cmds import run_video_search

        run_video_search(
            video, track, case, source, how_obtained, template, fps, top, threshold, json_out
        )
        return
    if probe is not None:
        if images:
            fail("give probe IMAGES or --probe ID, not both")
        from retroface.search.views import SearchResult

        remote = state.remote()
        if remote is not None:
            body = {"case": case, "probe_id": probe, "face": face, "top_k": top}
            body["threshold"] = threshold
            result = SearchResult.model_validate(remote.call("POST", "/searches", json=body))
        else:
            with user_errors():
                result = state.ctx.searches.search(
                    state.principal(), case, probe, face, top, threshold
                )
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


def _probe_paths(paths: list[Path]) -> list[Path]:
    """The images named, folders expanded (recursively, sorted, image extensions, no hidden)."""
    from retroface.media.formats import is_image_path

    files: list[Path] = []
    for p in paths:
        if not p.is_dir():
            files.append(p)
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
        files.extend(found)
    return files


#: ``progress(done, total, entry)`` after each image.
Progress = Callable[[int, int, "BatchEntry"], None]


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
    """Every image its own search, in one process: start-up, models and index paid once (or
    never: through a server, where they are already loaded)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from retroface.search.views import BatchSearchFailure

    files = _probe_paths(paths)
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

    remote = state.remote()
    if remote is not None and main_face:
        # the API's batch route takes no main-face choice yet: say so rather than refuse groups
        fail("--main-face runs locally only: pass --local, or unset RETROFACE_URL")
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

        if remote is not None:
            entries = _remote_batch(
                remote, case, files, source, how_obtained, face, top, threshold, progress
            )
        else:
            entries = _local_batch(
                case, files, source, how_obtained, face, top, threshold, progress, main_face
            )
    failed = sum(isinstance(e, BatchSearchFailure) for e in entries)
    if json_out:
        print_json([e.model_dump(mode="json") for e in entries])
    elif several:
        console.print(f"{len(entries) - failed} searched, {failed} failed", highlight=False)
    if failed:
        raise typer.Exit(2)


def _local_batch(
    case: str,
    files: list[Path],
    source: str,
    how_obtained: str,
    face: int | None,
    top: int,
    threshold: float | None,
    progress: Progress,
    main_face: bool = False,
) -> list[BatchEntry]:
    from retroface.search.batch import ProbeFile, search_batch
    from retroface.search.service import ProbeProvenance

    with user_errors():
        return search_batch(
            state.ctx.searches,
            state.principal(),
            case,
            [ProbeFile(str(f), f.read_bytes) for f in files],
            ProbeProvenance(source, how_obtained),
            face=face,
            top_k=top,
            threshold=threshold,
            progress=progress,
            main_face=main_face,
        )


def _remote_batch(
    remote: Remote,
    case: str,
    files: list[Path],
    source: str,
    how_obtained: str,
    face: int | None,
    top: int,
    threshold: float | None,
    progress: Progress,
) -> list[BatchEntry]:
    """:func:`retroface.search.batch.search_batch`'s rules, one image per request.

    One request per image (``POST /cases/{ref}/searches`` with one file) keeps the batch's rules
    exact without the server's code here: a refusal of the request itself at the first image ends
    the command as a local one would; a refusal later (the case refused or lapsed meanwhile) marks
    that image and every one after it with that error, without asking the server again. It also
    lets the bar and the results follow image by image. An image is read only when its turn
    comes, and an upload the server finds too large is that image's entry (``upload_too_large``).
    """
    from retroface.cli.remote import RemoteError
    from retroface.search.views import BatchSearchFailure, ProbeError

    form: dict[str, object] = {"source": source, "how_obtained": how_obtained, "top_k": top}
    if face is not None:
        form["face"] = face
    if threshold is not None:
        form["threshold"] = threshold
    route = f"/cases/{_ref(case)}/searches"
    entries: list[BatchEntry] = []
    stopped: RemoteError | None = None
    for path in files:
        name = str(path)
        entry: BatchEntry
        if stopped is not None:
            entry = BatchSearchFailure(
                input=name, error=ProbeError(code=stopped.code, message=stopped.message)
            )
        else:
            try:
                entry = _remote_one(remote, route, path, form)
            except OSError as exc:  # the local batch's words for a file it cannot read
                error = ProbeError(code="unreadable", message=f"{name}: {exc.strerror or exc}")
                entry = BatchSearchFailure(input=name, error=error)
            except RemoteError as exc:
                if exc.code == "upload_too_large":
                    error = ProbeError(code=exc.code, message=f"{name}: {exc.message}")
                    entry = BatchSearchFailure(input=name, error=error)
                elif not entries:
                    fail(exc.message)  # refused before anything was done, as locally
                else:
                    stopped = exc
                    error = ProbeError(code=exc.code, message=exc.message)
                    entry = BatchSearchFailure(input=name, error=error)
        entries.append(entry)
        progress(len(entries), len(files), entry)
    return entries


def _remote_one(remote: Remote, route: str, path: Path, form: dict[str, object]) -> BatchEntry:
    """One image through the server, named as the user typed it (the server sees only the file
    name: the entry's ``input`` and the start of its message are put back to the path)."""
    from retroface.search.views import BatchSearchFailure, BatchSearchResult

    data = path.read_bytes()
    answer = remote.request(
        "POST",
        route,
        files=[("files", (path.name, data, "application/octet-stream"))],
        data=form,
    )
    (raw,) = answer
    name, sent = str(path), str(raw.get("input", ""))
    raw["input"] = name
    if "error" not in raw:
        return BatchSearchResult.model_validate(raw)
    message = str(raw["error"].get("message", ""))
    if sent and name != sent and message.startswith(sent):
        raw["error"]["message"] = name + message[len(sent) :]
    return BatchSearchFailure.model_validate(raw)


@review_app.command("queue")
def review_queue(json_out: bool = typer.Option(False, "--json")) -> None:
    """Searches waiting for your review."""
    from retroface.governance.views import QueueItem

    remote = state.remote()
    if remote is not None:
        rows = [QueueItem.model_validate(r) for r in remote.call("GET", "/reviews/queue")]
    else:
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
    from retroface.governance.views import ReviewSheet

    remote = state.remote()
    if remote is not None:
        data = ReviewSheet.model_validate(remote.call("GET", f"/reviews/{search_id}"))
    else:
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
        if c.reference_warnings:  # the matched reference was enrolled flagged
            console.print(
                "       [yellow]reference below quality minimums:[/] "
                + "; ".join(c.reference_warnings),
                highlight=False,
            )
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
    from retroface.governance.views import ReviewOutcome

    remote = state.remote()
    if remote is not None:
        body = {"decision": decision, "note": note, "candidate_rank": rank}
        answer = remote.call("POST", f"/reviews/{search_id}", json=body)
        data = ReviewOutcome.model_validate(answer)
    else:
        with user_errors():
            data = state.ctx.reviews.decide(state.principal(), search_id, decision, note, rank)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(f"search {search_id}: {data.stage} review recorded; status {data.status}")
