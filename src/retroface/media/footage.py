"""Faces in recorded footage: scan a video into tracks, search one track, find a person.

``scan_video`` stores nothing: like ``detect`` it only looks. Anything that compares a face with
the gallery or with a probe runs under an authorised case and leaves an audit record:
``search_track`` stores the track's best-shot frame as a probe and searches through
:class:`~retroface.search.service.SearchService` (the one place searches happen), and
``find_in_footage`` checks the case and records what was looked for and where it was found.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from retroface.core.errors import InvalidInputError, NotFoundError
from retroface.media.tracking import FaceTracker, TemplateKind, Track, TrackerConfig
from retroface.media.video import DecodeReport, VideoInfo, VideoLoadError, open_video
from retroface.vision.types import FaceEngine, FloatArray, ImageArray

if TYPE_CHECKING:
    from retroface.context import AppContext
    from retroface.core.access import Principal
    from retroface.search.service import ProbeProvenance, SearchService

#: Called with (seconds decoded so far, duration in seconds or None if unknown).
ScanProgress = Callable[[float, float | None], None]
T = TypeVar("T")


@dataclass
class VideoScan:
    """A scanned video: its tracks (with best shots in memory) and how decoding went."""

    info: VideoInfo
    report: DecodeReport
    tracks: list[Track]
    fps: float | None
    samples: int
    faces: int
    elapsed_s: float
    model: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.info.path)

    def track(self, track_id: int) -> Track:
        for t in self.tracks:
            if t.id == track_id:
                return t
        ids = ", ".join(str(t.id) for t in self.tracks) or "none"
        raise NotFoundError(
            f"{self.path.name} has no track {track_id} at {self.fps or 'every'} fps "
            f"(tracks: {ids}); scan with the same --fps to see the same track numbers"
        )

    def to_dict(self) -> dict[str, Any]:
        seconds = (self.report.last_good_s or 0.0) - (self.report.first_good_s or 0.0)
        return {
            "video": self.info.to_dict(),
            "decode": self.report.to_dict(),
            "sampling_fps": self.fps,
            "samples": self.samples,
            "faces": self.faces,
            "elapsed_s": round(self.elapsed_s, 3),
            "realtime_factor": round(seconds / self.elapsed_s, 2) if self.elapsed_s else None,
            "model": self.model,
            "tracks": [t.to_dict() for t in self.tracks],
            **self.extra,
        }


def _prefetch(items: Iterable[T], depth: int = 3) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` ahead.

    FFmpeg decoding and onnxruntime inference both release the GIL, so decoding the next frames
    while the current one is analysed keeps both cores busy (measured in bench/video_speed.py).
    """
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    source = iter(items)

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put((0, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((1, None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((2, exc))
        finally:
            # close the generator here, in its own thread, before the file is closed
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="retroface-decode", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = q.get()
            if kind == 1:
                return
            if kind == 2:
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def scan_video(
    path: Path | str,
    engine: FaceEngine,
    *,
    fps: float | None = 5.0,
    start: float | None = None,
    end: float | None = None,
    config: TrackerConfig | None = None,
    progress: ScanProgress | None = None,
    decode_threads: int = 0,
) -> VideoScan:
    """Decode, detect and track: every face track in a video with its best shot.

    Never fails on a damaged file: the tracks cover what could be decoded and ``report`` says
    what could not. A file that is not a video at all raises :class:`VideoLoadError`.
    """
    started = time.perf_counter()
    tracker = FaceTracker(config)
    samples = faces = 0
    with open_video(path, threads=decode_threads) as reader:
        duration = reader.info.end_s
        if end is not None and duration is not None:
            duration = min(duration, end)
        for frame in _prefetch(reader.frames(fps=fps, start=start, end=end)):
            found = engine.analyse(frame.image)
            tracker.update(frame.t, frame.index, found, frame.image)
            samples += 1
            faces += len(found)
            if progress is not None:
                progress(frame.t, duration)
        info, report = reader.info, reader.report
    return VideoScan(
        info=info,
        report=report,
        tracks=tracker.finish(),
        fps=fps,
        samples=samples,
        faces=faces,
        elapsed_s=time.perf_counter() - started,
        model=engine.identity.key,
    )


def export_best_shots(scan: VideoScan, folder: Path, quality: int = 95) -> list[Path]:
    """Write each track's best shot (face with context) as ``<video>_track<id>.jpg``."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for track in scan.tracks:
        out = folder / f"{scan.path.stem}_track{track.id:03d}.jpg"
        bgr = cv2.cvtColor(track.thumbnail(), cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(out), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise InvalidInputError(f"could not write {out}")
        written.append(out)
    return written


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_jpeg(image: ImageArray, quality: int = 95) -> bytes:
    import cv2

    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise InvalidInputError("could not encode the best-shot frame")
    return bytes(buf.tobytes())


def require_searchable_case(ctx: AppContext, actor: Principal, case_ref: str) -> None:
    """Refuse before the slow part: scanning footage for a search needs a searchable case."""
    from retroface.core.access import require_role
    from retroface.core.roles import Role

    require_role(actor, Role.OPERATOR)
    with ctx.db.session() as s:
        ctx.cases.require_searchable(s, case_ref)


def search_track(
    searches: SearchService,
    actor: Principal,
    case_ref: str,
    scan: VideoScan,
    track_id: int,
    provenance: ProbeProvenance,
    *,
    template: TemplateKind = "fused",
    fuse_best: int = 10,
    top_k: int = 20,
    threshold: float | None = None,
    video_sha256: str | None = None,
) -> dict[str, Any]:
    """Search one track against the gallery under a case, as any other probe would be.

    The probe image is the track's best-shot frame and its face the best shot; with
    ``template="fused"`` that face carries the fused embedding of the best ``fuse_best`` faces.
    Which video, track and time the probe came from goes with the probe face.
    """
    track = scan.track(track_id)
    best = track.best
    if best.frame is None:
        raise InvalidInputError(f"track {track_id} kept no frame for its best shot")
    sha = video_sha256 or file_sha256(scan.path)
    origin = {
        "video": scan.path.name,
        "video_sha256": sha,
        "track": track.id,
        "t": round(best.sighting.t, 3),
        "frame": best.sighting.frame_index,
        "track_first_s": round(track.first_s, 3),
        "track_last_s": round(track.last_s, 3),
        "sampling_fps": scan.fps,
        "template": template,
    }
    if template == "fused":
        origin["fused_faces"] = min(fuse_best, track.n_faces)
    face = replace(
        best.face,
        embedding=track.template(template, fuse_best),
        extra={**best.face.extra, **origin},
    )
    name = f"{scan.path.name}@{best.sighting.t:.2f}s_track{track.id}.jpg"
    added = searches.add_probe(
        actor,
        case_ref,
        encode_jpeg(best.frame),
        name,
        provenance,
        faces=[face],
        media_type="video",
    )
    result = searches.search(actor, case_ref, added["probe_id"], 0, top_k, threshold)
    return result | {"video": origin, "track": track.to_dict()}


def find_in_footage(
    ctx: AppContext,
    actor: Principal,
    case_ref: str,
    probe: FloatArray,
    videos: Sequence[Path],
    *,
    threshold: float | None = None,
    fps: float | None = 5.0,
    probe_ref: dict[str, Any] | None = None,
    engine: FaceEngine | None = None,
    config: TrackerConfig | None = None,
    progress: Callable[[Path, float, float | None], None] | None = None,
) -> dict[str, Any]:
    """Where one person appears in a set of videos, under an authorised case; audited.

    A track matches when its fused template, or any single face in it, reaches ``threshold``
    (default: the configured ``compare`` threshold). Matches are leads for a person to check,
    with the time spans to look at. Unreadable videos are reported, not fatal.
    """
    from retroface.core.labels import LEAD_LABEL

    require_searchable_case(ctx, actor, case_ref)
    if not videos:
        raise InvalidInputError("give at least one video to search")
    limit = ctx.settings.match_threshold if threshold is None else float(threshold)
    probe = np.asarray(probe, np.float32)
    eng = engine or ctx.engine
    out: list[dict[str, Any]] = []
    for path in videos:
        entry: dict[str, Any] = {"video": Path(path).name, "path": str(path)}
        try:
            entry["sha256"] = file_sha256(Path(path))
            step = None if progress is None else partial(progress, Path(path))
            scan = scan_video(path, eng, fps=fps, config=config, progress=step)
        except (VideoLoadError, OSError) as exc:
            entry["error"] = str(exc)
            out.append(entry)
            continue
        matches = []
        for track in scan.tracks:
            sims = track.similarities(probe)
            fused = float(track.template("fused", (config or TrackerConfig()).fuse_best) @ probe)
            peak = int(np.argmax(sims))
            if fused >= limit or float(sims[peak]) >= limit:
                matches.append(
                    {
                        "track": track.id,
                        "start_s": round(track.first_s, 3),
                        "end_s": round(track.last_s, 3),
                        "similarity_fused": round(fused, 4),
                        "similarity_max": round(float(sims[peak]), 4),
                        "peak_t": round(track.sightings[peak].t, 3),
                        "faces": track.n_faces,
                        "faces_above": int((sims >= limit).sum()),
                    }
                )
        matches.sort(key=lambda m: -max(m["similarity_fused"], m["similarity_max"]))
        entry |= {
            "duration_s": scan.info.duration_s,
            "end_s": scan.info.end_s,
            "decode": scan.report.to_dict(),
            "tracks": len(scan.tracks),
            "matches": matches,
            "spans": _spans([(m["start_s"], m["end_s"]) for m in matches]),
        }
        out.append(entry)
    with ctx.db.session() as s:
        ctx.cases.require_searchable(s, case_ref)  # may have changed during a long scan
        ctx.audit.record(
            s,
            actor=actor.username,
            action="video.find",
            case_ref=case_ref,
            object_type="video",
            object_id=",".join(e.get("sha256", "?")[:16] for e in out)[:200],
            details={
                "probe": probe_ref or {},
                "threshold": limit,
                "sampling_fps": fps,
                "model": eng.identity.key,
                "videos": [
                    {
                        "name": e["video"],
                        "sha256": e.get("sha256"),
                        "error": e.get("error"),
                        "spans": e.get("spans", []),
                        "matches": [
                            [m["track"], m["similarity_fused"], m["similarity_max"]]
                            for m in e.get("matches", [])
                        ],
                    }
                    for e in out
                ],
            },
            ts=ctx.clock(),
        )
    return {
        "case": case_ref,
        "label": LEAD_LABEL,
        "threshold": limit,
        "probe": probe_ref or {},
        "videos": out,
    }


def _spans(spans: list[tuple[float, float]], gap: float = 1.0) -> list[list[float]]:
    """Overlapping or nearly touching time spans joined, in time order."""
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged
