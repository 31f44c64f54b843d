"""Video work as background jobs: one scan, or a batch that resumes where it was killed.

A batch checkpoints each finished video's result under ``RETROFACE_HOME/jobs/<job id>/`` as soon
as it is done, so a worker killed half-way (deploy, out of memory, a pulled plug) resumes without
scanning finished videos again; the runner removes them once the job's result is stored. Results
hold tracks, times and quality only: no embeddings or pixels leave the scanning process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from retroface.core.errors import InvalidInputError
from retroface.media.footage import export_best_shots, scan_video
from retroface.media.video import VideoLoadError, list_videos
from retroface.vision.types import FaceEngine

if TYPE_CHECKING:
    from retroface.context import AppContext
    from retroface.jobs.local import Handler

Progress = Callable[[int, int], None]
#: How often a long scan reports progress (and so notices a cancel), seconds.
HEARTBEAT_S = 1.0


class Registry(Protocol):
    def register(self, kind: str, handler: Handler) -> None: ...


def engine_options(ctx: AppContext, det_size: int | None = None) -> dict[str, Any]:
    """What another process (a Ray worker) needs to build the same engine as ``ctx``."""
    s = ctx.settings
    return {
        "backend": s.backend,
        "models_dir": str(s.models_dir) if s.models_dir else None,
        "det_size": int(det_size or s.det_size),
        "det_threshold": float(s.det_threshold),
        "flip": bool(s.flip),
    }


def build_engine(options: dict[str, Any], threads: int | None = None) -> FaceEngine:
    from retroface.vision.engines import create_engine

    return create_engine(
        str(options.get("backend", "arcface")),
        models_dir=Path(options["models_dir"]) if options.get("models_dir") else None,
        det_size=int(options.get("det_size", 640)),
        det_threshold=float(options.get("det_threshold", 0.5)),
        threads=threads,
        flip=bool(options.get("flip", False)),
    )


def scan_summary(
    path: Path | str,
    engine: FaceEngine,
    fps: float | None,
    heartbeat: Callable[[float, float | None], None] | None = None,
) -> dict[str, Any]:
    """One video's batch result: its scan as JSON, or the reason it could not be read."""
    try:
        scan = scan_video(path, engine, fps=fps, progress=heartbeat)
    except VideoLoadError as exc:
        return {"path": str(path), "error": str(exc)}
    return {"path": str(path), **scan.to_dict()}


class Checkpoints:
    """Finished videos of one batch job, one small JSON file each, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _file(self, index: int, path: str) -> Path:
        digest = hashlib.sha256(path.encode()).hexdigest()[:12]
        return self.folder / f"{index:05d}-{digest}.json"

    def load(self, index: int, path: str) -> dict[str, Any] | None:
        f = self._file(index, path)
        try:
            data: dict[str, Any] = json.loads(f.read_text())
        except (OSError, ValueError):
            return None  # missing, or torn by a kill mid-write: scan again
        return data

    def save(self, index: int, path: str, result: dict[str, Any]) -> None:
        f = self._file(index, path)
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, default=str))
        os.replace(tmp, f)

    def next_attempt(self) -> int:
        """Count this run: a result says in which attempt each video was scanned."""
        f = self.folder / "attempts"
        try:
            n = int(f.read_text()) + 1
        except (OSError, ValueError):
            n = 1
        f.write_text(str(n))
        return n

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def scan_batch(
    paths: Sequence[Path | str],
    *,
    engine: FaceEngine | None = None,
    engine_opts: dict[str, Any] | None = None,
    fps: float | None = 5.0,
    ray_address: str | None = None,
    checkpoints: Checkpoints | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Scan many videos, locally with ``engine`` or on a Ray cluster, skipping checkpointed ones.

    ``progress(done, total)`` counts finished videos; it is also called about once a second
    during a long video, so a cancel is noticed within a second or so.
    """
    items = [str(p) for p in paths]
    total = len(items)
    results: list[dict[str, Any] | None] = [None] * total
    attempt = checkpoints.next_attempt() if checkpoints else 1
    skipped: list[str] = []
    for i, p in enumerate(items):
        done = checkpoints.load(i, p) if checkpoints else None
        if done is not None:
            results[i] = done
            skipped.append(p)
    finished = len(skipped)
    if progress:
        progress(finished, total)

    def record(i: int, result: dict[str, Any]) -> None:
        nonlocal finished
        result["attempt"] = attempt
        results[i] = result
        if checkpoints:
            checkpoints.save(i, items[i], result)
        finished += 1
        if progress:
            progress(finished, total)

    todo = [(i, p) for i, p in enumerate(items) if results[i] is None]
    if ray_address:
        from retroface.jobs.ray_batch import scan_many_ray

        scan_many_ray(
            todo,
            ray_address,
            fps=fps,
            engine_opts=engine_opts or {},
            on_result=record,
            heartbeat=(lambda: progress(finished, total)) if progress else None,
        )
    else:
        if engine is None:
            raise InvalidInputError("a local batch scan needs a face engine")
        last = [time.monotonic()]

        def beat(_t: float, _d: float | None) -> None:
            if progress and time.monotonic() - last[0] >= HEARTBEAT_S:
                last[0] = time.monotonic()
                progress(finished, total)

        for i, p in todo:
            record(i, scan_summary(p, engine, fps, beat))
    videos = [r for r in results if r is not None]
    return {
        "videos": videos,
        "total": total,
        "skipped": skipped,
        "attempt": attempt,
        "tracks": sum(len(v.get("tracks", [])) for v in videos),
        "errors": sum(1 for v in videos if "error" in v),
        "ray": ray_address,
    }


