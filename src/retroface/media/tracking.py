"""Face tracks across sampled video frames: who is the same face from one sample to the next.

A video holds the same person in hundreds of frames; searching each would flood reviewers with
duplicates and pick poor frames. Detections are linked into tracks by box overlap (IoU) and
embedding similarity, solved as an assignment problem (Hungarian, via SciPy when installed, else
greedy), so each track stands for one person on screen. A track keeps its best shot (the face most
fit to search with), when it was first and last seen, and a fused template (the mean of its best
faces' embeddings), which averages out pose, blur and expression.

Only the best few faces keep their pixels; the rest keep an embedding and a box, so memory grows
by about 2 KB per face however long the video is.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from retroface.vision.types import Face, FloatArray, ImageArray, Quality, l2_normalise

TemplateKind = Literal["best", "fused"]


@dataclass(frozen=True)
class TrackerConfig:
    """Association rules; the defaults are tuned on 5 fps sampling of the shared test clips."""

    #: samples a track may go unseen (occlusion, a missed detection) and still continue
    max_missed: int = 5
    #: appearance alone links a detection to a track at or above this cosine similarity
    min_similarity: float = 0.35
    #: box overlap links with weaker appearance agreement (profile faces, motion blur), but
    #: only within one shot: across a cut, boxes in the same place are unrelated faces
    min_iou: float = 0.3
    min_similarity_with_overlap: float = 0.15
    #: a cut is a colour-histogram correlation below this between consecutive samples (or a
    #: mean grey-level change above ``cut_difference``); a false cut only costs the IoU help once
    cut_correlation: float = 0.95
    cut_difference: float = 0.2
    #: weight of IoU against similarity in the assignment cost
    iou_weight: float = 0.5
    #: embeddings of a track's most recent faces compared against a new detection
    recent: int = 5
    #: faces whose embeddings are averaged into the fused template (10 measured best on the
    #: Hamilton clip: see docs/video.md)
    fuse_best: int = 10
    #: best faces kept with their pixels (the best one with its whole frame)
    keep_shots: int = 3
    #: after the pass, join tracks that never overlap in time and whose fused templates agree
    #: at least this much (the same person across a cut or a long occlusion); None turns it off
    merge_similarity: float | None = 0.5
    #: tracks with fewer faces are dropped as likely false detections (1 keeps everything)
    min_faces: int = 2


def shot_score(q: Quality) -> float:
    """How fit a face is to search with: confident, large, sharp and frontal.

    Each factor saturates (60 px between the eyes, sharpness ~100) because beyond that a bigger or
    crisper face no longer helps the recogniser, while turning away always hurts. A face that fails
    the quality policy counts half, so an acceptable face wins whenever there is one.
    """
    size = min(1.0, q.inter_eye_px / 60.0)
    sharp = q.sharpness / (q.sharpness + 100.0)
    pose = max(0.0, math.cos(math.radians(min(abs(q.yaw_deg), 90.0)))) ** 2
    return float(q.det_score * size * sharp * pose * (1.0 if q.acceptable else 0.5))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of (N, 4) and (M, 4) boxes (x1, y1, x2, y2)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def assign(cost: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one pairs among the allowed ones (Hungarian if SciPy is there)."""
    if cost.size == 0 or not allowed.any():
        return []
    big = 1e6
    masked = np.where(allowed, cost, big)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # SciPy is optional: greedy is exact when faces are few and far apart
        pairs: list[tuple[int, int]] = []
        used_r: set[int] = set()
        used_c: set[int] = set()
        for flat in np.argsort(masked, axis=None, kind="stable"):
            r, c = divmod(int(flat), masked.shape[1])
            if masked[r, c] >= big:
                break
            if r not in used_r and c not in used_c:
                pairs.append((r, c))
                used_r.add(r)
                used_c.add(c)
        return pairs
    rows, cols = linear_sum_assignment(masked)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


@dataclass
class TrackedFace:
    """One sighting in a track: enough to place it in time and compare it, not its pixels."""

    t: float
    frame_index: int
    box: tuple[float, float, float, float]
    det_score: float
    quality: Quality
    score: float
    embedding: FloatArray


@dataclass
class Shot:
    """A face kept with its pixels because it is among the track's best."""

    sighting: TrackedFace
    face: Face
    frame: ImageArray | None = None  # the whole frame, kept for the single best shot only


