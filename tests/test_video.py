"""Recorded video: decoding real files (and broken ones), face tracks, best shots, searching a
track under a case and finding a person in footage. Real models, real videos, no mocks."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from sqlalchemy import select
from tests.conftest import ADMIN
from typer.testing import CliRunner

from retroface.cli import video_cmds
from retroface.cli.session import state
from retroface.config import Settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import NotFoundError, PermissionDeniedError
from retroface.gallery.enrol import EnrolItem, items_from_paths
from retroface.media.footage import VideoScan, export_best_shots, scan_video
from retroface.media.images import load_image
from retroface.media.tracking import FaceTracker, assign, iou_matrix, shot_score
from retroface.media.video import VideoLoadError, list_videos, open_video, orient
from retroface.search.service import ProbeProvenance
from retroface.search.views import FootageScanned, FootageUnreadable
from retroface.storage.tables import AuditRecord, Probe, ProbeFace
from retroface.vision.types import FaceEngine

PASSWORD = "a long test password"
PROV = ProbeProvenance("CCTV", "exported from the venue's recorder, exhibit VID/1")
HAMILTON = "video/short_hamilton_clip.mp4"
WALKING = "video/intel_face-demographics-walking_480x270.mp4"
SUBJECT = "lin_manuel_miranda"


# ------------------------------------------------------------------------------ helpers


def remux(src: Path, dst: Path, options: dict[str, str] | None = None) -> Path:
    """Copy the video stream into another container without re-encoding."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options or {}) as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = target
            out.mux(packet)
    return dst


