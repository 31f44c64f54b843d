"""`retroface gallery ...`: enrol, inspect and erase reference subjects."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from retroface.cli.common import console, err_console, print_json, user_errors
from retroface.cli.session import state

app = typer.Typer(
    help="The reference gallery: enrol, list, show, remove, stats.", no_args_is_help=True
)


@app.command()
def enrol(
    paths: list[Path] = typer.Argument(None, help="Images, or folders of sub-folders per subject."),
    manifest: Path | None = typer.Option(
        None, help="CSV with path,subject[,face,inclusion_reason,legal_basis,source,...]."
    ),
    inclusion_reason: str | None = typer.Option(
        None, help="Why these subjects are in the gallery (e.g. 'custody image')."
    ),
    source: str | None = typer.Option(None, help="Where the images come from."),
    retain_until: datetime | None = typer.Option(
        None, formats=["%Y-%m-%d"], help="Erase new subjects after this date (retention run)."
    ),
    multi_face: str = typer.Option(
        "reject", help="With several faces: 'reject' unless one is clearly the main, or 'main'."
    ),
    strict_quality: bool = typer.Option(
        False,
        "--strict-quality",
        help="Refuse faces below the quality minimums (blurred, turned away, ...) instead of "
        "enrolling them flagged (the default).",
    ),
    allow_low_quality: bool = typer.Option(
        False, "--allow-low-quality", hidden=True, help="The default now: no effect."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Enrol reference images; re-running skips what is done (by content hash).

    With ``RETROFACE_URL`` (or ``--server``) the images are read here and enrolled by that server
    (``POST /api/v1/gallery/images``, up to 32 images a request over one connection), where the
    models and the index are already loaded; the output and the audit records are a local run's.
    """
    from retroface.gallery.items import items_from_manifest, items_from_paths

    remote = state.remote()
    with user_errors():
        items = list(items_from_manifest(manifest)) if manifest else []
        items += list(items_from_paths(paths or []))
        if not items:
            raise typer.BadParameter("give image paths, folders or --manifest")
        if inclusion_reason or source or retain_until:
            until = retain_until.replace(tzinfo=UTC) if retain_until else None
            items = [
                replace(
                    i,
                    inclusion_reason=i.inclusion_reason or inclusion_reason,
                    source=i.source or source,
                    retention_until=i.retention_until or until,
                )
                for i in items
            ]
        if strict_quality and allow_low_quality:
            raise typer.BadParameter("--strict-quality and --allow-low-quality contradict")
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            disable=json_out,
        ) as bar:
            task = bar.add_task("Enrolling", total=len(items))

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done)

            if remote is not None:
                from retroface.cli.remote_enrol import enrol_remotely

                summary = enrol_remotely(remote, items, multi_face, strict_quality, progress)
            else:
                actor = state.principal()
                enroller = state.ctx.enroller(require_quality=strict_quality, multi_face=multi_face)
                summary = enroller.run(actor, items, progress=progress)
    if json_out:
        print_json(summary.model_dump(mode="json"))
        return
    console.print(
        f"enrolled {summary.enrolled}, skipped {summary.skipped} (already enrolled), "
        f"rejected {len(summary.rejected)}, subjects {summary.subjects} "
        f"in {summary.seconds:.1f} s (gallery version {summary.gallery_version})"
    )
    for r in summary.rejected[:50]:
        console.print(f"  [yellow]rejected[/] {r.path}: {r.reason}")
    if len(summary.rejected) > 50:
        console.print(f"  … and {len(summary.rejected) - 50} more (use --json for all)")
    if summary.low_quality:
        console.print(
            f"{len(summary.low_quality)} of them below a quality minimum, enrolled flagged "
            "(candidate lists matched on them show why; --strict-quality refuses them):"
        )
    for q in summary.low_quality[:50]:
        console.print(f"  [yellow]flagged[/] {q.path}: {'; '.join(q.reasons)}", highlight=False)
    if len(summary.low_quality) > 50:
        console.print(f"  … and {len(summary.low_quality) - 50} more (use --json for all)")


@app.command("list")
def list_(
    offset: int = typer.Option(0, min=0),
    limit: int = typer.Option(100, min=1, max=10000),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Subjects in the gallery."""
    with user_errors():
        rows = state.ctx.gallery.list_subjects(state.principal(), offset, limit)
    if json_out:
        subjects = [r.model_dump(mode="json") for r in rows]
        print_json({"subjects": subjects, "offset": offset, "limit": limit})
        return
    table = Table(title=f"Subjects {offset + 1}–{offset + len(rows)}")
    for col in ("reference", "images", "inclusion reason", "source", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.reference, str(r.images), r.inclusion_reason, r.source or "", r.status)
    console.print(table)


@app.command()
def show(subject: str, json_out: bool = typer.Option(False, "--json")) -> None:
    """One subject with its reference images and templates."""
    with user_errors():
        data = state.ctx.gallery.show(state.principal(), subject)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(
        f"[bold]{data.reference}[/] ({data.status}): {data.inclusion_reason}, "
        f"source {data.source or 'unspecified'}"
    )
    for img in data.reference_images:
        console.print(
            f"  image {img.image_id} {img.original_name} {img.size[0]}x{img.size[1]} "
            f"sha256 {img.content_hash[:12]}… ({len(img.templates)} template(s))"
        )


@app.command()
def remove(
    subject: str,
    reason: str = typer.Option(..., help="Why the subject is erased (recorded in the audit)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Erase a subject: images, templates, files and index entries."""
    with user_errors():
        result = state.ctx.gallery.erase(state.principal(), subject, reason=reason)
    if json_out:
        print_json(result.model_dump(mode="json"))
        return
    console.print(
        f"erased {subject}: {result.images} image(s), {result.templates} template(s), "
        f"{result.files_deleted} file(s) deleted"
    )


@app.command()
def stats(json_out: bool = typer.Option(False, "--json")) -> None:
    """Gallery size by inclusion reason, source and model."""
    with user_errors():
        data = state.ctx.gallery.stats(state.principal())
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(
        f"{data.subjects} subjects, {data.images} images, {data.templates} templates "
        f"(gallery version {data.gallery_version})"
    )
    for title, counts in (
        ("by inclusion reason", data.subjects_by_inclusion_reason),
        ("by source", data.subjects_by_source),
        ("templates by model", data.templates_by_model),
    ):
        console.print(f"  {title}: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))


@app.command()
def check(
    repair: bool = typer.Option(False, help="Delete orphan files."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Compare stored files, database rows and the index."""
    with user_errors():
        ctx = state.ctx
        data = ctx.gallery.check(state.principal(), ctx.engine.identity.key, repair=repair)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    for k, v in data.model_dump().items():
        console.print(f"{k}: {v}")
