"""Probe intake and 1:N search under a case: the only way a search can happen.

Every search is bound to an authorised (or in-window urgent) case and a probe whose provenance is
recorded; it stores what EU AI Act Art 12(3) asks of a log (start and end, gallery and model
version, threshold, probe hash, user, case, results) and labels its result an investigative lead.

The candidate list is cut at the model's operating threshold (calibrated at FPIR 1%, shipped with
the model or recorded by ``eval calibrate``; see :mod:`retroface.governance.thresholds`), so a
face that is not in the gallery gives "no candidate above the operating threshold", not twenty
names at chance similarity (issue #13). Only a case whose authorisation allows investigation mode
lists the top-k whatever their score (NIST's investigative use), every candidate marked above or
below the threshold. An explicit threshold may be stricter than the operating one; a lower one is
refused (audited) outside investigation mode: clamping it silently would let an operator believe
they had lowered the bar, and lowering it is exactly what the authoriser's flag is for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import (
    InvalidInputError,
    NoFaceError,
    NotFoundError,
    PermissionDeniedError,
)
from retroface.core.labels import LEAD_LABEL
from retroface.core.roles import Role
from retroface.core.status import CaseStatus, ReviewStatus
from retroface.core.text import case_reference, check_id, clean_text, safe_filename
from retroface.governance.cases import CaseNotSearchableError, CaseService
from retroface.governance.thresholds import OperatingThreshold, operating_threshold
from retroface.media.images import decode_image
from retroface.search.lineage import lineage_from_json, lineage_json
from retroface.search.matcher import DEFAULT_AGGREGATE, Aggregate, Matcher
from retroface.search.reference_quality import reference_warnings
from retroface.search.views import (
    CandidateView,
    DisclosedDecision,
    DisclosedReview,
    FaceView,
    ProbeDetail,
    ProbeListing,
    ProbeSummary,
    ProbeView,
    SearchExport,
    SearchListing,
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
)
from retroface.vision.engines import analyse_probe
from retroface.vision.types import Face, FaceEngine

#: What a search with no candidate at or above the operating threshold says, plainly.
NONE_ABOVE = "no candidate above the operating threshold"


class BelowOperatingThresholdError(PermissionDeniedError):
    """An explicit threshold below the operating one, in a case not authorised for
    investigation mode: refused (and audited as ``search.run.refused``)."""


@dataclass(frozen=True)
class _Cut:
    """How a search's candidate list is cut, decided before the match."""

    mode: str  # "operating" or "investigation"
    threshold: float | None  # the cut applied (None: top-k whatever the score)
    source: str | None  # calibrated / shipped / explicit
    operating: OperatingThreshold | None


