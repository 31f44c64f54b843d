"""Several probe images searched under one case in one call: each its own audited search.

An investigator with forty stills from one incident should not pay forty process start-ups, model
loads and index loads (issue #16). A batch changes nothing about what a search is: every image goes
through :meth:`SearchService.add_probe` and :meth:`SearchService.search` exactly as a single one
does, so each gets its own probe record, candidate list, retention and blind review, and its own
``probe.add`` and ``search.run`` audit records. The batch only decides what happens when one image
fails, so the CLI (``retroface search A.jpg B.jpg DIR/``) and the API (several files in one
request) behave alike.

- A failure that belongs to one image (unreadable, not an image, no face, several faces and no
  face chosen, a face index the image does not have, too large) becomes that image's entry
  (:class:`BatchSearchFailure`) and the others go on.
- A refusal of the request itself (the caller's role, need-to-know, a case that is not
  searchable) is raised as for one search; it is met at the first image, before anything is stored.
  If the case stops being searchable partway (refused or lapsed while the batch runs), the searches
  done stay done, and every image not yet searched gets that error as its entry: the service is not
  asked again, so one refusal is audited, not one per remaining image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from retroface.core.access import Principal
from retroface.core.errors import InvalidInputError, RetrofaceError
from retroface.media.images import ImageLoadError, upright_shape
from retroface.search.service import ProbeProvenance, SearchService
from retroface.search.views import (
    BatchSearchFailure,
    BatchSearchResult,
    FaceView,
    ProbeError,
    SearchResult,
)
from retroface.vision.engines import MAIN_FACE_RATIO, box_prominence

#: One entry per input image, in input order.
BatchEntry = BatchSearchResult | BatchSearchFailure
#: ``progress(done, total, entry)`` after each image (a front end may show the entry at once).
BatchProgress = Callable[[int, int, BatchEntry], None]

#: Codes of :class:`~retroface.core.errors.RetrofaceError` raised by a front end's ``read`` that
#: concern one image only (the API's per-file upload limit).
PROBE_ERROR_CODES = frozenset({"upload_too_large"})

# With ``main_face``, a face is searched in a several-face image only if it is MAIN_FACE_RATIO
# times as prominent (area discounted by distance from the centre) as the next: enrolment's
# rule, so a still's bystander at the edge does not stop a batch, and a group photo or a
# couple still asks which face to search (see ``vision.engines.MAIN_FACE_RATIO``).


@dataclass(frozen=True)
class ProbeFile:
    """One image of a batch as the front end has it.

    ``name`` is echoed back as the entry's ``input`` (the path as typed, or the upload's file
    name); ``read`` returns the bytes when the image's turn comes, so a long batch never holds
    every file in memory at once. An ``OSError`` from it makes an ``unreadable`` entry.
    """

    name: str
    read: Callable[[], bytes]


class _ProbeFailed(Exception):
    """This image, and only this image, cannot be searched."""

    def __init__(self, code: str, message: str, probe_id: int | None = None) -> None:
        super().__init__(message)
        self.error = ProbeError(code=code, message=message)
        self.probe_id = probe_id


def search_batch(
    searches: SearchService,
    actor: Principal,
    case_ref: str,
    probes: Sequence[ProbeFile],
    provenance: ProbeProvenance,
    face: int | None = None,
    top_k: int = 20,
    threshold: float | None = None,
    progress: BatchProgress | None = None,
    main_face: bool = False,
) -> list[BatchEntry]:
    """Search every image of ``probes`` under ``case_ref``; one entry each, in input order.

    ``face`` applies to every image (most stills show one person; an image with several faces
    and no ``face`` is refused as a single search would be, with its probe id so that it can be
    searched later with ``--probe ID --face N``). With ``main_face`` (and no ``face``), an image
    with several faces is searched with its main face when one clearly is (see
    :data:`MAIN_FACE_RATIO`), and refused as before when none is.
    """
    # What is wrong for every image is an error of the request, found before anything is stored.
    provenance.check()
    if not 1 <= top_k <= 200:
        raise InvalidInputError("top-k must be between 1 and 200")
    entries: list[BatchEntry] = []
    stopped: RetrofaceError | None = None
    for probe in probes:
        if stopped is not None:
            entries.append(
                _failure(probe.name, ProbeError(code=stopped.code, message=stopped.message))
            )
        else:
            try:
                result = _search_one(
                    searches, actor, case_ref, probe, provenance, face, top_k, threshold, main_face
                )
                entries.append(BatchSearchResult(**dict(result), input=probe.name))
            except _ProbeFailed as failed:
                entries.append(_failure(probe.name, failed.error, failed.probe_id))
            except RetrofaceError as exc:
                if not entries:
                    raise  # refused before anything was done: the request fails as a whole
                stopped = exc
                entries.append(_failure(probe.name, ProbeError(code=exc.code, message=exc.message)))
        if progress is not None:
            progress(len(entries), len(probes), entries[-1])
    return entries


def _clear_main_face(faces: Sequence[FaceView], shape: tuple[int, int]) -> int | None:
    """The index of the face that is clearly the image's main one, or None."""
    ranked = sorted(faces, key=lambda f: box_prominence(f.box, shape), reverse=True)
    if box_prominence(ranked[0].box, shape) >= MAIN_FACE_RATIO * box_prominence(
        ranked[1].box, shape
    ):
        return ranked[0].face
    return None


def _failure(name: str, error: ProbeError, probe_id: int | None = None) -> BatchSearchFailure:
    return BatchSearchFailure(input=name, error=error, probe_id=probe_id)


def _search_one(
    searches: SearchService,
    actor: Principal,
    case_ref: str,
    probe: ProbeFile,
    provenance: ProbeProvenance,
    face: int | None,
    top_k: int,
    threshold: float | None,
    main_face: bool = False,
) -> SearchResult:
    name = PurePath(probe.name).name or probe.name
    try:
        data = probe.read()
    except OSError as exc:
        raise _ProbeFailed("unreadable", f"{probe.name}: {exc.strerror or exc}") from None
    except RetrofaceError as exc:
        if exc.code in PROBE_ERROR_CODES:
            raise _ProbeFailed(exc.code, f"{probe.name}: {exc.message}") from None
        raise
    try:
        added = searches.add_probe(actor, case_ref, data, name, provenance)
    except ImageLoadError as exc:  # named by the input as given, not the stored name only
        raise _ProbeFailed("invalid_image", f"{probe.name}: {exc.reason}") from None
    except InvalidInputError as exc:  # e.g. a file name the store refuses
        raise _ProbeFailed(exc.code, f"{probe.name}: {exc.message}") from None
    pid = added.probe_id
    if not added.faces:
        raise _ProbeFailed("no_face", f"{probe.name}: no face found; nothing to search", pid)
    if face is None and len(added.faces) > 1 and main_face:
        face = _clear_main_face(added.faces, upright_shape(data))
    if face is None and len(added.faces) > 1:
        boxes = ", ".join(f"{f.face}: box {[round(v) for v in f.box]}" for f in added.faces)
        raise _ProbeFailed(
            "several_faces",
            f"{probe.name} shows {len(added.faces)} faces ({boxes}); a search targets one "
            f"person: search probe {pid} with the face to use (CLI: --probe {pid} --face N)",
            pid,
        )
    try:
        result = searches.search(actor, case_ref, pid, face, top_k, threshold)
    except InvalidInputError as exc:  # e.g. --face 2 on an image with two faces
        raise _ProbeFailed(exc.code, f"{probe.name}: {exc.message}", pid) from None
    return result
