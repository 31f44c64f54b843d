"""Face images for the people who need to see them, and nobody else: the one way a face leaves
the encrypted store for a screen.

Every image is decoded from the encrypted blob store, cropped, blurred and JPEG-encoded in memory
(no plaintext file is ever written), after two checks, and every view is audited (``face.view``,
who saw which face of which probe, search or reference image, and when); every refusal too
(``face.view.refused``, with reason ``need_to_know`` when the role was right but the case or
search is not the caller's):

=====================  ===========================================================================
what                   who (roles, then need-to-know from :mod:`retroface.governance.team`)
=====================  ===========================================================================
a probe's faces and    operators on the case's team (owner, members, supervisors), the authoriser
the probe image        deciding or having decided the case, auditors
a search's probe and   the case's team, reviewers while the search is in their review queue or
candidate faces        once they reviewed it (never their own search), auditors
a gallery reference    admins (erasure work: is this the right person?) and auditors
image
=====================  ===========================================================================

Privacy display: a probe image shown whole has every face blurred but the one chosen (``keep``),
so bystanders stay blurred until the operator picks the face to search; a face crop blurs any
other face in its margin. A probe whose other faces were never recorded (a video frame stores
only its track's face) shows nothing but the chosen face. With blur-all (the service's setting,
``RETROFACE_BLUR_ALL_FACES``, or ``blur_all=True`` per call) every face in every image is blurred:
for documentation screenshots. No face image carries a similarity or a decision: a reviewer's
view unblinds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import InvalidInputError, NotFoundError
from retroface.core.roles import Role
from retroface.core.text import check_id
from retroface.governance.cases import CaseService
from retroface.governance.team import NEED_TO_KNOW, NeedToKnowError, may_see_case, may_see_search
from retroface.media.display import (
    Box,
    aligned_crop,
    aligned_landmarks,
    blur_all_but,
    blur_faces,
    face_crop,
    shrink,
    to_jpeg,
)
from retroface.media.images import decode_image
from retroface.search.views import ComparisonLandmarks, FaceImage
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.db import Database
from retroface.storage.tables import (
    Candidate,
    Case,
    FaceTemplate,
    Probe,
    ProbeFace,
    ReferenceImage,
    SearchRecord,
)
from retroface.vision.types import ImageArray

#: The audit action of every face view; refusals are ``face.view.refused``.
ACTION = "face.view"
#: Who may ask for a probe's faces by probe id, and for a search's faces (before need-to-know).
PROBE_ROLES = (Role.OPERATOR, Role.AUTHORISER, Role.AUDITOR)
SEARCH_ROLES = (Role.OPERATOR, Role.REVIEWER, Role.AUDITOR)
GALLERY_ROLES = (Role.ADMIN, Role.AUDITOR)
#: Sizes a caller may ask for: an aligned crop's side, and a whole image's longer side.
ALIGNED_SIZES = (64, 1024)
MAX_SIDES = (64, 4096)


@dataclass(frozen=True)
class _Source:
    """One stored image and the face to show in it, read from the database."""

    digest: str
    face: Box | None  # None: a whole image with no face kept
    landmarks: np.ndarray | None
    others: list[Box] = field(default_factory=list)  # the image's other recorded faces
    all_recorded: bool = True  # False: faces in it may exist that were never recorded


@dataclass(frozen=True)
class _Access:
    """A view allowed: what the audit record names, and what to render."""

    case_ref: str | None
    object_type: str
    object_id: str
    details: dict[str, Any]


def _box(stored: Mapping[str, Any]) -> Box:
    x1, y1, x2, y2 = (float(v) for v in stored["box"])
    return (x1, y1, x2, y2)


def _landmarks(stored: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(stored["landmarks"], dtype=np.float64).reshape(5, 2)


class FaceImages:
    """Face crops, privacy-blurred probe images and aligned comparison crops, as JPEG bytes.

    Every public method takes the acting :class:`Principal` first, checks role and need-to-know,
    audits the view (or the refusal), and returns a :class:`FaceImage` (or, for the landmark
    overlay, :class:`ComparisonLandmarks`). ``blur_all`` per call adds to the service's own
    setting; it can never turn the setting off.
    """

    def __init__(
        self,
        db: Database,
        blobs: EncryptedBlobStore,
        cases: CaseService,
        audit: AuditFn,
        *,
        blur_all: bool = False,
        max_image_pixels: int = 50_000_000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.cases = cases
        self.audit = audit
        self.blur_all = blur_all
        self.max_image_pixels = max_image_pixels
        self.clock = clock
        self.guard = Guard(db, audit, clock)

    # ------------------------------------------------------------------ probes

    def probe_face(
        self, actor: Principal, probe_id: int, face: int, *, blur_all: bool = False
    ) -> FaceImage:
        """Face ``face`` of a probe, cropped square with half its size as margin (at most 512
        pixels a side); other faces in the margin are blurred."""
        check_id(probe_id, "probe id")
        _check_index(face, "face")
        access, source = self._probe(actor, probe_id, face, {"view": "face", "face": face})
        image, blurred = self._prepared(source, blur_all)
        assert source.face is not None
        crop = face_crop(image, source.face)
        return self._done(actor, access, crop, blurred, blur_all)

    def probe_image(
        self,
        actor: Principal,
        probe_id: int,
        keep: int | None = None,
        *,
        blur_all: bool = False,
        max_side: int = 1600,
    ) -> FaceImage:
        """The whole probe image in privacy mode: every face blurred but face ``keep`` (None:
        all blurred), scaled down to ``max_side`` pixels on its longer side."""
        check_id(probe_id, "probe id")
        if keep is not None:
            _check_index(keep, "keep")
        _check_range(max_side, "max side", MAX_SIDES)
        access, source = self._probe(actor, probe_id, keep, {"view": "scene", "keep": keep})
        image, blurred = self._prepared(source, blur_all)
        small, scale = shrink(image, max_side)
        return self._done(actor, access, small, blurred, blur_all, scale=scale)

    # ------------------------------------------------------------------ searches

    def search_probe_face(
        self, actor: Principal, search_id: int, *, blur_all: bool = False
    ) -> FaceImage:
        """The probe face a search was run with, cropped as :meth:`probe_face`."""
        access, source = self._search_probe(actor, search_id, {"view": "probe_face"})
        image, blurred = self._prepared(source, blur_all)
        assert source.face is not None
        return self._done(actor, access, face_crop(image, source.face), blurred, blur_all)

    def probe_aligned(
        self, actor: Principal, search_id: int, *, size: int = 256, blur_all: bool = False
    ) -> FaceImage:
        """The search's probe face aligned on the 5 landmarks the recogniser used, in a ``size``
        x ``size`` crop: the same frame and scale as :meth:`candidate_aligned` (side by side)."""
        _check_range(size, "size", ALIGNED_SIZES)
        access, source = self._search_probe(
            actor, search_id, {"view": "probe_aligned", "size": size}
        )
        return self._aligned(actor, access, source, size, blur_all)

    def candidate_face(
        self, actor: Principal, search_id: int, rank: int, *, blur_all: bool = False
    ) -> FaceImage:
        """The reference face of the candidate at ``rank``, cropped as :meth:`probe_face`."""
        access, source = self._candidate(actor, search_id, rank, {"view": "candidate"})
        image, blurred = self._prepared(source, blur_all)
        assert source.face is not None
        return self._done(actor, access, face_crop(image, source.face), blurred, blur_all)

    def candidate_aligned(
        self,
        actor: Principal,
        search_id: int,
        rank: int,
        *,
        size: int = 256,
        blur_all: bool = False,
    ) -> FaceImage:
        """The candidate's reference face aligned as :meth:`probe_aligned`, with landmarks."""
        _check_range(size, "size", ALIGNED_SIZES)
        access, source = self._candidate(
            actor, search_id, rank, {"view": "candidate_aligned", "size": size}
        )
        return self._aligned(actor, access, source, size, blur_all)

    def comparison_landmarks(
        self, actor: Principal, search_id: int, rank: int, *, size: int = 256
    ) -> ComparisonLandmarks:
        """The 5 landmarks of the probe face and of candidate ``rank`` in their aligned crops of
        ``size`` (for the overlay toggle); no image is decoded. Audited like an image view."""
        _check_range(size, "size", ALIGNED_SIZES)
        view = {"view": "landmarks", "size": size}
        seen, probe = self._search_probe(actor, search_id, view)
        access, cand = self._candidate(actor, search_id, rank, seen.details)
        assert probe.landmarks is not None and cand.landmarks is not None
        self._record(actor, access, blur_all=False)
        return ComparisonLandmarks(
            search_id=search_id,
            rank=rank,
            size=size,
            probe=aligned_landmarks(probe.landmarks, size),
            candidate=aligned_landmarks(cand.landmarks, size),
        )

    # ------------------------------------------------------------------ gallery

    def reference_face(
        self, actor: Principal, image_id: int, *, blur_all: bool = False
    ) -> FaceImage:
        """A gallery reference image's face, cropped as :meth:`probe_face` (admins checking a
        subject before erasure, auditors)."""
        check_id(image_id, "image id")
        self.guard.require(
            actor, *GALLERY_ROLES, action=ACTION, object_type="reference_image", object_id=image_id
        )
        with self.db.session() as s:
            img = s.get(ReferenceImage, image_id)
            if img is None:
                raise NotFoundError(f"no reference image {image_id}")
            template = _template(s, img.id, model_key=None)
            source = _Source(img.content_hash, _box(template.box), _landmarks(template.box))
            subject = img.subject.reference
        access = _Access(
            None, "reference_image", str(image_id), {"view": "reference", "subject": subject}
        )
        image, blurred = self._prepared(source, blur_all)
        assert source.face is not None
        return self._done(actor, access, face_crop(image, source.face), blurred, blur_all)

    # ------------------------------------------------------------------ access

    def _probe(
        self, actor: Principal, probe_id: int, face: int | None, view: dict[str, Any]
    ) -> tuple[_Access, _Source]:
        """Role, existence, then need-to-know for a probe; the face (or None) to keep."""
        self.guard.require(
            actor, *PROBE_ROLES, action=ACTION, object_type="probe", object_id=probe_id
        )
        case_ref = self._probe_case(probe_id)
        self.cases.purge_lapsed(case_ref)  # a lapsed urgent case's probes are gone first
        with self.db.session() as s:
            probe = s.get(Probe, probe_id)
            case = s.get(Case, probe.case_id) if probe is not None else None
            if probe is None or case is None:
                raise NotFoundError(f"no probe {probe_id}")
            allowed = may_see_case(s, actor, case)
            faces = list(
                s.scalars(
                    select(ProbeFace)
                    .where(ProbeFace.probe_id == probe.id)
                    .order_by(ProbeFace.face_index)
                )
            )
            digest, media_type = probe.content_hash, probe.media_type
        access = _Access(case_ref, "probe", str(probe_id), view)
        if not allowed:
            self._refuse(actor, access, f"may not see the faces of probe {probe_id}")
        boxes = {pf.face_index: pf.box for pf in faces}
        if face is not None and face not in boxes:
            raise NotFoundError(
                f"probe {probe_id} has {len(boxes)} face(s)"
                + (f" (0..{len(boxes) - 1})" if boxes else "")
                + f"; there is no face {face}"
            )
        chosen = boxes.get(face) if face is not None else None
        return access, _Source(
            digest,
            _box(chosen) if chosen else None,
            _landmarks(chosen) if chosen else None,
            others=[_box(b) for i, b in boxes.items() if i != face],
            all_recorded=media_type != "video",
        )

    def _probe_case(self, probe_id: int) -> str:
        with self.db.session() as s:
            probe = s.get(Probe, probe_id)
            case = s.get(Case, probe.case_id) if probe is not None else None
            if case is None:
                raise NotFoundError(f"no probe {probe_id}")
            return case.reference

    def _search_access(self, actor: Principal, search_id: int, view: dict[str, Any]) -> _Access:
        """Role, existence, then need-to-know for a search (its team, reviewers reviewing it,
        auditors); a lapsed urgent case's search is purged first (then: not found)."""
        check_id(search_id, "search id")
        self.guard.require(
            actor, *SEARCH_ROLES, action=ACTION, object_type="search", object_id=search_id
        )
        with self.db.session() as s:
            record = s.get(SearchRecord, search_id)
            if record is None:
                raise NotFoundError(f"no search {search_id}")
            case = s.get(Case, record.case_id) if record.case_id is not None else None
            case_ref = case.reference if case else None
        if case_ref is not None:
            self.cases.purge_lapsed(case_ref)
        with self.db.session() as s:
            record = s.get(SearchRecord, search_id)
            if record is None:
                raise NotFoundError(f"no search {search_id}")
            allowed = may_see_search(s, actor, record, export=False)
        access = _Access(case_ref, "search", str(search_id), view)
        if not allowed:
            self._refuse(actor, access, f"may not see the faces of search {search_id}")
        return access

    def _search_probe(
        self, actor: Principal, search_id: int, view: dict[str, Any]
    ) -> tuple[_Access, _Source]:
        access = self._search_access(actor, search_id, view)
        with self.db.session() as s:
            record = s.get(SearchRecord, search_id)
            pf = s.get(ProbeFace, record.probe_face_id) if record and record.probe_face_id else None
            probe = s.get(Probe, pf.probe_id) if pf is not None else None
            if pf is None or probe is None:
                raise NotFoundError(
                    f"the probe of search {search_id} has been deleted (retention or purge); "
                    "the search record keeps its hash only"
                )
            others = [
                _box(o.box)
                for o in s.scalars(
                    select(ProbeFace).where(ProbeFace.probe_id == probe.id, ProbeFace.id != pf.id)
                )
            ]
            source = _Source(
                probe.content_hash,
                _box(pf.box),
                _landmarks(pf.box),
                others=others,
                all_recorded=probe.media_type != "video",
            )
            details = {**view, "probe": probe.id, "face": pf.face_index}
        return _Access(access.case_ref, "search", access.object_id, details), source

    def _candidate(
        self, actor: Principal, search_id: int, rank: int, view: dict[str, Any]
    ) -> tuple[_Access, _Source]:
        _check_range(rank, "rank", (1, 200))
        access = self._search_access(actor, search_id, {**view, "rank": rank})
        with self.db.session() as s:
            record = s.get(SearchRecord, search_id)
            cand = s.scalar(
                select(Candidate).where(Candidate.search_id == search_id, Candidate.rank == rank)
            )
            if record is None or cand is None:
                raise NotFoundError(f"search {search_id} has no candidate at rank {rank}")
            img = s.get(ReferenceImage, cand.image_id) if cand.image_id is not None else None
            if img is None:
                raise NotFoundError(
                    f"the reference image of candidate {rank} of search {search_id} has been "
                    "erased from the gallery"
                )
            template = _template(s, img.id, record.model_key)
            source = _Source(img.content_hash, _box(template.box), _landmarks(template.box))
            details = {**access.details, "subject": cand.subject_reference, "image": img.id}
        return _Access(access.case_ref, "search", access.object_id, details), source

    def _refuse(self, actor: Principal, access: _Access, what: str) -> None:
        error = NeedToKnowError(f"{actor.username} {what}: no need to know")
        self.guard.refused(
            actor,
            ACTION,
            error,
            case_ref=access.case_ref,
            object_type=access.object_type,
            object_id=access.object_id,
            details={"reason": NEED_TO_KNOW, **access.details},
        )
        raise error

    # ------------------------------------------------------------------ rendering

    def _decode(self, digest: str) -> ImageArray:
        """The stored image, decrypted and decoded in memory."""
        return decode_image(self.blobs.get(digest), max_pixels=self.max_image_pixels)

    def _prepared(self, source: _Source, blur_all: bool) -> tuple[ImageArray, int]:
        """The stored image with what must not be seen blurred, and how many regions were."""
        image = self._decode(source.digest)
        faces = [f for f in (source.face, *source.others) if f is not None]
        if blur_all or self.blur_all:
            if source.all_recorded:
                return blur_faces(image, faces), len(faces)
            return blur_all_but(image, None), 1
        if source.all_recorded:
            return blur_faces(image, source.others, keep=source.face), len(source.others)
        return blur_all_but(image, source.face), 1

    def _aligned(
        self, actor: Principal, access: _Access, source: _Source, size: int, blur_all: bool
    ) -> FaceImage:
        image, blurred = self._prepared(source, blur_all)
        assert source.landmarks is not None
        crop, points = aligned_crop(image, source.landmarks, size)
        return self._done(actor, access, crop, blurred, blur_all, landmarks=points)

    def _done(
        self,
        actor: Principal,
        access: _Access,
        image: ImageArray,
        blurred: int,
        blur_all: bool,
        landmarks: list[list[float]] | None = None,
        scale: float = 1.0,
    ) -> FaceImage:
        """Encode, then audit the view (committed before the bytes are handed out)."""
        jpeg = to_jpeg(image)
        self._record(actor, access, blur_all=blur_all or self.blur_all, blurred=blurred)
        return FaceImage(
            jpeg=jpeg,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            scale=round(scale, 6),
            blurred=blurred,
            landmarks=landmarks,
        )

    def _record(
        self, actor: Principal, access: _Access, *, blur_all: bool, blurred: int = 0
    ) -> None:
        details = dict(access.details)
        if blur_all:
            details["blur_all"] = True
        if blurred:
            details["blurred"] = blurred
        with self.db.session() as s:
            self.audit(
                s,
                actor=actor,
                action=ACTION,
                case_ref=access.case_ref,
                object_type=access.object_type,
                object_id=access.object_id,
                details=details,
                ts=self.clock(),
            )


def _template(s: Session, image_id: int, model_key: str | None) -> FaceTemplate:
    """The face recorded for a reference image by the search's model (else any model's: the
    box and landmarks are where the face is, whichever model found it)."""
    rows = list(
        s.scalars(
            select(FaceTemplate).where(FaceTemplate.image_id == image_id).order_by(FaceTemplate.id)
        )
    )
    for t in rows:
        if t.model_key == model_key:
            return t
    if not rows:
        raise NotFoundError(f"reference image {image_id} has no recorded face")
    return rows[0]


def _check_index(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
        raise InvalidInputError(f"{name} must be a face index from 0 to 10000")
    return value


def _check_range(value: object, name: str, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInputError(f"{name} must be a whole number from {lo} to {hi}")
    return value
