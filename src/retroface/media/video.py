"""Video decoding that survives recorded footage as it is handed over.

CCTV exports, phone clips and body-worn video arrive as MP4/MOV/MKV/AVI, rotated by metadata,
sometimes truncated or damaged. Frames are decoded with PyAV (FFmpeg), sampled at a fixed rate
(or every frame), turned upright and converted to RGB only when sampled. Damage is never fatal:
what can be decoded is returned and :class:`DecodeReport` says what went wrong and the last good
timestamp, so an investigator knows which part of an exhibit was actually searched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retroface.core.errors import InvalidInputError
from retroface.vision.types import ImageArray

#: File name endings treated as video (everything FFmpeg reads is accepted; these are listed).
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".3gp"}
)
#: Decode errors kept verbatim in a report (the count is always exact).
MAX_REPORTED_ERRORS = 20
#: Consecutive packets that fail to decode before the rest of a file is given up as unreadable.
MAX_CONSECUTIVE_ERRORS = 200
#: Largest frame accepted (pixels): 8K is 33 MP; anything above is refused as malformed.
MAX_FRAME_PIXELS = 40_000_000


class VideoLoadError(InvalidInputError):
    """A file could not be read as video at all; ``str()`` names the file and the reason."""

    code = "invalid_video"

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def list_videos(folder: Path) -> list[Path]:
    """Video files under ``folder`` (recursively), sorted so batch results come in a fixed order."""
    if not folder.is_dir():
        raise VideoLoadError(str(folder), "is not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_video_path(p))


@dataclass(frozen=True)
class VideoInfo:
    """What a file says about its video stream; sizes are as displayed (after rotation)."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    fps: float | None
    duration_s: float | None  # length of the video stream
    end_s: float | None  # where it ends on the file's timeline (timestamps run up to this)
    frame_count: int | None
    rotation: int  # degrees counter-clockwise from the display matrix; 0 if none

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "container": self.container,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "fps": None if self.fps is None else round(self.fps, 3),
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "end_s": None if self.end_s is None else round(self.end_s, 3),
            "frame_count": self.frame_count,
            "rotation": self.rotation,
        }


@dataclass(frozen=True)
class SampledFrame:
    """One decoded, upright RGB frame and where it sits in the video."""

    index: int  # frame number in presentation order (0 = first decoded frame)
    t: float  # seconds from the start of the file, as a player shows it
    image: ImageArray


@dataclass
class DecodeReport:
    """What decoding achieved: an exhibit that was only partly readable says so."""

    frames_decoded: int = 0
    frames_sampled: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    corrupt_frames: int = 0
    first_good_s: float | None = None
    last_good_s: float | None = None
    expected_end_s: float | None = None
    stopped: str | None = None  # why decoding ended before the end of the file, if it did

    def error(self, message: str) -> None:
        self.error_count += 1
        message = message.strip()
        if len(self.errors) < MAX_REPORTED_ERRORS and message not in self.errors:
            self.errors.append(message)

    @property
    def truncated(self) -> bool:
        """Decoding ended well before the duration the file declares (or was given up)."""
        if self.stopped:
            return True
        if self.expected_end_s is None or self.last_good_s is None:
            return False
        # a frame interval or two short of the declared end is normal rounding, not damage
        return self.last_good_s < self.expected_end_s - 1.0

    @property
    def complete(self) -> bool:
        return (
            self.frames_decoded > 0
            and self.error_count == 0
            and self.corrupt_frames == 0
            and not self.truncated
        )

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "complete": self.complete,
            "truncated": self.truncated,
            "frames_decoded": self.frames_decoded,
            "frames_sampled": self.frames_sampled,
            "error_count": self.error_count,
            "errors": list(self.errors),
            "corrupt_frames": self.corrupt_frames,
            "first_good_s": r(self.first_good_s),
            "last_good_s": r(self.last_good_s),
            "expected_end_s": r(self.expected_end_s),
            "stopped": self.stopped,
        }


# ---------------------------------------------------------------------------------- orientation


def display_matrix(frame: Any) -> np.ndarray | None:
    """The 3x3 display matrix (16.16 fixed point, as int32) a frame carries, if any."""
    try:
        for sd in frame.side_data:
            if getattr(sd.type, "name", "") == "DISPLAYMATRIX":
                m = np.frombuffer(bytes(sd), dtype="<i4")
                return m if m.size == 9 else None
    except (TypeError, ValueError, AttributeError):
        return None
    return None