def _paths(ctx: AppContext, payload: dict[str, Any]) -> list[Path]:
    """Videos named in a payload: a ``folder`` or ``paths``.

    With ``RETROFACE_IMPORT_DIR`` set (as for the API), every path must lie inside it, relative
    ones being taken from there, so a job can never be pointed at other files on the server.
    """
    root = ctx.settings.import_dir

    def resolve(p: str) -> Path:
        path = Path(p)
        if root is None:
            if not path.is_absolute():
                raise InvalidInputError(f"{p}: relative paths need RETROFACE_IMPORT_DIR")
            return path
        full = (root / path).resolve()  # an absolute ``p`` replaces ``root`` here
        if not full.is_relative_to(root.resolve()):
            raise InvalidInputError(f"{p}: outside the import folder")
        return full

    if payload.get("folder"):
        return list_videos(resolve(str(payload["folder"])))
    return [resolve(str(p)) for p in payload.get("paths", [])]


def video_handlers(ctx: AppContext) -> dict[str, Handler]:
    """The ``video.scan`` and ``video.scan_batch`` job handlers, bound to ``ctx``."""

    def scan_job(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        paths = _paths(ctx, {"paths": [payload["path"]]})
        fps = payload.get("fps", 5.0)
        last = [0.0]

        def beat(t: float, duration: float | None) -> None:
            if time.monotonic() - last[0] >= HEARTBEAT_S:
                last[0] = time.monotonic()
                progress(min(999, int(1000 * t / duration)) if duration else 0, 1000)

        scan = scan_video(
            paths[0],
            ctx.engine,
            fps=None if fps is None else float(fps),
            start=payload.get("start"),
            end=payload.get("end"),
            progress=beat,
        )
        result = scan.to_dict()
        if payload.get("export_dir"):
            written = export_best_shots(scan, Path(str(payload["export_dir"])))
            result["exported"] = [str(p) for p in written]
        progress(1000, 1000)
        return result

    def batch_job(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        job_id = payload.get("job_id")
        checkpoints = Checkpoints(ctx.home / "jobs" / str(job_id)) if job_id else None
        fps = payload.get("fps", 5.0)
        ray = payload.get("ray")
        result = scan_batch(
            _paths(ctx, payload),
            engine=None if ray else ctx.engine,
            engine_opts=engine_options(ctx, payload.get("det_size")),
            fps=None if fps is None else float(fps),
            ray_address=str(ray) if ray else None,
            checkpoints=checkpoints,
            progress=progress,
        )
        # checkpoints stay until the runner has stored the result (RedisJobRunner removes them)
        return result

    return {"video.scan": scan_job, "video.scan_batch": batch_job}


def register_video_jobs(runner: Registry, ctx: AppContext) -> None:
    for kind, handler in video_handlers(ctx).items():
        runner.register(kind, handler)
