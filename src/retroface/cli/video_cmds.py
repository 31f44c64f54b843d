"""`retroface video …`: faces in recorded footage.

``scan`` and ``scan-batch`` only look (like ``detect``) and store nothing. ``search`` (also
reachable as ``retroface search --video``) and ``find`` compare faces from footage with the gallery
or a probe, so they run under an authorised case and are audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from retroface.cli.common import (
    console,
    err_console,
    fail,
    print_json,
    print_search_result,
    user_errors,
)
from retroface.cli.session import state

if TYPE_CHECKING:
    from retroface.media.footage import ScanProgress
    from retroface.vision.types import FaceEngine

app = typer.Typer(
    help="Recorded video: face tracks and best shots, search a track, find a person in footage.",
    no_args_is_help=True,
)

DET_SIZES = (320, 480, 640, 960, 1280, 1600, 1920)


def _engine(det_size: int | None) -> FaceEngine:
    """The configured engine, or one with another detector size (1280 for small faces in HD)."""
    ctx = state.ctx
    if det_size is None or det_size == ctx.settings.det_size:
        return ctx.engine
    if det_size not in DET_SIZES:
        fail(f"--det-size must be one of {', '.join(map(str, DET_SIZES))}")
    from retroface.vision.engines import build_engine

    with user_errors():
        return build_engine(ctx.settings, det_size=det_size)


def _fps(fps: float, every_frame: bool) -> float | None:
    if every_frame:
        return None
    if not 0 < fps <= 120:
        fail("--fps must be between 0 and 120 (or use --every-frame)")
    return fps


@contextmanager
def _progress(label: str) -> Iterator[ScanProgress]:
    """A Rich progress bar on stderr (only on a terminal), fed with decoded seconds."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[pos]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, console=err_console, transient=True, disable=not err_console.is_terminal
    ) as bar:
        task = bar.add_task(label, total=None, pos="")

        def update(t: float, duration: float | None) -> None:
            pos = f"{t:.1f}/{duration:.1f} s" if duration else f"{t:.1f} s"
            bar.update(task, completed=t, total=duration, pos=pos)

        yield update


def _ts(seconds: float) -> str:
    m, s = divmod(seconds, 60.0)
    return f"{int(m):02d}:{s:04.1f}"


def _print_scan(data: dict[str, Any], name: str) -> None:
    video, decode = data["video"], data["decode"]
    console.print(
        f"[bold]{name}[/]: {video['width']}x{video['height']}, "
        f"{video['duration_s'] or 0:.1f} s, {data['samples']} frames sampled "
        f"({data['sampling_fps'] or 'every frame'} fps), {data['faces']} faces, "
        f"{len(data['tracks'])} tracks, {data['realtime_factor']}x real time"
    )
    if not decode["complete"]:
        console.print(
            f"[yellow]decoding incomplete:[/] last good frame at {decode['last_good_s']} s"
            f" of {decode['expected_end_s']} s; {decode['error_count']} decode errors"
            + (f" ({decode['errors'][0]})" if decode["errors"] else "")
        )
    if not data["tracks"]:
        console.print("No face tracks found.")
        return
    table = Table()
    for col in ("track", "faces", "first", "last", "best", "eyes", "sharp", "yaw", "verdict"):
        table.add_column(col)
    for t in data["tracks"]:
        best = t["best_shot"]
        q = best["quality"]
        # the reasons' short names: the numbers are in the other columns and in --json
        short = ", ".join(r.split(":")[0] for r in q["reasons"])
        verdict = "[green]ok[/]" if q["acceptable"] else f"[yellow]{short}[/]"
        table.add_row(
            str(t["id"]),
            str(t["faces"]),
            _ts(t["first_s"]),
            _ts(t["last_s"]),
            _ts(best["t"]),
            f"{q['inter_eye_px']:.0f}",
            f"{q['sharpness']:.0f}",
            f"{q['yaw_deg']:.0f}",
            verdict,
        )
    console.print(table)


