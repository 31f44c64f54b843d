"""Video work for background jobs: one scan, or a batch that resumes where it was killed.

The job kinds themselves (``video.scan``, ``video.scan_batch``) are bound to an engine and
folders in :mod:`retroface.jobs.handlers`; this module is the work they do.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retroface.core.errors import InvalidInputError
from retroface.jobs.base import Progress
from retroface.media.footage import scan_summary
from retroface.media.video import list_videos
from retroface.storage.files import is_within
from retroface.vision.engines import EngineOptions
from retroface.vision.types import FaceEngine

#: How often a long scan reports progress (and so notices a cancel), seconds.
HEARTBEAT_S = 1.0


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
    engine_opts: EngineOptions | None = None,
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
            engine_opts=engine_opts or EngineOptions(),
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


def payload_paths(import_dir: Path | None, payload: dict[str, Any]) -> list[Path]:
    """Videos named in a payload: a ``folder`` or ``paths``.

    With ``RETROFACE_IMPORT_DIR`` set (as for the API), every path must lie inside it, relative
    ones being taken from there, so a job can never be pointed at other files on the server.
    """
    root = import_dir

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
        videos = list_videos(resolve(str(payload["folder"])))
        # a folder inside the import folder may hold links to videos outside it: not listed
        return videos if root is None else [v for v in videos if is_within(v, root)]
    return [resolve(str(p)) for p in payload.get("paths", [])]
