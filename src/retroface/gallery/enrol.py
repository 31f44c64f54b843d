"""Enrolment of reference images: idempotent, resumable, parallel and bounded in memory.

Workers (threads; onnxruntime releases the GIL) read, hash, decode and analyse images; the calling
thread alone writes, committing every ``batch_size`` images. An image is enrolled in the same
transaction as its template, the gallery version bump and the audit record, after its encrypted
file is durably on disk, so a crash at any point leaves either a complete enrolment or one that the
next run redoes.

Only a window of ``4 × workers + batch_size`` images is in flight at once (plus the batch waiting
to commit), so a run's memory does not grow with its size: enrolling 5,000 LFW images
(``bench/enrol_memory.py``) peaked at 629 MiB RSS when every image of the run was read before any
was used, and at 388 MiB with a window of ``4 × workers``, for the same CPU time per image
(docs/gallery.md). An image in flight holds its file's bytes and the chosen face's 112×112 crop,
not its decoded pixels. The window is a batch larger than that so that the workers never idle
while a batch commits; and only the face enrolment takes is aligned and embedded
(:func:`~retroface.vision.engines.analyse_chosen`), which spares the recogniser the bystanders
SCRFD finds (119 faces in 100 LFW images sampled across the set). Before/after:
``bench/enrol_speed.py``, docs/performance.md.

Enrolment changes the gallery, so it needs the admin role; :meth:`Enroller.run` checks it and a
refusal is audited as ``gallery.enrol.refused``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import Clock, utcnow
from retroface.core.errors import InvalidInputError
from retroface.core.roles import Role
from retroface.core.status import SubjectStatus
from retroface.gallery.items import EnrolItem as EnrolItem
from retroface.gallery.items import check_item
from retroface.gallery.items import items_from_manifest as items_from_manifest
from retroface.gallery.items import items_from_paths as items_from_paths
from retroface.gallery.views import EnrolSummary, LowQualityReference, Rejection
from retroface.media.images import ImageLoadError, decode_image
from retroface.search.index_manager import IndexManager
from retroface.storage.blobstore import EncryptedBlobStore, content_hash
from retroface.storage.crypto import Cipher, template_aad
from retroface.storage.db import Database
from retroface.storage.files import OutsideFolderError, is_within, read_confined
from retroface.storage.tables import FaceTemplate, ReferenceImage, Subject
from retroface.storage.versions import bump_gallery_version
from retroface.vision.engines import MAIN_FACE_RATIO, Box, analyse_chosen, box_prominence
from retroface.vision.types import Face, FaceEngine

#: With several faces, the main one is taken only if it is this many times more prominent
#: (area discounted by distance from the centre) than the next: a centred portrait with
#: bystanders at the edge qualifies, a group photo does not. The one rule of search's
#: ``--main-face`` too; see :data:`~retroface.vision.engines.MAIN_FACE_RATIO` for its measurement.
DOMINANT_RATIO = MAIN_FACE_RATIO

#: Images in flight per worker, on top of one commit batch: the workers go on analysing the
#: next ``batch_size`` images while the calling thread commits a batch (encrypted files synced
#: to disk, the rows, the audit record), instead of idling once their few images were done; few
#: enough that memory stays flat however long the run.
WINDOW_PER_WORKER = 4


@dataclass
class _Analysed:
    item: EnrolItem
    data: bytes
    digest: str
    width: int = 0
    height: int = 0
    face: Face | None = None
    error: str | None = None
    known: bool = False  # enrolled already (before this run or earlier in it): not analysed


def choose_face(
    faces: list[Face], shape: tuple[int, ...], wanted: int | None, multi_face: str = "reject"
) -> Face:
    """The face to enrol, or an ``InvalidInputError`` saying why none can be chosen.

    ``multi_face="main"`` always takes the most prominent face: for curated single-subject
    collections (custody photos, LFW) where extra faces can only be bystanders.
    """
    return faces[choose_index([f.box for f in faces], shape, wanted, multi_face)]


def choose_index(
    boxes: Sequence[Box], shape: tuple[int, ...], wanted: int | None, multi_face: str = "reject"
) -> int:
    """:func:`choose_face` from the faces' boxes alone: which one, by index. The choice needs
    no embedding, so enrolment embeds only the face it picks (:func:`analyse_chosen`)."""
    if not boxes:
        raise InvalidInputError("no face found")
    if wanted is not None:
        if not 0 <= wanted < len(boxes):
            raise InvalidInputError(f"face {wanted} requested but {len(boxes)} found")
        return wanted
    if len(boxes) == 1:
        return 0
    ranked = sorted(range(len(boxes)), key=lambda i: box_prominence(boxes[i], shape), reverse=True)
    if multi_face == "main" or box_prominence(
        boxes[ranked[0]], shape
    ) >= DOMINANT_RATIO * box_prominence(boxes[ranked[1]], shape):
        return ranked[0]
    raise InvalidInputError(
        f"{len(boxes)} faces and none clearly the main one: choose one with the manifest's "
        "'face' column (see `retroface detect`)"
    )


class Enroller:
    """Enrols reference images (see :meth:`run`).

    Quality: a face that breaks one of the engine's quality minimums (``QualityPolicy``: blurred,
    turned more than 45 degrees, ...) is enrolled **flagged** by default: its template keeps the
    verdict and the reasons, the run's summary lists it (``low_quality``), the audit record
    names its image, and every candidate list matched on it shows the reasons
    (``reference_warnings``). On the LFW half those references found their mates as often as
    the others (99.5% of 2,621 mate searches against 98.9% of 61,337) and drew no more false
    matches (5.6e-6 against 5.2e-6 per impostor pair): refusing them cost recall and bought
    nothing measurable (docs/gallery.md, "Reference quality"). ``require_quality`` (the CLI's
    ``--strict-quality``) refuses them instead, for galleries held to a capture standard.
    """

    def __init__(
        self,
        db: Database,
        blobs: EncryptedBlobStore,
        cipher: Cipher,
        engine: FaceEngine,
        index: IndexManager,
        *,
        workers: int = 2,
        batch_size: int = 32,
        require_quality: bool = False,
        multi_face: str = "reject",
        max_image_pixels: int = 50_000_000,
        audit: AuditFn,
        clock: Clock = utcnow,
    ) -> None:
        self.clock = clock
        self.db = db
        self.blobs = blobs
        self.cipher = cipher
        self.engine = engine
        self.index = index
        self.workers = max(1, workers)
        self.batch_size = batch_size
        self.require_quality = require_quality
        if multi_face not in ("reject", "main"):
            raise InvalidInputError("multi_face must be 'reject' or 'main'")
        self.multi_face = multi_face
        self.max_image_pixels = max_image_pixels
        self.audit = audit  # written in the same transaction as the images it records
        self.guard = Guard(db, audit, clock)

    def _known(self, digest: str) -> bool:
        """Whether an image with this content is enrolled already (one indexed lookup).

        Asked per image, in the worker, rather than reading every content hash of the gallery
        when a run starts: at 1M images (SQLite) that read took 1.9-2.2 s of CPU (6-10 s wall at
        load 30) on every run, one image through a warm server included, against 1-5 ms for
        this lookup (bench/server_1m.py, docs/performance.md).
        """
        with self.db.session() as s:
            found = s.scalar(
                select(ReferenceImage.id).where(ReferenceImage.content_hash == digest).limit(1)
            )
        return found is not None

    def _load(self, item: EnrolItem) -> _Analysed:
        """Read and hash one image; analyse it unless an earlier run enrolled it already."""
        try:
            check_item(item)
        except InvalidInputError as exc:
            return _Analysed(item, b"", "", error=exc.message)
        if item.data is not None:
            data = item.data
        elif item.confine is not None and item.path.is_symlink() and item.path.is_dir():
            reason = "a linked folder: not followed"
            if not is_within(item.path, item.confine):
                reason = "a link to a folder outside the import folder: refused, not read"
            return _Analysed(item, b"", "", error=reason)
        else:
            try:
                data = read_confined(item.path, item.confine)
            except OutsideFolderError:
                reason = "outside the import folder once links are followed: refused, not read"
                return _Analysed(item, b"", "", error=reason)
            except OSError as exc:
                return _Analysed(item, b"", "", error=f"unreadable: {exc.strerror or exc}")
        digest = content_hash(data)
        if self._known(digest):
            return _Analysed(item, b"", digest, known=True)
        return self._analyse(item, data, digest)

    def _analyse(self, item: EnrolItem, data: bytes, digest: str) -> _Analysed:
        out = _Analysed(item, data, digest)
        try:
            image = decode_image(data, name=str(item.path), max_pixels=self.max_image_pixels)
            out.height, out.width = image.shape[:2]
            face = analyse_chosen(
                self.engine,
                image,
                lambda boxes: choose_index(boxes, image.shape, item.face, self.multi_face),
            )
            if self.require_quality and not face.quality.acceptable:
                raise InvalidInputError(
                    "below quality minimums: " + "; ".join(face.quality.reasons)
                )
            out.face = face
        except ImageLoadError as exc:
            out.error = f"unreadable: {exc.reason}"
        except InvalidInputError as exc:
            out.error = exc.message
        except Exception as exc:  # one bad image must never stop a batch
            out.error = f"failed: {type(exc).__name__}: {exc}"
        return out

    @property
    def window(self) -> int:
        """Images taken up by the workers and not yet used, at most (see the module docstring)."""
        return WINDOW_PER_WORKER * self.workers + self.batch_size

    def run(
        self,
        principal: Principal,
        items: Iterable[EnrolItem],
        progress: Callable[[int, int], None] | None = None,
    ) -> EnrolSummary:
        """Enrol ``items`` as ``principal`` (admin); re-running skips what is done."""
        self.guard.require(principal, Role.ADMIN, action="gallery.enrol")
        started = time.perf_counter()
        summary = EnrolSummary()
        todo = list(items)  # the items only (paths and labels), for the progress total
        total = len(todo)
        self.blobs.sweep_partials()
        model_key = self.engine.identity.key
        # No index is loaded here: each batch's change goes to an in-memory state only where one
        # is cached (the server), and the store gets this run's delta at the end (``persist``).
        touched_subjects: set[str] = set()
        pending: list[_Analysed] = []
        seen: set[str] = set()
        done = 0
        if progress:
            progress(done, total)

        # Results are taken in submission order, so the first of two identical images in a run is
        # the one enrolled (as before); a duplicate within a run is analysed and then dropped,
        # which costs one analysis but keeps that choice independent of thread timing.
        window = self.window
        with ThreadPoolExecutor(self.workers) as pool:
            in_flight: deque[Future[_Analysed]] = deque()
            queue = iter(todo)
            for item in queue:
                in_flight.append(pool.submit(self._load, item))
                if len(in_flight) >= window:
                    break
            while in_flight:
                res = in_flight.popleft().result()
                nxt = next(queue, None)
                if nxt is not None:
                    in_flight.append(pool.submit(self._load, nxt))
                done += 1
                if res.known or (res.digest and res.digest in seen):
                    summary.skipped += 1
                elif res.error:
                    if res.digest:
                        seen.add(res.digest)
                    summary.rejected.append(Rejection(path=str(res.item.path), reason=res.error))
                else:
                    seen.add(res.digest)
                    pending.append(res)
                    touched_subjects.add(res.item.subject)
                if len(pending) >= self.batch_size:
                    self._commit(principal, pending, summary, model_key)
                    pending = []
                if progress:
                    progress(done, total)
        if pending:
            self._commit(principal, pending, summary, model_key)
        # only what changed since the stored version: a delta, not the whole gallery (issue #16)
        self.index.persist(model_key)
        summary.touch(touched_subjects)
        summary.seconds = time.perf_counter() - started
        return summary

    def _commit(
        self, principal: Principal, batch: list[_Analysed], summary: EnrolSummary, model_key: str
    ) -> None:
        for res in batch:  # durable encrypted files first; the rows that reference them follow
            self.blobs.put(res.data)
        added: list[tuple[int, int, int, np.ndarray]] = []
        flagged: list[tuple[int, Path, tuple[str, ...]]] = []  # enrolled below a minimum
        with self.index.changing():  # a search meeting the commit waits for the apply
            with self.db.session() as s:
                subjects: dict[str, Subject] = {}
                images: list[ReferenceImage] = []
                for res in batch:
                    item, face = res.item, res.face
                    assert face is not None
                    subject = subjects.get(item.subject) or s.scalar(
                        select(Subject).where(Subject.reference == item.subject)
                    )
                    if subject is None:
                        subject = Subject(
                            reference=item.subject,
                            display_name=item.display_name,
                            inclusion_reason=item.inclusion_reason or "unspecified",
                            legal_basis=item.legal_basis,
                            source=item.source,
                            retention_until=item.retention_until,
                            created_by=principal.username,
                        )
                        s.add(subject)
                        s.flush()
                        summary.new_subjects += 1
                    elif subject.status != SubjectStatus.ACTIVE:
                        summary.rejected.append(
                            Rejection(
                                path=str(item.path), reason=f"subject {item.subject} is erased"
                            )
                        )
                        continue
                    subjects[item.subject] = subject
                    image = ReferenceImage(
                        subject=subject,
                        content_hash=res.digest,
                        original_name=item.path.name,
                        provenance=item.provenance or str(item.path),
                        capture_date=item.capture_date,
                        width=res.width,
                        height=res.height,
                    )
                    s.add(image)
                    vector = np.ascontiguousarray(face.embedding, dtype=np.float32)
                    template = FaceTemplate(
                        image=image,
                        subject_id=subject.id,
                        model_key=model_key,
                        embedding_enc=self.cipher.encrypt(
                            vector.tobytes(), aad=template_aad(res.digest, model_key)
                        ),
                        det_score=face.det_score,
                        box={"box": list(face.box), "landmarks": face.landmarks.tolist()},
                        quality=face.quality.to_dict(),
                    )
                    s.add(template)
                    s.flush()
                    images.append(image)
                    if not face.quality.acceptable:
                        flagged.append((image.id, item.path, face.quality.reasons))
                    added.append((template.id, subject.id, image.id, vector))
                version = bump_gallery_version(s, added=[a[0] for a in added])
                if images:
                    self.audit(
                        s,
                        actor=principal,
                        action="gallery.enrol",
                        object_type="reference_image",
                        # ids in details (JSON, uncapped): joined into object_id they overflowed
                        # its 200 characters once ids reached 100,000 (issue #11, finding 3)
                        object_id=str(images[0].id),
                        details={
                            "images": len(images),
                            "image_ids": [i.id for i in images],
                            "subjects": sorted(subjects),
                            # enrolled although below a quality minimum (flagged, not refused)
                            **(
                                {"low_quality_image_ids": [f[0] for f in flagged]}
                                if flagged
                                else {}
                            ),
                        },
                        ts=self.clock(),
                    )
            summary.enrolled += len(added)
            summary.low_quality.extend(
                LowQualityReference(path=str(path), image_id=image_id, reasons=list(reasons))
                for image_id, path, reasons in flagged
            )
            summary.gallery_version = version
            self.index.apply(model_key, version, added=added)
