"""Video scanning speed: real-time factor and faces per second at 640x360 and 1080p.

A scan decodes every frame (H.264 cannot skip frames between key frames), converts the sampled
ones to RGB, and detects, embeds and tracks faces in them. Its speed is given as the real-time
factor (seconds of video per second of scanning: 4x means an hour of footage in 15 minutes) and
faces per second, with the decode-only share, for:

- the shared 640x360 Hamilton clip, as it is;
- the same clip upscaled to 1920x1080 and re-encoded (H.264, libx264 ``veryfast``), written once
  to ``--work-dir`` (default ``/tmp/retroface-bench``), never into the repository;
- its 3.6-7.8 s part at 1080p, where the speaker is the only face (the "few faces" case: the
  whole clip averages two faces a frame, most of them small faces in the audience).

Every figure is the median of ``--runs`` runs after one warm-up (the fastest run is also given).
CPU time is reported beside wall time: on a shared machine the wall time measures the contention as
much as the code, and a CPU/wall ratio near 1 with 2 threads means another program had a core.

Run: ``python bench/video_speed.py`` (``--fps 5 --threads 2 --det-size 640``). Results go to
``bench/results/video_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RETROFACE_TEST_DATA", REPO.parent / "shared" / "data"))
DEFAULT_JSON = REPO / "bench" / "results" / "video_speed.json"
CLIP = "video/short_hamilton_clip.mp4"
#: The part of the clip where the speaker is the only face on screen, in seconds from its first
#: frame (the shared file's first frame is at 0.84 s, the re-encoded one's at 0).
ONE_FACE = (2.76, 6.97)


def make_1080p(src: Path, out: Path) -> Path:
    """``src`` upscaled to 1920x1080 and encoded as H.264 (once; reused afterwards)."""
    import av

    if out.exists() and out.stat().st_size > 0:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as dst:
        stream = inp.streams.video[0]
        rate = stream.average_rate or Fraction(25)
        enc = dst.add_stream("libx264", rate=rate)
        enc.width, enc.height, enc.pix_fmt = 1920, 1080, "yuv420p"
        enc.options = {"preset": "veryfast", "crf": "23"}
        for frame in inp.decode(stream):
            big = frame.reformat(width=1920, height=1080, format="yuv420p")
            # keep the source's timestamps, so a time in one file is the same moment in the other
            big.pts, big.time_base = frame.pts, frame.time_base
            for packet in enc.encode(big):
                dst.mux(packet)
        for packet in enc.encode():
            dst.mux(packet)
    tmp.replace(out)
    return out


Window = tuple[float, float] | None


def decode_only(path: Path, fps: float, window: Window = None) -> dict[str, float]:
    from retroface.media.video import open_video

    start, end = window or (None, None)
    wall, cpu = time.perf_counter(), time.process_time()
    with open_video(path) as reader:
        n = sum(1 for _ in reader.frames(fps=fps, start=start, end=end))
        decoded = reader.report.frames_decoded
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "sampled": n,
        "decoded": decoded,
    }


def scan_once(path: Path, engine: Any, fps: float, window: Window = None) -> dict[str, Any]:
    from retroface.media.footage import scan_video

    start, end = window or (None, None)
    wall, cpu = time.perf_counter(), time.process_time()
    scan = scan_video(path, engine, fps=fps, start=start, end=end)
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "samples": scan.samples,
        "faces": scan.faces,
        "tracks": len(scan.tracks),
        "video_s": (scan.report.last_good_s or 0) - (scan.report.first_good_s or 0),
        "size": f"{scan.info.width}x{scan.info.height}",
    }


def first_frame_s(path: Path) -> float:
    from retroface.media.video import open_video

    with open_video(path) as reader:
        return next(reader.frames(fps=None)).t


def measure(
    path: Path, engine: Any, fps: float, runs: int, window: Window = None
) -> dict[str, Any]:
    if window is not None:
        offset = first_frame_s(path)
        window = (window[0] + offset, window[1] + offset)
    decode_only(path, fps, window)
    scan_once(path, engine, fps, window)  # warm-up: file cache, onnxruntime arenas
    decodes = [decode_only(path, fps, window) for _ in range(runs)]
    scans = [scan_once(path, engine, fps, window) for _ in range(runs)]
    wall = statistics.median(s["wall_s"] for s in scans)
    fastest = min(s["wall_s"] for s in scans)
    cpu = statistics.median(s["cpu_s"] for s in scans)
    first = scans[0]
    video_s = float(first["video_s"])
    dec_wall = statistics.median(d["wall_s"] for d in decodes)
    return {
        "video": path.name + (f" {window[0]:.1f}-{window[1]:.1f}s" if window else ""),
        "size": first["size"],
        "video_s": round(video_s, 2),
        "sampling_fps": fps,
        "samples": first["samples"],
        "faces": first["faces"],
        "faces_per_sample": round(first["faces"] / max(1, first["samples"]), 2),
        "tracks": first["tracks"],
        "scan_wall_s": round(wall, 3),
        "scan_cpu_s": round(cpu, 3),
        "realtime_factor": round(video_s / wall, 2),
        "realtime_factor_best": round(video_s / fastest, 2),
        "faces_per_s": round(first["faces"] / wall, 1),
        "decode_wall_s": round(dec_wall, 3),
        "decode_realtime_factor": round(video_s / dec_wall, 1),
        "decode_share": round(dec_wall / wall, 2),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--det-size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/retroface-bench"))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from retroface.vision.engines import create_engine

    clip = args.data / CLIP
    if not clip.is_file():
        print(f"test video not found: {clip} (set RETROFACE_TEST_DATA)", file=sys.stderr)
        return 2
    big = make_1080p(clip, args.work_dir / "hamilton_1080p.mp4")
    engine = create_engine("arcface", det_size=args.det_size, threads=args.threads)
    rows = [
        measure(clip, engine, args.fps, args.runs),
        measure(big, engine, args.fps, args.runs),
        measure(big, engine, args.fps, args.runs, ONE_FACE),
    ]
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "settings": {"fps": args.fps, "threads": args.threads, "det_size": args.det_size},
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    title = f"video scan at {args.fps:g} fps, {args.threads} threads, det {args.det_size}"
    table = Table(title=title)
    cols = ("video", "size", "faces/frame", "real time (best)", "faces/s", "decode", "CPU/wall")
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["video"],
            r["size"],
            f"{r['faces_per_sample']}",
            f"{r['realtime_factor']}x ({r['realtime_factor_best']}x)",
            f"{r['faces_per_s']}",
            f"{r['decode_realtime_factor']}x ({r['decode_share']:.0%})",
            f"{r['scan_cpu_s'] / r['scan_wall_s']:.2f}",
        )
    Console(stderr=True).print(table)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