@dataclass
class Track:
    id: int
    sightings: list[TrackedFace] = field(default_factory=list)
    shots: list[Shot] = field(default_factory=list)  # best first, at most fuse_best
    missed: int = 0
    recent: deque[FloatArray] = field(default_factory=deque)
    shot_no: int = 0  # the shot (between cuts) of the last sighting

    @property
    def best(self) -> Shot:
        return self.shots[0]

    @property
    def first_s(self) -> float:
        return self.sightings[0].t

    @property
    def last_s(self) -> float:
        return self.sightings[-1].t

    @property
    def n_faces(self) -> int:
        return len(self.sightings)

    @property
    def frames(self) -> int:
        return len({s.frame_index for s in self.sightings})

    @property
    def last_box(self) -> tuple[float, float, float, float]:
        return self.sightings[-1].box

    def template(self, kind: TemplateKind = "fused", n: int = 5) -> FloatArray:
        """The best shot's embedding, or the renormalised mean of the best ``n`` faces'.

        Averaging the best few faces cancels pose, blur and expression that any single frame has;
        only the best are used because poor faces pull the mean away from the person.
        """
        if kind == "best":
            return self.best.sighting.embedding
        chosen = sorted(self.sightings, key=lambda s: -s.score)[: max(1, n)]
        mean = np.mean([s.embedding for s in chosen], axis=0)
        return l2_normalise(mean[None])[0]

    def segments(self, gap: float = 1.0) -> list[tuple[float, float]]:
        """Time spans in which the track was seen, split where it went unseen over ``gap`` s."""
        spans: list[tuple[float, float]] = []
        for s in self.sightings:
            if spans and s.t - spans[-1][1] <= gap:
                spans[-1] = (spans[-1][0], s.t)
            else:
                spans.append((s.t, s.t))
        return spans

    def similarities(self, probe: FloatArray) -> FloatArray:
        """Cosine similarity of ``probe`` to every sighting, in time order."""
        emb = np.stack([s.embedding for s in self.sightings])
        return np.asarray(emb @ np.asarray(probe, np.float32), dtype=np.float32)

    def thumbnail(self, margin: float = 0.4, min_side: int = 112) -> ImageArray:
        """The best shot cut from its frame with some context around the face."""
        frame = self.best.frame
        if frame is None:
            return self.best.face.crop
        x1, y1, x2, y2 = self.best.face.box
        w, h = x2 - x1, y2 - y1
        side = max(w, h) * (1 + 2 * margin)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        H, W = frame.shape[:2]
        a = max(0, round(cx - side / 2))
        b = max(0, round(cy - side / 2))
        c = min(W, round(cx + side / 2))
        d = min(H, round(cy + side / 2))
        crop = frame[b:d, a:c]
        if crop.size == 0:
            return self.best.face.crop
        if min(crop.shape[:2]) < min_side:
            import cv2

            scale = min_side / min(crop.shape[:2])
            size = (round(crop.shape[1] * scale), round(crop.shape[0] * scale))
            crop = np.asarray(cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC), np.uint8)
        return np.ascontiguousarray(crop)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "id": self.id,
            "faces": self.n_faces,
            "frames": self.frames,
            "first_s": round(self.first_s, 3),
            "last_s": round(self.last_s, 3),
            "duration_s": round(self.last_s - self.first_s, 3),
            "segments": [[round(a, 3), round(b, 3)] for a, b in self.segments()],
            "best_shot": {
                "t": round(best.sighting.t, 3),
                "frame": best.sighting.frame_index,
                "score": round(best.sighting.score, 4),
                "box": [round(float(v), 1) for v in best.face.box],
                "quality": best.face.quality.to_dict(),
            },
        }


