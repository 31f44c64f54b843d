"""Casework on recorded video: search one face track, find a person in footage.

Anything that compares a face from footage with the gallery or with a probe runs under an
authorised case and leaves an audit record, so it lives here, on top of
:class:`~retroface.search.service.SearchService` (the one place gallery searches happen), and
not in :mod:`retroface.media`, which only decodes, tracks and exports.
:meth:`FootageSearch.search_track` stores the track's best-shot frame as a probe and searches it
like any other; :meth:`FootageSearch.find` checks the case and records what was looked for and
where it was found.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import InvalidInputError, PermissionDeniedError
from retroface.core.labels import LEAD_LABEL
from retroface.core.roles import Role
from retroface.core.text import case_reference, safe_filename
from retroface.governance.cases import CaseService
from retroface.media.footage import (
    ScanProgress,
    VideoScan,
    encode_jpeg,
    file_sha256,
    scan_video,
)
from retroface.media.tracking import TemplateKind, TrackerConfig
from retroface.media.video import VideoLoadError
from retroface.search.service import ProbeProvenance, SearchService
from retroface.search.views import (
    FootageFind,
    FootageMatch,
    FootageScanned,
    FootageUnreadable,
    VideoSearchResult,
)
from retroface.storage.db import Database
from retroface.vision.types import FaceEngine, FloatArray


class FootageSearch:
    """Video casework for an acting :class:`Principal`: role and case checked, every run audited."""

    def __init__(
        self,
        db: Database,
        searches: SearchService,
        cases: CaseService,
        engine: FaceEngine,
        audit: AuditFn,
        *,
        match_threshold: float = 0.36,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.searches = searches
        self.cases = cases
        self.engine = engine
        self.audit = audit
        self.match_threshold = match_threshold
        self.clock = clock
        self.guard = Guard(db, audit, clock)

    def require_searchable_case(
        self, actor: Principal, case_ref: str, action: str = "video.search"
    ) -> None:
        """Refuse before the slow part: scanning footage for a search needs a searchable case.

        A refusal (no operator role, not on the case's team, a case that may not be searched) is
        audited as ``<action>.refused``.
        """
        self.guard.require(actor, Role.OPERATOR, action=action, case_ref=case_ref)
        self.cases.team.require_case(actor, case_ref, action, work=True)
        try:
            with self.db.session() as s:
                self.cases.require_searchable(s, case_ref)
        except PermissionDeniedError as exc:
            self.guard.refused(actor, action, exc, case_ref=case_ref)
            raise

    def search_track(
        self,
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
    ) -> VideoSearchResult:
        """Search one track against the gallery under a case, as any other probe would be.

        The probe image is the track's best-shot frame and its face the best shot; with
        ``template="fused"`` that face carries the fused embedding of the best ``fuse_best``
        faces. Which video, track and time the probe came from goes with the probe face. The
        search service checks the role and the case, and audits the probe and the search.
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
        added = self.searches.add_probe(
            actor,
            case_ref,
            encode_jpeg(best.frame),
            name,
            provenance,
            faces=[face],
            media_type="video",
        )
        result = self.searches.search(actor, case_ref, added.probe_id, 0, top_k, threshold)
        return VideoSearchResult(**dict(result), video=origin, track=track.to_dict())

    def search_video(
        self,
        actor: Principal,
        case_ref: str,
        video: Path,
        track_id: int,
        provenance: ProbeProvenance,
        *,
        fps: float | None = 5.0,
        template: TemplateKind = "fused",
        top_k: int = 20,
        threshold: float | None = None,
        progress: ScanProgress | None = None,
    ) -> VideoSearchResult:
        """Scan ``video`` and search one of its tracks; provenance and case checked first."""
        provenance.check()
        self.require_searchable_case(actor, case_ref)  # before the slow scan, not after
        scan = scan_video(video, self.engine, fps=fps, progress=progress)
        return self.search_track(
            actor,
            case_ref,
            scan,
            track_id,
            provenance,
            template=template,
            top_k=top_k,
            threshold=threshold,
        )

    # ------------------------------------------------------------------ uploaded footage
    # (the web pages: a video uploaded under a case is scanned from memory)

    def scan_upload(
        self,
        actor: Principal,
        case_ref: str,
        data: bytes,
        name: str,
        provenance: ProbeProvenance,
        *,
        fps: float | None = 5.0,
        progress: ScanProgress | None = None,
    ) -> VideoScan:
        """Scan footage uploaded under a case without writing it to disk: its tracks, to pick
        one for :meth:`search_track` (with ``video_sha256=scan.extra["sha256"]``).

        The bytes go into an anonymous in-memory file (Linux ``memfd``) that the decoder opens
        by its ``/proc/self/fd`` path and that vanishes when closed: no plaintext footage on
        any filesystem, as for probe images. Role, team and case are checked before the scan
        (refusals audited as ``video.scan.refused``); the scan is audited as ``video.scan``.
        """
        case_ref = case_reference(case_ref)
        name = safe_filename(name)
        self.require_searchable_case(actor, case_ref, action="video.scan")
        provenance.check()
        sha = hashlib.sha256(data).hexdigest()
        fd = os.memfd_create("retroface-footage", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            scan = scan_video(f"/proc/self/fd/{fd}", self.engine, fps=fps, progress=progress)
        finally:
            os.close(fd)
        scan.info = replace(scan.info, path=name)  # the exhibit's name, not the descriptor
        scan.extra["sha256"] = sha
        with self.db.session() as s:
            self.audit(
                s,
                actor=actor,
                action="video.scan",
                case_ref=case_ref,
                object_type="video",
                object_id=sha,
                details={
                    "video": name,
                    "source": provenance.source,
                    "how_obtained": provenance.how_obtained,
                    "tracks": len(scan.tracks),
                    "sampling_fps": fps,
                    "decode": scan.report.to_dict(),
                },
                ts=self.clock(),
            )
        return scan

    def find(
        self,
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
    ) -> FootageFind:
        """Where one person appears in a set of videos, under an authorised case; audited.

        A track matches when its fused template, or any single face in it, reaches
        ``threshold`` (default: the configured ``compare`` threshold). Matches are leads for a
        person to check, with the time spans to look at. Unreadable videos are reported, not
        fatal.
        """
        self.require_searchable_case(actor, case_ref, action="video.find")
        if not videos:
            raise InvalidInputError("give at least one video to search")
        limit = self.match_threshold if threshold is None else float(threshold)
        probe = np.asarray(probe, np.float32)
        eng = engine or self.engine
        fuse_best = (config or TrackerConfig()).fuse_best
        out: list[FootageScanned | FootageUnreadable] = []
        for path in videos:
            name, sha = Path(path).name, None
            try:
                sha = file_sha256(Path(path))
                step = None if progress is None else partial(progress, Path(path))
                scan = scan_video(path, eng, fps=fps, config=config, progress=step)
            except (VideoLoadError, OSError) as exc:
                out.append(
                    FootageUnreadable(video=name, path=str(path), sha256=sha, error=str(exc))
                )
                continue
            matches = _matching_tracks(scan, probe, limit, fuse_best)
            out.append(
                FootageScanned(
                    video=name,
                    path=str(path),
                    sha256=sha,
                    duration_s=scan.info.duration_s,
                    end_s=scan.info.end_s,
                    decode=scan.report.to_dict(),
                    tracks=len(scan.tracks),
                    matches=matches,
                    spans=_spans([(m.start_s, m.end_s) for m in matches]),
                )
            )
        with self.db.session() as s:
            self.cases.require_searchable(s, case_ref)  # may have changed during a long scan
            self.audit(
                s,
                actor=actor,
                action="video.find",
                case_ref=case_ref,
                object_type="video",
                # the first video; every one is listed (with its hash) in details["videos"]
                object_id=(out[0].sha256 or "?")[:16] if out else None,
                details={
                    "probe": probe_ref or {},
                    "threshold": limit,
                    "sampling_fps": fps,
                    "model": eng.identity.key,
                    "videos": [_audited(e) for e in out],
                },
                ts=self.clock(),
            )
        return FootageFind(
            case=case_ref, label=LEAD_LABEL, threshold=limit, probe=probe_ref or {}, videos=out
        )


def _audited(entry: FootageScanned | FootageUnreadable) -> dict[str, Any]:
    """What the audit record keeps of one video: which file, any error, where the person was."""
    if isinstance(entry, FootageUnreadable):
        return {
            "name": entry.video,
            "sha256": entry.sha256,
            "error": entry.error,
            "spans": [],
            "matches": [],
        }
    return {
        "name": entry.video,
        "sha256": entry.sha256,
        "error": None,
        "spans": entry.spans,
        "matches": [[m.track, m.similarity_fused, m.similarity_max] for m in entry.matches],
    }


def _matching_tracks(
    scan: VideoScan, probe: FloatArray, limit: float, fuse_best: int
) -> list[FootageMatch]:
    """Tracks whose fused template or best single face reaches ``limit``, best first."""
    matches = []
    for track in scan.tracks:
        sims = track.similarities(probe)
        fused = float(track.template("fused", fuse_best) @ probe)
        peak = int(np.argmax(sims))
        if fused >= limit or float(sims[peak]) >= limit:
            matches.append(
                FootageMatch(
                    track=track.id,
                    start_s=round(track.first_s, 3),
                    end_s=round(track.last_s, 3),
                    similarity_fused=round(fused, 4),
                    similarity_max=round(float(sims[peak]), 4),
                    peak_t=round(track.sightings[peak].t, 3),
                    faces=track.n_faces,
                    faces_above=int((sims >= limit).sum()),
                )
            )
    matches.sort(key=lambda m: -max(m.similarity_fused, m.similarity_max))
    return matches


def _spans(spans: list[tuple[float, float]], gap: float = 1.0) -> list[list[float]]:
    """Overlapping or nearly touching time spans joined, in time order."""
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged
