"""Every job kind the application runs, bound to the services it needs, given explicitly.

The composition root (:class:`~retroface.context.AppContext`, which the RQ worker entry point
:mod:`retroface.jobs.worker` also builds) fills a :class:`JobServices` and calls
:func:`register_handlers` once on its runner; nothing here reaches back into the context.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from retroface.core.access import Principal
from retroface.gallery.enrol import Enroller, items_from_paths
from retroface.gallery.views import Rejection
from retroface.jobs.base import Handler, Progress
from retroface.jobs.video import HEARTBEAT_S, Checkpoints, payload_paths, scan_batch
from retroface.media.footage import export_best_shots, scan_video
from retroface.storage.files import is_within
from retroface.vision.engines import EngineOptions
from retroface.vision.types import FaceEngine


class EnrollerFactory(Protocol):
    """``AppContext.enroller``: an enroller with a run's options."""

    def __call__(self, require_quality: bool = ..., multi_face: str = ...) -> Enroller: ...


class Registry(Protocol):
    def register(self, kind: str, handler: Handler) -> None: ...


@dataclass(frozen=True)
class JobServices:
    """What the handlers work with."""

    #: The interactive engine, built on first use: wiring a runner (every API start) loads no
    #: model, only running a video job does.
    engine: Callable[[], FaceEngine]
    #: How a Ray worker builds the same engine in its own process.
    engine_options: EngineOptions
    enroller: EnrollerFactory
    #: ``UserService.principal_for``: the submitter's roles as of when the job runs, so a job
    #: queued by an admin who has since lost the role is refused.
    principal_for: Callable[[str], Principal]
    #: ``RETROFACE_IMPORT_DIR``: the only folder jobs may read (unset: absolute paths, CLI use).
    import_dir: Path | None
    #: Where batch jobs checkpoint finished work, one folder per job id.
    checkpoint_root: Path


def enrol_handler(services: JobServices) -> Handler:
    """``gallery.enrol``: batch enrolment from the import folder (the API's batch route)."""

    def run(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        root = services.import_dir
        if root is None:
            raise RuntimeError("RETROFACE_IMPORT_DIR is not set")
        # Checked again here, not only when the API accepted the job: links can change in
        # between. Each file is checked once more when it is opened (EnrolItem.confine).
        outside: list[Rejection] = []
        inside: list[Path] = []
        for p in payload["paths"]:
            if is_within(root / p, root):
                inside.append(root / p)
            else:
                reason = "outside the import folder once links are followed: refused, not read"
                outside.append(Rejection(path=str(p), reason=reason))
        items = [
            replace(
                i,
                inclusion_reason=payload.get("inclusion_reason"),
                source=payload.get("source"),
            )
            for i in items_from_paths(inside, confine=root)
        ]
        principal = services.principal_for(str(payload["actor"]))
        enroller = services.enroller(
            # faces below a quality minimum are enrolled flagged unless strict (see Enroller)
            require_quality=bool(payload.get("strict_quality", False)),
            multi_face=str(payload.get("multi_face", "reject")),
        )
        summary = enroller.run(principal, items, progress=progress)
        summary.rejected[:0] = outside
        return summary.model_dump(mode="json")

    return run


def video_scan_handler(services: JobServices) -> Handler:
    """``video.scan``: one video's tracks, progress in thousandths of its duration."""

    def run(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        paths = payload_paths(services.import_dir, {"paths": [payload["path"]]})
        fps = payload.get("fps", 5.0)
        last = [0.0]

        def beat(t: float, duration: float | None) -> None:
            if time.monotonic() - last[0] >= HEARTBEAT_S:
                last[0] = time.monotonic()
                progress(min(999, int(1000 * t / duration)) if duration else 0, 1000)

        scan = scan_video(
            paths[0],
            services.engine(),
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

    return run


def video_batch_handler(services: JobServices) -> Handler:
    """``video.scan_batch``: many videos, here or on Ray, resuming from checkpoints."""

    def run(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        job_id = payload.get("job_id")
        checkpoints = Checkpoints(services.checkpoint_root / str(job_id)) if job_id else None
        fps = payload.get("fps", 5.0)
        ray = payload.get("ray")
        det_size = payload.get("det_size")
        options = services.engine_options
        if det_size:
            options = replace(options, det_size=int(det_size))
        # checkpoints stay until the runner has stored the result (RedisJobRunner removes them)
        return scan_batch(
            payload_paths(services.import_dir, payload),
            engine=None if ray else services.engine(),
            engine_opts=options,
            fps=None if fps is None else float(fps),
            ray_address=str(ray) if ray else None,
            checkpoints=checkpoints,
            progress=progress,
        )

    return run


def job_handlers(services: JobServices) -> dict[str, Handler]:
    """Every job kind, by name."""
    return {
        "gallery.enrol": enrol_handler(services),
        "video.scan": video_scan_handler(services),
        "video.scan_batch": video_batch_handler(services),
    }


def register_handlers(runner: Registry, services: JobServices) -> None:
    for kind, handler in job_handlers(services).items():
        runner.register(kind, handler)