def _cut(
    explicit: float | None, investigation: bool, op: OperatingThreshold | None, case_ref: str
) -> _Cut:
    mode = "investigation" if investigation else "operating"
    if explicit is not None:
        if not investigation and op is not None and explicit < op.value:
            raise BelowOperatingThresholdError(
                f"threshold {explicit:g} is below the operating threshold {op.value:.4f} of this "
                f"model ({op.source}); case {case_ref} is not authorised for investigation mode, "
                "so candidates below it may not be listed"
            )
        return _Cut(mode, explicit, "explicit", op)
    if investigation or op is None:
        return _Cut(mode, None, None, op)
    return _Cut(mode, op.value, op.source, op)


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
            s.add_all(probe_face_rows(self.cipher, probe.id, digest, model_key, faces))
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

    # ------------------------------------------------------------------ probes seen again
    # (the web pages: a probe's faces after the upload, a case's probes and their searches)

    #: Who may look at a case's probes (need-to-know then decides which: the case's team, the
    #: authoriser deciding or having decided it, auditors) - the roles that may see its faces.
    VIEW_ROLES = (Role.OPERATOR, Role.AUTHORISER, Role.AUDITOR)

    def probe(self, actor: Principal, probe_id: int) -> ProbeDetail:
        """A stored probe with its detected faces, quality verdicts and provenance; audited
        (``probe.view``), as is a refusal (need-to-know: not the caller's case)."""
        check_id(probe_id, "probe id")
        self.guard.require(
            actor, *self.VIEW_ROLES, action="probe.view", object_type="probe", object_id=probe_id
        )
        with self.db.session() as s:
            probe = s.get(Probe, probe_id)
            case_ref = self._case_ref(s, probe.case_id) if probe is not None else None
        if case_ref is None:
            raise NotFoundError(f"no probe {probe_id}")
        self.cases.purge_lapsed(case_ref)  # a lapsed urgent case's probes are gone first
        self.cases.team.require_case(actor, case_ref, "probe.view", work=False)
        with self.db.session() as s:
            probe = s.get(Probe, probe_id)
            if probe is None:
                raise NotFoundError(f"no probe {probe_id}")
            faces = s.scalars(
                select(ProbeFace)
                .where(ProbeFace.probe_id == probe.id)
                .order_by(ProbeFace.face_index)
            )
            detail = ProbeDetail(
                probe_id=probe.id,
                case=case_ref,
                sha256=probe.content_hash,
                faces=[
                    FaceView(
                        face=pf.face_index,
                        box=list(pf.box.get("box", [])),
                        landmarks=list(pf.box.get("landmarks", [])),
                        det_score=pf.det_score,
                        quality=pf.quality,
                    )
                    for pf in faces
                ],
                name=probe.original_name,
                source=probe.source,
                how_obtained=probe.how_obtained,
                media_type=probe.media_type,
                width=probe.width,
                height=probe.height,
                created_at=probe.created_at,
            )
            self.audit(
                s,
                actor=actor,
                action="probe.view",
                case_ref=case_ref,
                object_type="probe",
                object_id=str(probe_id),
                ts=self.clock(),
            )
            return detail

    def case_probes(self, actor: Principal, case_ref: str) -> list[ProbeListing]:
        """A case's probes, newest first, each with its searches: for whoever may see the case
        (as :meth:`CaseService.show`; a refusal is audited as ``probe.list.refused``)."""
        case_ref = case_reference(case_ref)
        self.guard.require(actor, *self.VIEW_ROLES, action="probe.list", case_ref=case_ref)
        self.cases.purge_lapsed(case_ref)
        self.cases.team.require_case(actor, case_ref, "probe.list", work=False)
        with self.db.session() as s:
            case = self.cases.get(s, case_ref)
            probes = list(
                s.scalars(
                    select(Probe)
                    .where(Probe.case_id == case.id)
                    .order_by(Probe.created_at.desc(), Probe.id.desc())
                )
            )
            ids = [p.id for p in probes]
            face_rows = s.execute(
                select(ProbeFace.id, ProbeFace.probe_id, ProbeFace.face_index).where(
                    ProbeFace.probe_id.in_(ids)
                )
            ).all()
            face_of = {fid: index for fid, _, index in face_rows}
            counts: dict[int, int] = {}
            for _, pid, _ in face_rows:
                counts[pid] = counts.get(pid, 0) + 1
            searches: dict[int, list[SearchListing]] = {}
            records = s.scalars(
                select(SearchRecord)
                .where(SearchRecord.probe_id.in_(ids))
                .order_by(SearchRecord.started_at.desc(), SearchRecord.id.desc())
            )
            for r in records:
                assert r.probe_id is not None
                searches.setdefault(r.probe_id, []).append(
                    SearchListing(
                        search_id=r.id,
                        face=face_of.get(r.probe_face_id) if r.probe_face_id else None,
                        started_at=r.started_at,
                        candidates=len(r.candidates),
                        review_status=ReviewStatus(r.review_status),
                    )
                )
            return [
                ProbeListing(
                    probe_id=p.id,
                    name=p.original_name,
                    source=p.source,
                    how_obtained=p.how_obtained,
                    media_type=p.media_type,
                    faces=counts.get(p.id, 0),
                    created_at=p.created_at,
                    searches=searches.get(p.id, []),
                )
                for p in probes
            ]

    # ------------------------------------------------------------------ search

    def search(
        self,
        actor: Principal,
        case_ref: str,
        probe_id: int,
        face_index: int | None = None,
        top_k: int = 20,
        threshold: float | None = None,
        aggregate: Aggregate = DEFAULT_AGGREGATE,
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
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise InvalidInputError("a threshold is a cosine similarity, between -1 and 1")
        try:
            return self._run_search(
                actor, case_ref, probe_id, face_index, top_k, threshold, aggregate
            )
        except CaseNotSearchableError as exc:
            self.cases.refused(actor, "search.run", exc, case_ref, details={"probe_id": probe_id})
            raise
        except BelowOperatingThresholdError as exc:
            self.cases.refused(
                actor,
                "search.run",
                exc,
                case_ref,
                details={"probe_id": probe_id, "threshold": threshold},
            )
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
            investigation = case.status == CaseStatus.APPROVED and case.investigation_mode
            cut = _cut(threshold, investigation, operating_threshold(s, model_key), case_ref)
        found = self.matcher.search(vector, model_key, top_k, cut.threshold, aggregate)
        matches, version = found.matches, found.version
        with self.db.session() as s:
            case = self.cases.require_searchable(s, case_ref)  # may have changed meanwhile
            probe = s.get(Probe, probe_id)
            if probe is None:
                raise NotFoundError(f"probe {probe_id} was deleted during the search")
            op = cut.operating
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
                threshold=cut.threshold,
                threshold_record_id=op.record_id if op else None,
                threshold_source=cut.source,
                operating_threshold=op.value if op else None,
                operating_source=op.source if op else None,
                mode=cut.mode,
                top_k=top_k,
                probe_quality=probe_quality,
                probe_lineage=lineage_json(s, probe),  # an enhanced version: its chain
                label=LEAD_LABEL,
                # nothing to review when nothing was listed: in operating mode that is every
                # search with no candidate at or above the operating threshold
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
                    # how a subject with several images was scored (search/matcher.py)
                    "aggregate": found.aggregate,
                    "mode": cut.mode,
                    "threshold": cut.threshold,
                    "threshold_source": cut.source,
                    "operating_threshold": record.operating_threshold,
                    "operating_source": record.operating_source,
                    "threshold_record": record.threshold_record_id,
                    "above_operating_threshold": sum(
                        _above(c.similarity, record.operating_threshold) is True
                        for c in record.candidates
                    ),
                    "candidates": [
                        [c.subject_reference, round(c.similarity, 4)] for c in record.candidates
                    ],
                    **({"probe_lineage": record.probe_lineage} if record.probe_lineage else {}),
                },
                ts=record.ended_at,
            )
            return search_result(record, case_ref, reference_warnings(s, record))

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
            return search_result(record, case_ref, reference_warnings(s, record))

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
                disclosure=search_result(record, case_ref, reference_warnings(s, record)),
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