@app.command("scan")
def scan(
    video: Path = typer.Argument(..., help="Video file (MP4, MOV, MKV, AVI, …)."),
    fps: float = typer.Option(5.0, help="Frames sampled per second."),
    every_frame: bool = typer.Option(False, "--every-frame", help="Analyse every frame."),
    start: float | None = typer.Option(None, help="Start at this many seconds."),
    end: float | None = typer.Option(None, help="Stop at this many seconds."),
    det_size: int | None = typer.Option(
        None, "--det-size", help="Detector input: 640 (default) or 1280 for small faces in HD."
    ),
    export: Path | None = typer.Option(
        None, "--export", help="Write each track's best shot as a JPEG into this folder."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Face tracks in VIDEO: who appears when, and each track's best shot. Stores nothing."""
    from retroface.media.footage import export_best_shots, scan_video

    rate = _fps(fps, every_frame)
    eng = _engine(det_size)
    with user_errors(), _progress(f"Scanning {video.name}") as progress:
        result = scan_video(video, eng, fps=rate, start=start, end=end, progress=progress)
    data = result.to_dict()
    if export is not None:
        with user_errors():
            data["exported"] = [str(p) for p in export_best_shots(result, export)]
    if json_out:
        print_json(data)
        return
    _print_scan(data, video.name)
    if export is not None:
        console.print(f"{len(data['exported'])} best shots written to {export}")


@app.command("scan-batch")
def scan_batch(
    folder: Path = typer.Argument(..., help="Folder of videos (searched recursively)."),
    fps: float = typer.Option(5.0, help="Frames sampled per second."),
    ray: str | None = typer.Option(
        None, "--ray", help="Ray cluster address (HOST:PORT) to spread the videos over."
    ),
    det_size: int | None = typer.Option(None, "--det-size", help="Detector input size."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Scan every video in FOLDER, here or on a Ray cluster. Stores nothing."""
    from retroface.jobs.video import scan_batch as run_batch
    from retroface.media.video import list_videos
    from retroface.vision.engines import engine_options

    with user_errors():
        videos = list_videos(folder)
        if not videos:
            fail(f"no video files in {folder}")
        eng = None if ray else _engine(det_size)
        quiet = not err_console.is_terminal
        with Progress(console=err_console, transient=True, disable=quiet) as p:
            task = p.add_task(f"Scanning {len(videos)} videos", total=len(videos))
            result = run_batch(
                videos,
                engine=eng,
                engine_opts=engine_options(state.ctx.settings, det_size=det_size),
                fps=_fps(fps, False),
                ray_address=ray,
                progress=lambda done, total: p.update(task, completed=done, total=total),
            )
    if json_out:
        print_json(result)
        return
    table = Table(title=f"{len(videos)} videos in {folder}")
    for col in ("video", "duration", "tracks", "faces", "decode", "speed", "node"):
        table.add_column(col)
    for v in result["videos"]:
        name = Path(v["path"]).name
        if "error" in v:
            table.add_row(name, "", "", "", f"[red]{v['error']}[/]", "", "")
            continue
        node = v.get("worker", {}).get("ray_node", "local")
        table.add_row(
            name,
            f"{v['video']['duration_s'] or 0:.1f} s",
            str(len(v["tracks"])),
            str(v["faces"]),
            "ok" if v["decode"]["complete"] else "[yellow]incomplete[/]",
            f"{v['realtime_factor']}x",
            node[:12],
        )
    console.print(table)


def run_video_search(
    video: Path,
    track: int,
    case: str,
    source: str | None,
    how_obtained: str | None,
    template: str = "fused",
    fps: float = 5.0,
    top: int = 20,
    threshold: float | None = None,
    json_out: bool = False,
) -> None:
    """Scan VIDEO, then search one track's best shot (or fused template) under CASE.

    Shared by ``retroface video search`` and ``retroface search --video``.
    """
    from retroface.search.service import ProbeProvenance

    if template not in ("best", "fused"):
        fail("--template must be 'best' or 'fused'")
    if not source or not how_obtained:
        fail("a video probe needs --source and --how-obtained (its provenance)")
    ctx = state.ctx
    with user_errors():
        actor = state.principal()
        with _progress(f"Scanning {video.name}") as progress:
            result = ctx.footage.search_video(
                actor,
                case,
                video,
                track,
                ProbeProvenance(source, how_obtained),
                fps=_fps(fps, False),
                template="fused" if template == "fused" else "best",
                top_k=top,
                threshold=threshold,
                progress=progress,
            )
    if json_out:
        print_json(result.model_dump(mode="json"))
        return
    t = result.track
    console.print(
        f"{video.name} track {track}: {t['faces']} faces, {_ts(t['first_s'])}–{_ts(t['last_s'])},"
        f" probe = best shot at {_ts(t['best_shot']['t'])}, template {template}"
    )
    print_search_result(result)


@app.command("search")
def search(
    video: Path = typer.Argument(..., help="Video file."),
    track: int = typer.Option(..., "--track", help="Track id from `retroface video scan`."),
    case: str = typer.Option(..., "--case", help="The authorised case this search serves."),
    source: str | None = typer.Option(None, help="Probe source, e.g. CCTV, body-worn video."),
    how_obtained: str | None = typer.Option(None, help="How the footage was obtained (exhibit)."),
    template: str = typer.Option(
        "fused", help="'fused' (mean of the track's best faces; measured better) or 'best'."
    ),
    fps: float = typer.Option(5.0, help="Sampling rate: use the one the scan used."),
    top: int = typer.Option(20, "--top", min=1, max=200, help="Candidate list length."),
    threshold: float | None = typer.Option(None, help="Only candidates at or above this."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Search one face track against the gallery under an authorised case."""
    run_video_search(
        video, track, case, source, how_obtained, template, fps, top, threshold, json_out
    )


@app.command("find")
def find(
    videos: list[Path] = typer.Argument(..., help="Video files to look through."),
    case: str = typer.Option(..., "--case", help="The authorised case this search serves."),
    probe: Path = typer.Option(..., "--probe", help="Image of the person to look for."),
    face: int | None = typer.Option(None, help="Which face of the probe image, if several."),
    threshold: float | None = typer.Option(
        None, help="Similarity a track must reach (default: the compare threshold)."
    ),
    fps: float = typer.Option(5.0, help="Frames sampled per second."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Find when the person in PROBE appears in VIDEOS (a case is needed; audited)."""
    from retroface.media.footage import file_sha256
    from retroface.media.images import load_image
    from retroface.search.views import FootageUnreadable
    from retroface.vision.engines import primary_face

    ctx = state.ctx
    with user_errors():
        actor = state.principal()
        ctx.footage.require_searchable_case(actor, case, action="video.find")
        image = load_image(probe, max_pixels=ctx.settings.max_image_pixels)
        faces = ctx.engine.analyse(image)
        if not faces:
            fail(f"{probe}: no face found")
        if face is not None:
            if not 0 <= face < len(faces):
                fail(f"{probe} has {len(faces)} faces (0..{len(faces) - 1})")
            chosen = faces[face]
        elif len(faces) > 1:
            fail(
                f"{probe} shows {len(faces)} faces: choose one with --face N "
                "(a search is targeted at one person)"
            )
        else:
            chosen = primary_face(faces, image.shape) or faces[0]
        ref = {"name": probe.name, "sha256": file_sha256(probe), "face": face or 0}
        bars = _progress("Searching footage")
        with bars as progress:
            result = ctx.footage.find(
                actor,
                case,
                chosen.embedding,
                videos,
                threshold=threshold,
                fps=_fps(fps, False),
                probe_ref=ref,
                progress=lambda p, t, d: progress(t, d),
            )
    if json_out:
        print_json(result.model_dump(mode="json"))
        return
    console.print(f"[yellow]{result.label}[/] — threshold {result.threshold:.2f}")
    for v in result.videos:
        if isinstance(v, FootageUnreadable):
            console.print(f"[red]{v.video}: {v.error}[/]")
            continue
        if not v.matches:
            console.print(f"{v.video}: not found ({v.tracks} tracks)")
            continue
        spans = ", ".join(f"{_ts(a)}–{_ts(b)}" for a, b in v.spans)
        console.print(f"[bold]{v.video}[/]: seen at {spans}")
        for m in v.matches:
            console.print(
                f"  track {m.track}: {_ts(m.start_s)}–{_ts(m.end_s)}, "
                f"similarity fused {m.similarity_fused:.3f}, best face "
                f"{m.similarity_max:.3f} at {_ts(m.peak_t)}"
            )
