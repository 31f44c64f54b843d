"""Faces in recorded footage: scan a video into face tracks with best shots, export them.

Decoding, tracking and export only: ``scan_video`` stores nothing and, like ``detect``, only
looks. Comparing faces from footage with the gallery or a probe is casework (a case, a role, an
audit record) and lives in :mod:`retroface.search.footage`.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from retroface.core.errors import InvalidInputError, NotFoundError
from retroface.media.tracking import FaceTracker, Track, TrackerConfig
from retroface.media.video import DecodeReport, VideoInfo, VideoLoadError, open_video
from retroface.vision.types import FaceEngine, ImageArray

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


def scan_summary(
    path: Path | str,
    engine: FaceEngine,
    fps: float | None,
    heartbeat: ScanProgress | None = None,
) -> dict[str, Any]:
    """One video's batch result: its scan as JSON, or the reason it could not be read."""
    try:
        scan = scan_video(path, engine, fps=fps, progress=heartbeat)
    except VideoLoadError as exc:
        return {"path": str(path), "error": str(exc)}
    return {"path": str(path), **scan.to_dict()}


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