class FaceTracker:
    """Feed it each sampled frame's faces in time order; :meth:`finish` returns the tracks."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.active: list[Track] = []
        self.done: list[Track] = []
        self._next_id = 1
        self._signature: tuple[np.ndarray, np.ndarray] | None = None
        self.shot_no = 0
        self.cuts: list[float] = []

    def _is_cut(self, frame: ImageArray) -> bool:
        """Whether ``frame`` starts a new shot (colour histogram and thumbnail change)."""
        import cv2

        # subsample before resizing: area-averaging a whole HD frame costs more than the rest
        step = max(1, min(frame.shape[:2]) // 144)
        small = cv2.resize(frame[::step, ::step], (64, 36), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256])
        hist = (hist / max(float(np.linalg.norm(hist)), 1e-9)).astype(np.float32).ravel()
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
        prev, self._signature = self._signature, (hist, grey)
        if prev is None:
            return False
        corr = float(cv2.compareHist(hist, prev[0], cv2.HISTCMP_CORREL))
        diff = float(np.abs(grey - prev[1]).mean()) / 255.0
        return corr < self.config.cut_correlation or diff > self.config.cut_difference

    def update(self, t: float, frame_index: int, faces: list[Face], frame: ImageArray) -> None:
        cfg = self.config
        if self._is_cut(frame):
            self.shot_no += 1
            self.cuts.append(t)
        sightings = [
            TrackedFace(
                t=t,
                frame_index=frame_index,
                box=f.box,
                det_score=f.det_score,
                quality=f.quality,
                score=shot_score(f.quality),
                embedding=np.asarray(f.embedding, np.float32),
            )
            for f in faces
        ]
        pairs: list[tuple[int, int]] = []
        if self.active and sightings:
            sim = np.full((len(self.active), len(sightings)), -1.0)
            det = np.stack([s.embedding for s in sightings])
            for i, track in enumerate(self.active):
                sim[i] = (np.stack(list(track.recent)) @ det.T).max(axis=0)
            boxes_t = np.array([tr.last_box for tr in self.active], dtype=np.float64)
            boxes_d = np.array([s.box for s in sightings], dtype=np.float64)
            iou = iou_matrix(boxes_t, boxes_d)
            same_shot = np.array([tr.shot_no == self.shot_no for tr in self.active])[:, None]
            allowed = (sim >= cfg.min_similarity) | (
                same_shot & (iou >= cfg.min_iou) & (sim >= cfg.min_similarity_with_overlap)
            )
            cost = 1.0 - (cfg.iou_weight * iou + (1.0 - cfg.iou_weight) * np.clip(sim, 0, 1))
            pairs = assign(cost, allowed)
        matched_tracks = {r for r, _ in pairs}
        for r, c in pairs:
            self._extend(self.active[r], sightings[c], faces[c], frame)
        matched_dets = {c for _, c in pairs}
        for c, s in enumerate(sightings):
            if c not in matched_dets:
                track = Track(id=self._next_id)
                self._next_id += 1
                self._extend(track, s, faces[c], frame)
                self.active.append(track)
                matched_tracks.add(len(self.active) - 1)
        still: list[Track] = []
        for i, track in enumerate(self.active):
            if i not in matched_tracks:
                track.missed += 1
            if track.missed > cfg.max_missed:
                self.done.append(track)
            else:
                still.append(track)
        self.active = still

    def _extend(self, track: Track, s: TrackedFace, face: Face, frame: ImageArray) -> None:
        track.sightings.append(s)
        track.missed = 0
        track.shot_no = self.shot_no
        track.recent.append(s.embedding)
        while len(track.recent) > self.config.recent:
            track.recent.popleft()
        keep = self.config.keep_shots
        if len(track.shots) < keep or s.score > track.shots[-1].sighting.score:
            # the face's crop is a view into nothing shared; the frame is copied only if best
            shot = Shot(sighting=s, face=face)
            track.shots.append(shot)
            track.shots.sort(key=lambda sh: -sh.sighting.score)
            for dropped in track.shots[keep:]:
                dropped.frame = None
            del track.shots[keep:]
            if track.shots[0] is shot:
                for other in track.shots[1:]:
                    other.frame = None
                shot.frame = frame

    def finish(self) -> list[Track]:
        """All tracks, merged across cuts where configured, numbered by first appearance."""
        tracks = [t for t in self.done + self.active if t.n_faces >= 1]
        self.active, self.done = [], []
        if self.config.merge_similarity is not None:
            tracks = merge_tracks(
                tracks, self.config.merge_similarity, self.config.fuse_best, self.config.keep_shots
            )
        tracks = [t for t in tracks if t.n_faces >= self.config.min_faces]
        tracks.sort(key=lambda t: (t.first_s, t.id))
        for i, t in enumerate(tracks, start=1):
            t.id = i
        return tracks


def merge_tracks(
    tracks: list[Track], min_similarity: float, fuse_best: int = 10, keep: int = 3
) -> list[Track]:
    """Join tracks of the same person split by a cut or a long gap.

    Only tracks that never share a frame can merge (two faces in one frame are two people), and
    only when their fused templates agree strongly: a wrong merge hides a person, a missed merge
    only shows one twice.
    """
    tracks = list(tracks)
    while True:
        best: tuple[float, int, int] | None = None
        templates = [t.template("fused", fuse_best) for t in tracks]
        for i in range(len(tracks)):
            for j in range(i + 1, len(tracks)):
                a, b = tracks[i], tracks[j]
                if a.first_s <= b.last_s and b.first_s <= a.last_s:
                    frames_a = {s.frame_index for s in a.sightings}
                    if any(s.frame_index in frames_a for s in b.sightings):
                        continue
                sim = float(templates[i] @ templates[j])
                if sim >= min_similarity and (best is None or sim > best[0]):
                    best = (sim, i, j)
        if best is None:
            return tracks
        _, i, j = best
        a, b = tracks[i], tracks[j]
        a.sightings = sorted(a.sightings + b.sightings, key=lambda s: (s.t, s.frame_index))
        shots = sorted(a.shots + b.shots, key=lambda sh: -sh.sighting.score)
        for sh in shots[1:]:
            sh.frame = None
        a.shots = shots[:keep]
        a.id = min(a.id, b.id)
        del tracks[j]