def _above(similarity: float, operating: float | None) -> bool | None:
    """Whether a candidate reaches the operating threshold (None: the model has none)."""
    return None if operating is None else bool(similarity >= operating)


def none_above(record: SearchRecord) -> bool:
    """True when an operating threshold was in force and no candidate reached it."""
    return record.operating_threshold is not None and not any(
        c.similarity >= record.operating_threshold for c in record.candidates
    )


def probe_face_rows(
    cipher: Cipher, probe_id: int, digest: str, model_key: str, faces: list[Face]
) -> list[ProbeFace]:
    """The stored faces of a probe (original or enhanced version): each embedding encrypted and
    bound to the image's hash, the model and the face's index."""
    return [
        ProbeFace(
            probe_id=probe_id,
            face_index=i,
            model_key=model_key,
            embedding_enc=cipher.encrypt(
                np.asarray(f.embedding, np.float32).tobytes(),
                aad=template_aad(digest, model_key) + f":{i}".encode(),
            ),
            det_score=f.det_score,
            box={"box": list(f.box), "landmarks": np.asarray(f.landmarks).tolist()},
            quality=f.quality.to_dict(),
            extra=f.extra,
        )
        for i, f in enumerate(faces)
    ]


def search_result(
    record: SearchRecord, case_ref: str | None, ref_warnings: Mapping[int, list[str]] | None = None
) -> SearchResult:
    """The stored search as its callers see it: the probe's quality reasons become warnings,
    and each candidate carries its matched reference's (``ref_warnings``, from
    :func:`reference_warnings`)."""
    ref_warnings = ref_warnings or {}
    quality = record.probe_quality or {}
    nothing = none_above(record)
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
            lineage=lineage_from_json(record.probe_lineage),
        ),
        candidates=[
            CandidateView(
                rank=c.rank,
                subject=c.subject_reference,
                similarity=round(c.similarity, 4),
                image_id=c.image_id,
                above_threshold=_above(c.similarity, record.operating_threshold),
                reference_warnings=ref_warnings.get(c.image_id, []) if c.image_id else [],
            )
            for c in record.candidates
        ],
        gallery_version=record.gallery_version,
        model=record.model_key,
        threshold=record.threshold,
        threshold_record_id=record.threshold_record_id,
        threshold_source=record.threshold_source,
        operating_threshold=record.operating_threshold,
        operating_source=record.operating_source,
        mode=record.mode,
        none_above_threshold=nothing,
        message=NONE_ABOVE if nothing else None,
        started_at=record.started_at,
        ended_at=record.ended_at,
        review_status=ReviewStatus(record.review_status),
        case=case_ref,
    )
