"""Probes on the command line: audited enhancement into a derived version (locally, or through the
server named by ``RETROFACE_URL``: see :mod:`retroface.cli.remote`)."""

from __future__ import annotations

import json

import typer

from retroface.cli.common import console, describe_lineage, fail, print_json, user_errors
from retroface.cli.session import state

app = typer.Typer(help="Probes: enhance into a derived version (audited).", no_args_is_help=True)


def _parse(text: str, what: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc.msg} (at character {exc.pos})")


@app.command("enhance")
def enhance(
    probe_id: int = typer.Argument(..., help="The probe (or derived version) to start from."),
    steps: str | None = typer.Option(
        None, "--steps", help='Steps as a JSON list, e.g. \'[{"op":"upscale","factor":2}]\'.'
    ),
    step: list[str] = typer.Option(
        [], "--step", help='One step as a JSON object (repeat, in order): \'{"op":"denoise"}\'.'
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Derive an enhanced version of a probe (the original never changes); search it with
    `retroface search --probe NEW_ID`. Operations: `retroface probe ops`."""
    if (steps is None) == (not step):
        fail("give the steps with --steps JSON-LIST or with one or more --step JSON-OBJECT")
    raw = _parse(steps, "--steps") if steps is not None else [_parse(s, "--step") for s in step]
    from retroface.search.views import ProbeView

    remote = state.remote()
    if remote is not None:
        answer = remote.call("POST", f"/probes/{probe_id}/enhancements", json={"steps": raw})
        data = ProbeView.model_validate(answer)
    else:
        with user_errors():
            data = state.ctx.enhancements.enhance(state.principal(), probe_id, raw)
    if json_out:
        print_json(data.model_dump(mode="json"))
        return
    console.print(
        f"probe {data.probe_id} (case {data.case}): enhanced version of probe {data.parent_id}, "
        f"{len(data.faces)} face(s)"
    )
    if data.lineage is not None:
        for line in describe_lineage(data.lineage):
            console.print(line, highlight=False)


@app.command("ops")
def ops(json_out: bool = typer.Option(False, "--json")) -> None:
    """The enhancement operations and their parameters."""
    from retroface.media.enhance import describe_ops  # OpenCV: not for every command's start

    rows = describe_ops()
    if json_out:
        print_json({"ops": rows})
        return
    for op in rows:
        params = ", ".join(
            name
            + (f" {p['min']:g}..{p['max']:g}" if "min" in p else "")
            + (f" {'|'.join(p['choices'])}" if "choices" in p else "")
            + (f" (default {p['default']})" if "default" in p else " (required)")
            for name, p in op["params"].items()
        )
        console.print(f"{op['op']}: {op['what']} — {params}", highlight=False)