def orient(image: ImageArray, matrix: np.ndarray | None) -> ImageArray:
    """Turn a decoded frame the way a player shows it, following FFmpeg's own autorotation.

    The rules are those of ``fftools`` (transpose for 90/270, flips for 180 and mirrored
    matrices), so a frame comes out exactly as ``ffmpeg`` would show it; odd angles are snapped
    to the nearest quarter turn (phones only write quarter turns).
    """
    if matrix is None:
        return image
    m = matrix.astype(np.float64) / 65536.0
    theta = math.degrees(math.atan2(m[1], m[0])) % 360.0  # clockwise turn to apply
    quarter = round(theta / 90.0) % 4
    if quarter == 1:
        # transpose=cclock_flip is a plain transpose; transpose=clock a clockwise quarter turn
        out = image.transpose(1, 0, 2) if m[3] > 0 else np.rot90(image, -1)
    elif quarter == 2:
        out = image
        if m[0] < 0:
            out = out[:, ::-1]
        if m[4] < 0:
            out = out[::-1]
    elif quarter == 3:
        # transpose=clock_flip is the anti-transpose; transpose=cclock a counter-clockwise turn
        out = image[::-1, ::-1].transpose(1, 0, 2) if m[3] < 0 else np.rot90(image, 1)
    else:
        out = image[::-1] if m[4] < 0 else image
    return np.ascontiguousarray(out)


def rotation_degrees(matrix: np.ndarray | None) -> int:
    """Counter-clockwise rotation the matrix describes (what ``VideoFrame.rotation`` reports)."""
    if matrix is None:
        return 0
    m = matrix.astype(np.float64)
    return round(-math.degrees(math.atan2(m[1], m[0]))) % 360


# ---------------------------------------------------------------------------------- reading


