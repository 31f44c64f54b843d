"""Probe intake and 1:N search under a case: the only way a search can happen.

Every search is bound to an authorised (or in-window urgent) case and a probe whose provenance is
recorded; it stores what EU AI Act Art 12(3) asks of a log (start and end, gallery and model
version, threshold, probe hash, user, case, results) and labels its result an investigative lead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import InvalidInputError, NoFaceError, NotFoundError
from retroface.core.labels import LEAD_LABEL
from retroface.core.roles import Role
from retroface.core.status import ReviewStatus
from retroface.core.text import case_reference, check_id, clean_text, safe_filename
from retroface.governance.cases import CaseNotSearchableError, CaseService
from retroface.media.images import decode_image
from retroface.search.matcher import Aggregate, Matcher
from retroface.search.views import (
    CandidateView,
    DisclosedDecision,
    DisclosedReview,
    FaceView,
    ProbeSummary,
    ProbeView,
    SearchExport,
    SearchResult,
)
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.crypto import Cipher, template_aad
from retroface.storage.db import Database
from retroface.storage.tables import (
    Candidate,
    Case,
    Probe,
    ProbeFace,
    Review,
    SearchRecord,
    Subject,
    ThresholdRecord,
)
from retroface.vision.engines import analyse_probe
from retroface.vision.types import Face, FaceEngine


@dataclass(frozen=True)
class ProbeProvenance:
    """Where a probe came from: the system never collects images itself."""

    source: str  # e.g. "CCTV", "witness", "public post", "body-worn video"
    how_obtained: str  # e.g. "exported from shop DVR by PC 123 on 2026-11-20, exhibit AB/1"

    def check(self) -> None:
        clean_text(self.source, "source", 200, required=False)
        clean_text(self.how_obtained, "how obtained", 500, multiline=True, required=False)
        if not self.source.strip() or len(self.how_obtained.strip()) < 5:
            raise InvalidInputError(
                "a probe needs its provenance: source and how it was obtained (e.g. exhibit ref)"
            )


class SearchService:
    def __init__(
        self,
        db: Database,
        blobs: EncryptedBlobStore,
        cipher: Cipher,
        engine: FaceEngine,
        matcher: Matcher,
        cases: CaseService,
        audit: AuditFn,
        max_image_pixels: int = 50_000_000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.cipher = cipher
        self.engine = engine
        self.matcher = matcher
        self.cases = cases
        self.audit = audit
        self.max_image_pixels = max_image_pixels
        self.clock = clock
        self.guard = Guard(db, audit, clock)

    # ------------------------------------------------------------------ probes

    def add_probe(
        self,
        actor: Principal,
        case_ref: str,
        data: bytes,
        name: str,
        provenance: ProbeProvenance,
        faces: list[Face] | None = None,
        media_type: str = "image",
    ) -> ProbeView:
        """Store a probe image (encrypted) under a searchable case, with its detected faces."""
        case_ref = case_reference(case_ref)
        name = safe_filename(name)
        self.guard.require(actor, Role.OPERATOR, action="probe.add", case_ref=case_ref)
        self.cases.team.require_case(actor, case_ref, "probe.add", work=True)
        provenance.check()
        self.cases.check_searchable(actor, case_ref, "probe.add")  # before decoding, not after
        image = decode_image(data, name=name, max_pixels=self.max_image_pixels)
        if faces is None:  # analysed as a probe: test-time flip, see ``analyse_probe``
            faces = analyse_probe(self.engine, image)
        digest = self.blobs.put(data)
        try:
            return self._store_probe(
                actor, case_ref, digest, image.shape, name, provenance, faces, media_type
            )
        except CaseNotSearchableError as exc:  # the case changed while the faces were analysed
            self.cases.refused(actor, "probe.add", exc, case_ref)
            raise

    def _store_probe(
        self,
        actor: Principal,
        case_ref: str,
        digest: str,
        shape: tuple[int, ...],
        name: str,
        provenance: ProbeProvenance,
        faces: list[Face],
        media_type: str,
    ) -> ProbeView:
        model_key = self.engine.identity.key
        with self.db.session() as s:
            case = self.cases.require_searchable(s, case_ref)
            probe = Probe(
                case_id=case.id,
                content_hash=digest,
                media_type=media_type,
                original_name=name,
                source=provenance.source,
                how_obtained=provenance.how_obtained,
                width=int(shape[1]),
                height=int(shape[0]),
                uploaded_by=actor.id,
                created_at=self.clock(),
            )
            s.add(probe)
            s.flush()
            for i, f in enumerate(faces):
                s.add(
                    ProbeFace(
                        probe_id=probe.id,
                        face_index=i,
                        model_key=model_key,
                        embedding_enc=self.cipher.encrypt(
                            np.asarray(f.embedding, np.float32).tobytes(),
                            aad=template_aad(digest, model_key) + f":{i}".encode(),
                        ),
                        det_score=f.det_score,
                        box={"box": list(f.box), "landmarks": np.asarray(f.landmarks).tolist()},
                        quality=f.quality.to_dict(),
                        extra=f.extra,
                    )
                )
            s.flush()
            self.audit(
                s,
                actor=actor,
                action="probe.add",
                case_ref=case_ref,
                object_type="probe",
                object_id=str(probe.id),
                details={
                    "sha256": digest,
                    "source": provenance.source,
                    "how_obtained": provenance.how_obtained,
                    "faces": len(faces),
                },
                ts=self.clock(),
            )
            return ProbeView(
                probe_id=probe.id,
                case=case_ref,
                sha256=digest,
                faces=[FaceView(face=i, **f.to_dict()) for i, f in enumerate(faces)],
            )

    def _probe_embedding(self, s: Any, probe: Probe, face_index: int) -> tuple[ProbeFace, Any]:
        pf = s.scalar(
            select(ProbeFace).where(
                ProbeFace.probe_id == probe.id, ProbeFace.face_index == face_index
            )
        )
        if pf is None:
            n = len(list(s.scalars(select(ProbeFace.id).where(ProbeFace.probe_id == probe.id))))
            if n == 0:
                raise NoFaceError(f"no face was found in probe {probe.id}; nothing to search")
            raise InvalidInputError(
                f"probe {probe.id} has {n} faces (0..{n - 1}); face {face_index} does not exist"
            )
        aad = template_aad(probe.content_hash, pf.model_key) + f":{face_index}".encode()
        vector = np.frombuffer(self.cipher.decrypt(pf.embedding_enc, aad=aad), dtype=np.float32)
        return pf, vector

    # ------------------------------------------------------------------ search

    def search(
        self,
        actor: Principal,
        case_ref: str,
        probe_id: int,
        face_index: int | None = None,
        top_k: int = 20,
        threshold: float | None = None,
        aggregate: Aggregate = "max",
    ) -> SearchResult:
        """Search one face of a probe; the candidate list is stored and returned.

        A search refused for its case (not authorised, expired, refused, urgent window lapsed)
        is audited as ``search.run.refused``, as is one by a caller who is not an operator or
        not on the case's team (need-to-know).
        """
        case_ref = case_reference(case_ref)
        check_id(probe_id, "probe id")
        self.guard.require(
            actor,
            Role.OPERATOR,
            action="search.run",
            case_ref=case_ref,
            object_type="probe",
            object_id=probe_id,
        )
        self.cases.team.require_case(actor, case_ref, "search.run", work=True)
        if not 1 <= top_k <= 200:
            raise InvalidInputError("top-k must be between 1 and 200")
        self.cases.purge_lapsed(case_ref)  # a lapsed urgent case loses its probes first
        try:
            return self._run_search(
                actor, case_ref, probe_id, face_index, top_k, threshold, aggregate
            )
        except CaseNotSearchableError as exc:
            self.cases.refused(actor, "search.run", exc, case_ref, details={"probe_id": probe_id})
            raise

    def _run_search(
        self,
        actor: Principal,
        case_ref: str,
        probe_id: int,
        face_index: int | None,
        top_k: int,
        threshold: float | None,
        aggregate: Aggregate,
    ) -> SearchResult:
        started = self.clock()
        # Three short steps, never one session around the match: the index manager reads the
        # gallery version in a session of its own, and SQLite serialises transactions.
        with self.db.session() as s:
            case = self.cases.require_searchable(s, case_ref)
            probe = s.get(Probe, probe_id)
            if probe is None or probe.case_id != case.id:
                raise NotFoundError(f"no probe {probe_id} in case {case_ref}")
            if face_index is None:
                count = len(
                    list(s.scalars(select(ProbeFace.id).where(ProbeFace.probe_id == probe.id)))
                )
                if count > 1:
                    raise InvalidInputError(
                        f"probe {probe_id} shows {count} faces: choose one with --face "
                        "(a search is targeted at one person, never everyone in an image)"
                    )
                face_index = 0
            pf, vector = self._probe_embedding(s, probe, face_index)
            model_key, probe_face_id, probe_quality = pf.model_key, pf.id, pf.quality
        matches, version = self.matcher.match(vector, model_key, top_k, threshold, aggregate)
        with self.db.session() as s:
            case = self.cases.require_searchable(s, case_ref)  # may have changed meanwhile
            probe = s.get(Probe, probe_id)
            if probe is None:
                raise NotFoundError(f"probe {probe_id} was deleted during the search")
            record_threshold = s.scalar(
                select(ThresholdRecord)
                .where(ThresholdRecord.model_key == model_key, ThresholdRecord.active.is_(True))
                .order_by(ThresholdRecord.id.desc())
            )
            refs = dict(
                s.execute(
                    select(Subject.id, Subject.reference).where(
                        Subject.id.in_([m.subject_id for m in matches])
                    )
                ).all()
            )
            # a subject erased between the match and now is not reported
            matches = [m for m in matches if m.subject_id in refs]
            record = SearchRecord(
                case_id=case.id,
                probe_id=probe.id,
                probe_face_id=probe_face_id,
                probe_hash=probe.content_hash,
                probe_source=probe.source,
                probe_how_obtained=probe.how_obtained,
                user_id=actor.id,
                started_at=started,
                gallery_version=version,
                model_key=model_key,
                threshold=threshold,
                threshold_record_id=record_threshold.id if record_threshold else None,
                top_k=top_k,
                probe_quality=probe_quality,
                label=LEAD_LABEL,
                review_status=ReviewStatus.PENDING if matches else ReviewStatus.NO_CANDIDATES,
            )
            record.candidates = [
                Candidate(
                    rank=rank,
                    subject_id=m.subject_id,
                    subject_reference=refs[m.subject_id],
                    similarity=m.similarity,
                    image_id=m.image_id,
                )
                for rank, m in enumerate(matches, start=1)
            ]
            s.add(record)
            record.ended_at = self.clock()
            s.flush()
            self.audit(
                s,
                actor=actor,
                action="search.run",
                case_ref=case_ref,
                object_type="search",
                object_id=str(record.id),
                justification=case.purpose,
                details={
                    "probe_id": probe.id,
                    "probe_sha256": probe.content_hash,
                    "face": face_index,
                    "gallery_version": version,
                    "model": model_key,
                    "threshold": threshold,
                    "threshold_record": record.threshold_record_id,
                    "candidates": [
                        [c.subject_reference, round(c.similarity, 4)] for c in record.candidates
                    ],
                },
                ts=record.ended_at,
            )
            return search_result(record, case_ref)

    def get_search(self, actor: Principal, search_id: int) -> SearchResult:
        """A stored candidate list, for its case's team, an auditor or a reviewer reviewing it;
        viewing it is itself audited."""
        check_id(search_id, "search id")
        self.guard.require(
            actor,
            Role.OPERATOR,
            Role.REVIEWER,
            Role.AUDITOR,
            action="search.view",
            object_type="search",
            object_id=search_id,
        )
        self._purge_if_lapsed(search_id)
        self.cases.team.require_search(actor, search_id, "search.view", export=False)
        with self.db.session() as s:
            record = s.get(SearchRecord, search_id)
            if record is None:
                raise NotFoundError(f"no search {search_id}")
            case_ref = self._case_ref(s, record.case_id) if record.case_id else None
            self.audit(
                s,
                actor=actor,
                action="search.view",
                case_ref=case_ref,
                object_type="search",
                object_id=str(search_id),
                ts=self.clock(),
            )
            return search_result(record, case_ref)

    def export(self, actor: Principal, search_id: int) -> SearchExport:
        """A disclosure package: the search, its case, candidates and settled review; audited.
        For the case's team and auditors only."""
        check_id(search_id, "search id")
        self.guard.require(
            actor,
            Role.OPERATOR,
            Role.AUDITOR,
            action="search.export",
            object_type="search",
            object_id=search_id,
        )
        self._purge_if_lapsed(search_id)
        self.cases.team.require_search(actor, search_id, "search.export", export=True)
        with self.db.session() as s:
            record = s.get(SearchRecord, search_id)
            if record is None:
                raise NotFoundError(f"no search {search_id}")
            case_ref = self._case_ref(s, record.case_id) if record.case_id else None
            settled = ReviewStatus(record.review_status).settled
            reviews = (
                [
                    DisclosedDecision(
                        stage=r.stage,
                        decision=r.decision,
                        candidate_rank=r.candidate_rank,
                        note=r.note,
                        at=r.created_at,
                    )
                    for r in s.scalars(
                        select(Review).where(Review.search_id == search_id).order_by(Review.id)
                    )
                ]
                if settled
                else []
            )
            self.audit(
                s,
                actor=actor,
                action="search.export",
                case_ref=case_ref,
                object_type="search",
                object_id=str(search_id),
                details={"review_status": record.review_status},
                ts=self.clock(),
            )
            return SearchExport(
                disclosure=search_result(record, case_ref),
                review=DisclosedReview(
                    status=ReviewStatus(record.review_status),
                    outcome=record.review_outcome,
                    decisions=reviews,
                    note=None if settled else "review not settled: decisions withheld",
                ),
                exported_by=actor.username,
                exported_at=self.clock(),
                label=LEAD_LABEL,
            )

    def _purge_if_lapsed(self, search_id: int) -> None:
        """A search of a lapsed urgent case is purged with it when touched (then: not found)."""
        with self.db.session() as s:
            record = s.get(SearchRecord, search_id)
            case_ref = self._case_ref(s, record.case_id) if record and record.case_id else None
        if case_ref is not None:
            self.cases.purge_lapsed(case_ref)

    @staticmethod
    def _case_ref(s: Any, case_id: int) -> str | None:
        case = s.get(Case, case_id)
        return case.reference if case else None


def search_result(record: SearchRecord, case_ref: str | None) -> SearchResult:
    """The stored search as its callers see it: the probe's quality reasons become warnings."""
    quality = record.probe_quality or {}
    return SearchResult(
        search_id=record.id,
        label=record.label,
        probe=ProbeSummary(
            probe_id=record.probe_id,
            sha256=record.probe_hash,
            source=record.probe_source,
            how_obtained=record.probe_how_obtained,
            quality=quality,
            warnings=list(quality.get("reasons", [])),
        ),
        candidates=[
            CandidateView(
                rank=c.rank,
                subject=c.subject_reference,
                similarity=round(c.similarity, 4),
                image_id=c.image_id,
            )
            for c in record.candidates
        ],
        gallery_version=record.gallery_version,
        model=record.model_key,
        threshold=record.threshold,
        threshold_record_id=record.threshold_record_id,
        started_at=record.started_at,
        ended_at=record.ended_at,
        review_status=ReviewStatus(record.review_status),
        case=case_ref,
    )
