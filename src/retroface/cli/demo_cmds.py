"""`retroface demo`: the whole accountable workflow on real faces, end to end, in one command."""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path

import typer
from rich.panel import Panel
from rich.table import Table

from retroface.cli.common import console, fail, user_errors

DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", "../shared/data"))


def demo(
    data: Path = typer.Option(DEFAULT_DATA, help="The shared test data folder."),
    home: Path = typer.Option(
        Path(".retroface-demo"), help="Data directory for the demo (created)."
    ),
    distractors: int = typer.Option(300, help="LFW identities enrolled as distractors."),
) -> None:
    """The accountable workflow end to end: gallery, case, authorisation, search, review, audit."""
    from retroface.config import Settings
    from retroface.context import AppContext
    from retroface.gallery.enrol import items_from_paths
    from retroface.search.service import ProbeProvenance

    people = data / "people"
    if not people.is_dir():
        fail(f"demo data not found at {data} (set --data or RETROFACE_TEST_DATA)")
    with user_errors():
        ctx = AppContext(Settings(home=home.resolve()))
        pw = secrets.token_urlsafe(12)
        users = ctx.users
        users.ensure_admin("admin", pw)
        admin = users.principal_for("admin")  # the demo owns its home and acts as its admin
        team = (
            ("olive", "operator"),
            ("arthur", "authoriser"),
            ("rita", "reviewer"),
            ("rob", "reviewer"),
            ("aud", "auditor"),
        )
        for name, roles in team:
            try:
                users.add(admin, name, roles, pw)
            except Exception:
                users.set_password(admin, name, pw)
        users.set_password(admin, "admin", pw)
        who = {n: users.authenticate_password(n, pw) for n in ("olive", "arthur", "rita", "rob")}
        names = ", ".join(f"{n} ({r})" for n, r in (("admin", "admin"), *team))
        console.print(
            Panel(
                f"data directory {ctx.home}\nusers: {names}\nthe users' password this run: {pw}",
                highlight=False,
            )
        )
        # outside the panel and unwrapped, so that it can be copied as one command
        console.print(
            f"act as one of them: RETROFACE_HOME={shlex.quote(str(ctx.home))} "
            f"RETROFACE_PASSWORD={shlex.quote(pw)} "
            "retroface --user aud audit verify",
            highlight=False,
            soft_wrap=True,
        )

        folders = [p for p in sorted(people.iterdir()) if p.is_dir() and not p.name.startswith("_")]
        lfw = sorted(p for p in (data / "lfw").iterdir() if p.is_dir())[:distractors]
        enroller = ctx.enroller(multi_face="main")
        with console.status("Enrolling the reference gallery…"):
            summary = enroller.run(
                admin,
                [i for i in items_from_paths(folders) if "partial" not in i.path.name]
                + [next(items_from_paths([p])) for p in lfw],
            )
        console.print(
            f"gallery: {summary.enrolled} enrolled now, {summary.skipped} already there, "
            f"{len(summary.rejected)} rejected; {ctx.gallery.stats(admin).subjects} subjects"
        )
        for r in summary.rejected:
            console.print(f"  [yellow]rejected[/] {Path(r.path).name}: {r.reason}")

        ref = f"DEMO-{secrets.token_hex(3).upper()}"
        ctx.cases.open(
            who["olive"],
            ref,
            "robbery",
            "identify the person seen at a street robbery",
            "serious offence with injury; the still from recorded CCTV is the only lead",
        )
        console.print(f"case {ref} opened by olive (operator): awaiting authorisation")
        ctx.cases.authorise(who["arthur"], ref, True, "necessary and proportionate")
        console.print(f"case {ref} approved by arthur (authoriser)")

        probe_path = data / "people/_multi_face_scenes/obama_and_biden.jpg"
        probe = ctx.searches.add_probe(
            who["olive"],
            ref,
            probe_path.read_bytes(),
            probe_path.name,
            ProbeProvenance("witness photo", "handed over by a witness, exhibit W/1"),
        )
        console.print(f"probe {probe.probe_id}: {len(probe.faces)} faces; searching face 0")
        result = ctx.searches.search(who["olive"], ref, probe.probe_id, face_index=0, top_k=5)
        table = Table(title=f"Search {result.search_id}: {result.label}")
        for col in ("rank", "subject", "similarity"):
            table.add_column(col)
        for c in result.candidates:
            table.add_row(str(c.rank), c.subject, f"{c.similarity:.3f}")
        console.print(table)

        sid = result.search_id
        ctx.reviews.decide(who["rita"], sid, "possible match", "consistent features", 1)
        out = ctx.reviews.decide(who["rob"], sid, "possible match", "agree: rank 1", 1)
        console.print(f"two blind reviews: {out.status} — {out.outcome}")
        with ctx.db.session() as s:
            ctx.audit.checkpoint(s)
        check = ctx.audit.verify()
        console.print(
            f"audit log: {'intact' if check.ok else 'TAMPERED'}, {check.checked} records, "
            f"signed through record {check.signed_through}"
        )
        ctx.close()