def _check_path(path: Path) -> str:
    source = str(path)
    if not path.exists():
        raise VideoLoadError(source, "no such file")
    if path.is_dir():
        raise VideoLoadError(source, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoLoadError(source, "the file is empty")
    return source


def _open_error(source: str, path: Path, exc: Exception, logs: list[str]) -> VideoLoadError:
    text = " ".join([str(exc), *logs])
    if "moov atom not found" in text:
        return VideoLoadError(
            source,
            "not a readable video: no MP4/MOV index (moov atom). Either it is not a video, or a "
            "recording that was cut off before it was finalised; ask for a complete export",
        )
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        return VideoLoadError(source, "not a recognised video file")
    detail = "; ".join(m.strip() for m in logs[-2:]) or _short(exc)
    return VideoLoadError(source, f"not a readable video file ({detail})")


class VideoReader:
    """An open video file: its :attr:`info`, and frames sampled from it with :meth:`frames`.

    Use as a context manager. ``threads`` sets FFmpeg's decoder threads (0 = automatic).
    """

    def __init__(self, path: Path | str, threads: int = 0) -> None:
        import av

        self.path = Path(path)
        self.source = _check_path(self.path)
        with _ffmpeg_log() as logs:
            try:
                self._container = av.open(str(self.path), mode="r", metadata_errors="ignore")
            except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
                messages = [m for _lvl, _name, m in logs]
                raise _open_error(self.source, self.path, exc, messages) from None
        fmt = self._container.format.name
        if fmt.endswith("_pipe") or fmt in ("image2", "gif", "webp"):
            self._container.close()
            kind = fmt.removesuffix("_pipe")
            raise VideoLoadError(
                self.source, f"is a still image ({kind}), not a video: search it as an image"
            )
        if not self._container.streams.video:
            self._container.close()
            raise VideoLoadError(self.source, "contains no video stream")
        self._stream = self._container.streams.video[0]
        cc = self._stream.codec_context
        if cc.width * cc.height > MAX_FRAME_PIXELS:
            self._container.close()
            raise VideoLoadError(self.source, f"frame size {cc.width}x{cc.height} is implausible")
        self._stream.thread_type = "AUTO"
        cc.thread_count = threads
        self.report = DecodeReport()
        self._first_t: float | None = None
        self.info = self._info()
        self.report.expected_end_s = self.info.end_s

    # -------------------------------------------------------------- metadata

    @property
    def _start_s(self) -> float:
        """Where the file's timeline starts, so timestamps match a player's position."""
        c, s = self._container, self._stream
        if c.start_time is not None:
            return float(c.start_time) / 1_000_000.0
        if s.start_time is not None and s.time_base is not None:
            return float(s.start_time * s.time_base)
        return 0.0

    def _info(self) -> VideoInfo:
        c, s = self._container, self._stream
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate and 0 < float(rate) < 1000 else None
        duration: float | None = None
        end: float | None = None
        if s.duration is not None and s.time_base is not None:
            stream_start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
            duration = float(s.duration * s.time_base)
            end = duration + stream_start - self._start_s
        elif c.duration is not None:
            duration = end = float(c.duration) / 1_000_000.0
        frames = int(s.frames) if s.frames else None
        if frames is None and duration and fps:
            frames = round(duration * fps)
        w, h = s.codec_context.width, s.codec_context.height
        rotation = self._peek_rotation()
        if rotation in (90, 270):
            w, h = h, w
        return VideoInfo(
            path=self.source,
            container=c.format.name.split(",")[0],
            codec=s.codec_context.name,
            width=int(w),
            height=int(h),
            fps=fps,
            duration_s=duration,
            end_s=end,
            frame_count=frames,
            rotation=rotation,
        )

    def _peek_rotation(self) -> int:
        """Rotation from the first frame's display matrix (FFmpeg attaches it to every frame)."""
        import av

        try:
            for packet in self._container.demux(self._stream):
                for frame in packet.decode():
                    if frame.time is not None:
                        self._first_t = max(0.0, float(frame.time) - self._start_s)
                    return rotation_degrees(display_matrix(frame))
                if packet.size == 0:
                    break
        except (av.error.FFmpegError, OSError, ValueError):
            return 0
        finally:
            self._rewind()
        return 0

    def _rewind(self) -> None:
        import av

        try:
            self._container.seek(0, backward=True, any_frame=False)
        except (av.error.FFmpegError, OSError, ValueError):
            # unseekable input: reopen instead
            self._container.close()
            self._container = av.open(str(self.path), mode="r", metadata_errors="ignore")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
        self._stream.codec_context.flush_buffers()

    # -------------------------------------------------------------- frames

    def frames(
        self,
        fps: float | None = 5.0,
        start: float | None = None,
        end: float | None = None,
    ) -> Iterator[SampledFrame]:
        """Upright RGB frames: one per ``1/fps`` seconds (the first frame in each interval), or
        every frame when ``fps`` is None; only between ``start`` and ``end`` seconds if given.

        Never raises for damaged data: errors go to :attr:`report` and decoding carries on, or
        stops at the last readable frame.
        """
        if fps is not None and fps <= 0:
            raise InvalidInputError("sampling rate must be positive (frames per second)")
        if start is not None and end is not None and end <= start:
            raise InvalidInputError("the end time must come after the start time")
        step = None if fps is None else 1.0 / fps
        seeked = start is not None and start > 0 and self._seek(start)
        native_fps = self.info.fps
        report = self.report
        last_bucket = -1
        for count, (t, frame) in enumerate(self._decoded()):
            if start is not None and t < start - 1e-6:
                continue
            if end is not None and t > end + 1e-6:
                return
            if report.first_good_s is None:
                report.first_good_s = t
            report.last_good_s = t
            if step is not None:
                bucket = math.floor((t + 1e-6) / step)
                if bucket <= last_bucket:
                    continue
                last_bucket = bucket
            image = self._to_rgb(frame, report)
            if image is None:
                continue
            if seeked and native_fps:
                # after a seek the count restarts: estimate the frame number from the time
                index = round((t - (self._first_t or 0.0)) * native_fps)
            else:
                index = count
            report.frames_sampled += 1
            yield SampledFrame(index=index, t=t, image=image)

    def _decoded(self) -> Iterator[tuple[float, Any]]:
        """Every decodable frame with its time; damage is recorded in the report, not raised."""
        import av

        report = self.report
        start_s = self._start_s
        consecutive = 0
        with _ffmpeg_log() as logs:
            packets = self._container.demux(self._stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    return
                except (av.error.FFmpegError, OSError, ValueError) as exc:
                    report.error(f"reading stopped: {_short(exc)}")
                    report.stopped = "the rest of the file could not be read"
                    return
                try:
                    decoded = packet.decode()
                    consecutive = 0
                except (av.error.FFmpegError, ValueError) as exc:
                    report.error(f"damaged data at byte {packet.pos}: {_short(exc)}")
                    consecutive += 1
                    if consecutive >= MAX_CONSECUTIVE_ERRORS:
                        report.stopped = f"{consecutive} packets in a row could not be decoded"
                        return
                    continue
                finally:
                    for _level, _name, message in logs:
                        report.error(message)
                    logs.clear()
                for frame in decoded:
                    if frame.time is None:
                        continue
                    report.frames_decoded += 1
                    if frame.is_corrupt:
                        report.corrupt_frames += 1
                    yield max(0.0, float(frame.time) - start_s), frame

    def _seek(self, start: float) -> bool:
        """Jump to the key frame before ``start``; False if decoding restarts from 0 instead."""
        import av

        s = self._stream
        if s.time_base is None:
            return False
        target = int((start + self._start_s) / float(s.time_base))
        try:
            self._container.seek(target, stream=s, backward=True, any_frame=False)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            # decoding from the start and discarding frames gives the same frames, only slower
            self.report.error(f"seek to {start:.2f}s failed ({_short(exc)}); decoding from 0")
            self._rewind()
            return False
        self._stream.codec_context.flush_buffers()
        return True

    def _to_rgb(self, frame: Any, report: DecodeReport) -> ImageArray | None:
        try:
            image = frame.to_ndarray(format="rgb24")
        except (ValueError, MemoryError) as exc:
            report.error(f"frame at {frame.time} could not be converted: {exc}")
            return None
        return orient(image, display_matrix(frame))

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(exc: Exception) -> str:
    """FFmpeg's reason without the errno and call-site noise PyAV adds."""
    return str(getattr(exc, "strerror", None) or exc).split(";")[0]


@contextmanager
def _ffmpeg_log() -> Iterator[list[tuple[int, str, str]]]:
    """Capture FFmpeg's error messages (they explain damaged files) instead of printing them.

    FFmpeg logging is process-wide: captured from every thread, since decoder threads log too.
    """
    import av

    prev = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(prev)


def open_video(path: Path | str, threads: int = 0) -> VideoReader:
    """Open a video file; raises :class:`VideoLoadError` naming the file if it is not one."""
    return VideoReader(path, threads=threads)