def encode(
    frames: list[np.ndarray],
    dst: Path,
    codec: str = "libx264",
    rate: int = 10,
    rotation: int | None = None,
    hflip: bool = False,
) -> Path:
    """Write RGB frames as a video, optionally with a display-matrix rotation."""
    with av.open(str(dst), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p" if codec != "libx264" else "yuv444p"
        if codec == "libx264":
            stream.options = {"crf": "0"}
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        for n, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = n, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def hamilton_scan(data_dir: Path, engine: FaceEngine) -> VideoScan:
    return scan_video(data_dir / HAMILTON, engine, fps=5.0)


@pytest.fixture(scope="module")
def walking_scan(data_dir: Path, engine: FaceEngine) -> VideoScan:
    return scan_video(data_dir / WALKING, engine, fps=5.0)


# ------------------------------------------------------------------------------ decoding


def test_sampling_every_frame_and_seeking(data_dir: Path) -> None:
    with open_video(data_dir / HAMILTON) as reader:
        info = reader.info
        every = [(f.index, round(f.t, 4)) for f in reader.frames(fps=None)]
    assert (info.width, info.height, info.frame_count) == (640, 360, 275)
    assert info.fps == pytest.approx(29.97, abs=0.01)
    assert len(every) == 275
    assert [i for i, _ in every] == list(range(275))
    with open_video(data_dir / HAMILTON) as reader:
        sampled = list(reader.frames(fps=5.0))
    assert len(sampled) == 46  # 9.2 s at 5 fps
    gaps = np.diff([f.t for f in sampled])
    assert gaps.min() > 0.15 and gaps.max() < 0.25
    assert sampled[0].image.shape == (360, 640, 3) and sampled[0].image.dtype == np.uint8
    with open_video(data_dir / HAMILTON) as reader:
        window = list(reader.frames(fps=None, start=3.0, end=4.0))
    assert 28 <= len(window) <= 31
    assert all(3.0 <= f.t <= 4.0 for f in window)
    # frame numbers after a seek match those of a decode from the start
    by_time = dict((t, i) for i, t in every)
    assert all(by_time[round(f.t, 4)] == f.index for f in window)


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_other_containers(data_dir: Path, tmp_path: Path, suffix: str) -> None:
    copy = remux(data_dir / HAMILTON, tmp_path / f"clip{suffix}")
    with open_video(copy) as reader:
        n = sum(1 for _ in reader.frames(fps=None))
        assert reader.report.complete
    assert n == 275


def test_avi(data_dir: Path, tmp_path: Path) -> None:
    with open_video(data_dir / WALKING) as reader:
        frames = [f.image for f in reader.frames(fps=None)][:12]
    avi = encode(frames, tmp_path / "clip.avi", codec="mpeg4", rate=12)
    with open_video(avi) as reader:
        assert reader.info.container == "avi"
        assert sum(1 for _ in reader.frames(fps=None)) == 12


def test_rotation_metadata_turns_frames_upright(tmp_path: Path) -> None:
    """All eight display matrices (four turns, mirrored or not) come out as a player shows them."""
    upright = np.zeros((48, 64, 3), np.uint8)
    upright[:12, :24] = 255  # white block top left
    upright[36:, 48:, 0] = 255  # red block bottom right
    for rotation in (0, 90, 180, 270):
        for hflip in (False, True):
            name = f"r{rotation}{'f' if hflip else ''}.mp4"
            path = encode([upright] * 2, tmp_path / name, rotation=rotation, hflip=hflip)
            with open_video(path) as reader:
                got = next(reader.frames(fps=None)).image
            # the display matrix means: turn counter-clockwise by `rotation`, then mirror
            expected = np.rot90(upright, rotation // 90)
            if hflip:
                expected = expected[:, ::-1]
            assert got.shape == expected.shape
            assert np.abs(got.astype(int) - expected).mean() < 8, (rotation, hflip)


def test_rotated_phone_video_finds_the_upright_face(
    data_dir: Path, tmp_path: Path, engine: FaceEngine
) -> None:
    """A phone held upright stores sideways frames plus a 90 degree display rotation."""
    photo = load_image(next((data_dir / "people" / SUBJECT).iterdir()))
    h, w = (photo.shape[0] // 2) * 2, (photo.shape[1] // 2) * 2
    sideways = np.rot90(photo[:h, :w], -1)  # what the sensor recorded
    path = encode([sideways] * 3, tmp_path / "phone.mp4", rotation=90)
    scan = scan_video(path, engine, fps=None)
    assert scan.info.rotation == 90 and (scan.info.width, scan.info.height) == (w, h)
    assert len(scan.tracks) == 1
    assert abs(scan.tracks[0].best.face.quality.roll_deg) < 15
    # without the correction the face lies on its side (or is not found at all)
    assert all(abs(f.quality.roll_deg) > 45 for f in engine.analyse(orient(sideways, None)))


def test_truncated_and_damaged_files_decode_what_they_can(
    data_dir: Path, tmp_path: Path, engine: FaceEngine
) -> None:
    # an MP4 whose index comes first (as exported for streaming), cut off at 60%
    whole = remux(data_dir / HAMILTON, tmp_path / "whole.mp4", {"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    scan = scan_video(cut, engine, fps=5.0)
    report = scan.report
    assert report.truncated and not report.complete
    assert report.last_good_s is not None and 4.0 < report.last_good_s < 7.0
    assert report.expected_end_s is not None and report.expected_end_s > 9.0
    assert report.error_count >= 1 and report.errors
    assert scan.tracks  # what was decoded was searched
    assert scan.to_dict()["decode"]["last_good_s"] == round(report.last_good_s, 3)

    # damage in the middle: decoding carries on to the end and counts the errors
    broken = bytearray(data)
    rng = np.random.default_rng(0)
    broken[len(data) // 2 : len(data) // 2 + 20_000] = rng.integers(
        0, 256, 20_000, np.uint8
    ).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(broken))
    with open_video(damaged) as reader:
        n = sum(1 for _ in reader.frames(fps=None))
        assert reader.report.error_count > 0 and not reader.report.complete
        assert reader.report.last_good_s is not None and reader.report.last_good_s > 9.0
    assert 200 < n <= 275

    # the shared file cut off: its index (at the end) is gone, so nothing can be decoded
    original = (data_dir / HAMILTON).read_bytes()
    headless = tmp_path / "unfinished.mp4"
    headless.write_bytes(original[: len(original) // 2])
    with pytest.raises(VideoLoadError, match=r"unfinished\.mp4: .*moov"):
        open_video(headless)


def test_not_a_video(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is a statement, not a video\n" * 20)
    with pytest.raises(VideoLoadError, match=r"notes\.mp4: not a readable video"):
        open_video(text)
    other = tmp_path / "notes.txt"
    other.write_text("plain text\n" * 20)
    with pytest.raises(VideoLoadError, match=r"notes\.txt: not a recognised video file"):
        open_video(other)
    with pytest.raises(VideoLoadError, match="no such file"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoLoadError, match="empty"):
        open_video(tmp_path / "empty.mp4")
    with pytest.raises(VideoLoadError, match="folder"):
        open_video(tmp_path)
    image = tmp_path / "still.mp4"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(VideoLoadError, match=r"still\.mp4: is a still image \(png\)"):
        open_video(image)
    assert list_videos(tmp_path) == sorted(
        [tmp_path / "empty.mp4", tmp_path / "notes.mp4", tmp_path / "still.mp4"]
    )


# ------------------------------------------------------------------------------ tracking


def test_assignment_hungarian_and_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    cost = np.array([[0.1, 0.2], [0.15, 0.9]])
    allowed = np.ones_like(cost, dtype=bool)
    # the optimum is (0, 1) + (1, 0): total 0.35
    assert sorted(assign(cost, allowed)) == [(0, 1), (1, 0)]
    blocked = allowed.copy()
    blocked[0, 1] = False
    assert sorted(assign(cost, blocked)) == [(0, 0), (1, 1)]
    assert assign(np.zeros((0, 3)), np.zeros((0, 3), dtype=bool)) == []
    # without SciPy: greedy takes the cheapest pair first, (0, 0), and then (1, 1)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    assert sorted(assign(cost, allowed)) == [(0, 0), (1, 1)]
    assert sorted(assign(cost, np.zeros_like(allowed))) == []
    boxes = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], float)
    iou = iou_matrix(np.array([[0, 0, 10, 10]], float), boxes)
    assert iou[0, 0] == pytest.approx(50 / 150) and iou[0, 1] == 0


def test_hamilton_main_speaker_is_one_dominant_track(hamilton_scan: VideoScan) -> None:
    tracks = sorted(hamilton_scan.tracks, key=lambda t: -t.n_faces)
    main, second = tracks[0], tracks[1]
    assert len(hamilton_scan.tracks) <= 15  # a handful of people, not dozens of fragments
    assert main.n_faces >= 20 and main.n_faces >= 2 * second.n_faces
    assert main.last_s - main.first_s >= 5.0
    best = main.best
    assert best.face.quality.acceptable
    assert best.sighting.score == max(s.score for s in main.sightings)
    assert best.frame is not None and best.frame.shape == (360, 640, 3)
    fused = main.template("fused")
    assert np.linalg.norm(fused) == pytest.approx(1.0, abs=1e-5)
    # the fused template is closer to the track's faces than a typical single face is
    assert float(np.mean(main.similarities(fused))) > 0.5
    data = hamilton_scan.to_dict()
    assert data["samples"] == 46 and data["decode"]["complete"]
    row = next(t for t in data["tracks"] if t["id"] == main.id)
    assert {"id", "faces", "frames", "first_s", "last_s", "segments", "best_shot"} <= set(row)
    assert {"inter_eye_px", "sharpness", "yaw_deg"} <= set(row["best_shot"]["quality"])
    assert shot_score(best.face.quality) > 0
    with pytest.raises(NotFoundError, match="no track 99"):
        hamilton_scan.track(99)


def test_walking_video_one_track_per_person(walking_scan: VideoScan) -> None:
    """Two people walk towards the camera through the whole clip (14 samples at 5 fps)."""
    assert walking_scan.samples == 14
    assert len(walking_scan.tracks) == 2
    for track in walking_scan.tracks:
        assert track.n_faces >= 12
        assert track.first_s < 0.5 and track.last_s > 2.3
    # they are side by side: the tracks never swap (the man stays right of the woman)
    right = max(walking_scan.tracks, key=lambda t: t.sightings[0].box[0])
    assert all(s.box[0] > 280 for s in right.sightings)


def test_tracker_survives_short_gaps(data_dir: Path, engine: FaceEngine) -> None:
    """Drop two samples' detections (an occlusion): the track carries on with the same id."""
    tracker = FaceTracker()
    with open_video(data_dir / WALKING) as reader:
        for k, frame in enumerate(reader.frames(fps=5.0)):
            faces = [] if k in (5, 6) else engine.analyse(frame.image)
            tracker.update(frame.t, frame.index, faces, frame.image)
    tracks = tracker.finish()
    assert len(tracks) == 2 and all(t.n_faces == 12 for t in tracks)
    assert all(len(t.segments(gap=0.5)) == 2 for t in tracks)


def test_export_best_shots(hamilton_scan: VideoScan, tmp_path: Path) -> None:
    written = export_best_shots(hamilton_scan, tmp_path / "shots")
    assert len(written) == len(hamilton_scan.tracks)
    first = load_image(written[0])
    assert min(first.shape[:2]) >= 112


# ------------------------------------------------------------------------------ casework


@pytest.fixture
def casework(app: AppContext, data_dir: Path) -> dict[str, Principal]:
    """Users, a gallery (the six people plus LFW distractors) and an authorised case V1."""
    app.users.ensure_admin("admin", PASSWORD)
    for name, roles in (("olive", "operator"), ("arthur", "authoriser")):
        app.users.add(ADMIN, name, roles, PASSWORD)
    people = [p for p in sorted((data_dir / "people").iterdir()) if not p.name.startswith("_")]
    names = sorted(p.name for p in (data_dir / "lfw").iterdir())[::97][:30]
    lfw = [
        EnrolItem(path=sorted((data_dir / "lfw" / n).iterdir())[0], subject=f"lfw_{n}")
        for n in names
    ]
    app.enroller().run(ADMIN, [*items_from_paths(people), *lfw])
    team = {n: app.users.authenticate_password(n, PASSWORD) for n in ("olive", "arthur")}
    app.cases.open(
        team["olive"], "V1", "robbery", "identify the speaker", "serious offence; footage only lead"
    )
    app.cases.authorise(team["arthur"], "V1", True, "necessary and proportionate")
    return team


def _actions(app: AppContext) -> list[str]:
    with app.db.session() as s:
        return list(s.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))


def test_search_a_track_under_a_case(
    app: AppContext, casework: dict[str, Principal], hamilton_scan: VideoScan
) -> None:
    olive = casework["olive"]
    main = max(hamilton_scan.tracks, key=lambda t: t.n_faces)
    results = {}
    for template in ("best", "fused"):
        result = app.footage.search_track(
            olive, "V1", hamilton_scan, main.id, PROV, template=template
        )
        assert result.candidates[0].subject == SUBJECT
        assert result.label == "investigative lead — not an identification"
        assert result.video["track"] == main.id and result.video["template"] == template
        results[template] = result.candidates[0].similarity
    assert results["fused"] > results["best"]  # measured: 0.73 vs 0.58 (docs/video.md)
    with app.db.session() as s:
        probes = list(s.scalars(select(Probe).order_by(Probe.id)))
        assert [p.media_type for p in probes] == ["video", "video"]
        assert (probes[0].original_name or "").startswith("short_hamilton_clip.mp4@")
        assert (probes[0].width, probes[0].height) == (640, 360)
        extra = s.scalars(select(ProbeFace.extra).order_by(ProbeFace.id)).all()
    assert extra[1]["template"] == "fused" and extra[1]["fused_faces"] == 10
    assert len(extra[0]["video_sha256"]) == 64 and extra[0]["t"] == round(main.best.sighting.t, 3)
    assert _actions(app).count("search.run") == 2


def test_search_a_track_needs_a_searchable_case(
    app: AppContext, casework: dict[str, Principal], hamilton_scan: VideoScan
) -> None:
    olive = casework["olive"]
    app.cases.open(olive, "V2", "robbery", "identify the speaker", "not yet approved by anyone")
    with pytest.raises(PermissionDeniedError, match="awaiting authorisation"):
        app.footage.search_track(olive, "V2", hamilton_scan, 1, PROV)
    # the whole video search refuses before scanning, and says so in the audit log
    with pytest.raises(PermissionDeniedError, match="awaiting authorisation"):
        app.footage.search_video(olive, "V2", hamilton_scan.path, 1, PROV)
    assert _actions(app)[-1] == "video.search.refused"


def test_find_a_person_in_footage(
    app: AppContext,
    casework: dict[str, Principal],
    data_dir: Path,
    tmp_path: Path,
    hamilton_scan: VideoScan,
) -> None:
    olive = casework["olive"]
    photo = load_image(next((data_dir / "people" / SUBJECT).iterdir()))
    probe = app.engine.analyse(photo)[0].embedding
    broken = tmp_path / "exhibit3.mp4"
    broken.write_text("not a video")
    videos = [data_dir / HAMILTON, data_dir / WALKING, broken]
    app.cases.open(olive, "V2", "robbery", "find the speaker", "not yet approved by anyone")
    with pytest.raises(PermissionDeniedError):
        app.footage.find(olive, "V2", probe, videos)
    assert "video.find" not in _actions(app)
    assert _actions(app)[-1] == "video.find.refused"  # the refusal is audited
    with pytest.raises(PermissionDeniedError):
        app.footage.find(casework["arthur"], "V1", probe, videos)  # not an operator
    assert _actions(app)[-1] == "video.find.refused"

    result = app.footage.find(olive, "V1", probe, videos, probe_ref={"name": "lmm.png"})
    hamilton, walking, bad = result.videos
    assert isinstance(hamilton, FootageScanned) and isinstance(walking, FootageScanned)
    assert walking.matches == [] and walking.tracks == 2
    assert isinstance(bad, FootageUnreadable) and "exhibit3.mp4" in bad.error
    assert "sha256" in bad.model_dump() and "duration_s" not in bad.model_dump()
    main = max(hamilton_scan.tracks, key=lambda t: t.n_faces)
    assert hamilton.matches[0].track == main.id
    assert hamilton.matches[0].similarity_fused > 0.5
    # seen from the wide shot (0.8 s) to the end of the medium shot (7.8 s), not the audience
    (start, end), *_ = hamilton.spans
    assert start < 1.5 and 7.0 < end < 8.0
    with app.db.session() as s:
        record = s.scalar(select(AuditRecord).where(AuditRecord.action == "video.find"))
        assert record is not None and record.case_ref == "V1" and record.actor == "olive"
        assert record.details["probe"] == {"name": "lmm.png"}
        assert [v["name"] for v in record.details["videos"]] == [
            "short_hamilton_clip.mp4",
            "intel_face-demographics-walking_480x270.mp4",
            "exhibit3.mp4",
        ]
        assert record.details["videos"][0]["spans"] == hamilton.spans


def test_an_unhashable_video_has_no_hash_key() -> None:
    """As before the typed results: a file that cannot even be read reports no ``sha256``."""
    gone = FootageUnreadable(video="x.mp4", path="/gone/x.mp4", error="No such file")
    assert gone.model_dump(mode="json") == {
        "video": "x.mp4",
        "path": "/gone/x.mp4",
        "error": "No such file",
    }


@pytest.mark.slow
def test_best_shot_against_fused_template_with_500_distractors(
    app: AppContext, data_dir: Path, hamilton_scan: VideoScan
) -> None:
    """The measurement in docs/video.md: people/* plus 500 LFW identities."""
    app.users.ensure_admin("admin", PASSWORD)
    app.users.add(ADMIN, "olive", "operator", PASSWORD)
    app.users.add(ADMIN, "arthur", "authoriser", PASSWORD)
    olive = app.users.authenticate_password("olive", PASSWORD)
    people = [p for p in sorted((data_dir / "people").iterdir()) if not p.name.startswith("_")]
    names = sorted(p.name for p in (data_dir / "lfw").iterdir())
    lfw = [
        EnrolItem(path=sorted((data_dir / "lfw" / n).iterdir())[0], subject=f"lfw_{n}")
        for n in names[:: len(names) // 500][:500]
    ]
    app.enroller().run(ADMIN, [*items_from_paths(people), *lfw])
    app.cases.open(olive, "V1", "robbery", "identify the speaker", "serious; footage only lead")
    # the margin to the runner-up is a measurement: list it even below the operating threshold
    app.cases.authorise(
        app.users.authenticate_password("arthur", PASSWORD),
        "V1",
        True,
        "proportionate",
        investigation_mode=True,
    )
    main = max(hamilton_scan.tracks, key=lambda t: t.n_faces)
    margins = {}
    for template in ("best", "fused"):
        r = app.footage.search_track(olive, "V1", hamilton_scan, main.id, PROV, template=template)
        top = r.candidates
        assert top[0].subject == SUBJECT
        margins[template] = top[0].similarity - top[1].similarity
    assert margins["fused"] > margins["best"]


# ------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, engine: FaceEngine
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Invoke `retroface video …` in-process as ``user``; returns (code, stdout, all output)."""
    home = tmp_path / "home"
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    ctx = AppContext(Settings(home=home, database_url=database_url), engine=engine)
    state.__dict__["ctx"] = ctx

    def invoke(*args: str, user: str | None = None) -> tuple[int, str, str]:
        state._principal = None
        state.user = user
        result = CliRunner().invoke(video_cmds.app, list(args), catch_exceptions=False)
        return result.exit_code, result.stdout, result.output

    yield invoke
    state.__dict__.pop("ctx", None)
    state._principal = None
    state.user = None
    ctx.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_scan(cli: Callable[..., tuple[int, str, str]], data_dir: Path, tmp_path: Path) -> None:
    code, out, _ = cli("scan", str(data_dir / WALKING), "--json", "--export", str(tmp_path / "x"))
    assert code == 0
    data = json.loads(out)
    assert len(data["tracks"]) == 2 and data["sampling_fps"] == 5.0
    assert all({"id", "faces", "first_s", "last_s", "best_shot"} <= set(t) for t in data["tracks"])
    assert len(list((tmp_path / "x").glob("*.jpg"))) == 2
    code, out, _ = cli("scan", str(data_dir / WALKING), "--start", "1", "--det-size", "1280")
    assert code == 0 and "2 tracks" in out
    bad = tmp_path / "statement.mp4"
    bad.write_text("not a video")
    code, _, output = cli("scan", str(bad))
    assert code == 2 and "statement.mp4" in output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_search_and_find(
    cli: Callable[..., tuple[int, str, str]], data_dir: Path, tmp_path: Path
) -> None:
    ctx: AppContext = state.ctx
    ctx.users.ensure_admin("admin", PASSWORD)
    ctx.users.add(ADMIN, "olive", "operator", PASSWORD)
    ctx.users.add(ADMIN, "arthur", "authoriser", PASSWORD)
    ctx.enroller().run(
        ADMIN,
        items_from_paths([data_dir / "people" / p for p in (SUBJECT, "barack_obama", "joe_biden")]),
    )
    olive = ctx.users.authenticate_password("olive", PASSWORD)
    ctx.cases.open(olive, "V1", "robbery", "identify the speaker", "serious; footage only lead")
    ctx.cases.authorise(
        ctx.users.authenticate_password("arthur", PASSWORD), "V1", True, "proportionate"
    )
    video = str(data_dir / HAMILTON)
    code, _, output = cli("search", video, "--track", "1", "--case", "V1", user="olive")
    assert code == 2 and "provenance" in output
    code, out, _ = cli(
        "search",
        video,
        "--track",
        "1",
        "--case",
        "V1",
        "--source",
        "CCTV",
        "--how-obtained",
        "venue recorder export, exhibit VID/1",
        "--json",
        user="olive",
    )
    assert code == 0, out
    result = json.loads(out)
    assert result["candidates"][0]["subject"] == SUBJECT
    assert result["video"]["template"] == "fused"

    probe = next((data_dir / "people" / SUBJECT).iterdir())
    code, out, _ = cli(
        "find",
        video,
        str(data_dir / WALKING),
        "--case",
        "V1",
        "--probe",
        str(probe),
        "--json",
        user="olive",
    )
    assert code == 0, out
    found = json.loads(out)
    assert found["videos"][0]["matches"] and not found["videos"][1]["matches"]
    code, out, _ = cli("find", video, "--case", "V1", "--probe", str(probe), user="olive")
    assert code == 0 and "seen at 00:00.8" in out
    code, _, output = cli("find", video, "--case", "NOPE", "--probe", str(probe), user="olive")
    assert code == 2 and "NOPE" in output
