"""What the search services return: probes, candidate lists, disclosure packages, footage finds.

One set of Pydantic models shared by the services (their return types), the API (its
``response_model``s) and the CLI (``--json`` prints ``model_dump(mode="json")``). Their JSON is the
API's contract, so the field names, order and nesting here are what users see; times are UTC and
serialise as ISO 8601.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from retroface.core.labels import LEAD_LABEL
from retroface.core.status import ReviewStatus


class View(BaseModel):
    """A result handed out by a service: read-only once built."""

    model_config = ConfigDict(frozen=True)


class FaceView(View):
    """One face found in a probe; ``face`` is the index a search names it by."""

    face: int
    box: list[float]
    landmarks: list[list[float]]
    det_score: float
    quality: dict[str, Any]


class ProbeDerivation(View):
    """One enhancement: the version it made, from which version, by which steps, by whom.

    ``input_sha256`` is the file hash of the parent version, ``output_sha256`` that of the
    derived PNG; ``output_pixels_sha256`` hashes the decoded pixels (independent of the PNG
    encoder), and ``tool`` names the library versions that computed them.
    """

    probe_id: int
    parent_id: int
    input_sha256: str
    steps: list[dict[str, Any]]
    output_sha256: str
    output_pixels_sha256: str
    width: int
    height: int
    by: str
    at: datetime
    tool: dict[str, str]


class ProbeLineage(View):
    """From the original probe, as submitted, to a derived version: what a disclosure shows."""

    original_probe_id: int
    original_sha256: str
    derivations: list[ProbeDerivation]  # in order: original -> ... -> this version


class ProbeView(View):
    """A stored probe and the faces found in it; an enhanced version also its lineage."""

    probe_id: int
    case: str
    sha256: str
    faces: list[FaceView]
    parent_id: int | None = None  # the version this one was derived from
    lineage: ProbeLineage | None = None  # None for an original


class ProbeDetail(ProbeView):
    """A stored probe as its case page shows it: the faces, and where the image came from."""

    name: str | None
    source: str
    how_obtained: str
    media_type: str
    width: int
    height: int
    created_at: datetime


class SearchListing(View):
    """One search of a probe, as a case page lists it (no candidates: open it to see them)."""

    search_id: int
    face: int | None
    started_at: datetime
    candidates: int
    review_status: ReviewStatus


class ProbeListing(View):
    """A probe of a case with the searches run on it, newest first on the case page."""

    probe_id: int
    name: str | None
    source: str
    how_obtained: str
    media_type: str
    faces: int
    created_at: datetime
    searches: list[SearchListing]


class ProbeSummary(View):
    """The probe a search used, with its provenance and quality warnings."""

    probe_id: int | None  # None once the probe is deleted; the search record keeps its hash
    sha256: str
    source: str | None
    how_obtained: str | None
    quality: dict[str, Any]
    warnings: list[str]
    #: For an enhanced version: original hash -> steps -> this version's hash (kept with the
    #: search record, so it outlives the probes). None when the original itself was searched.
    lineage: ProbeLineage | None = None


class CandidateView(View):
    rank: int
    subject: str
    similarity: float
    image_id: int | None
    #: At or above the operating threshold in force (None: the model had none). Below it only
    #: in investigation mode, where the top-k are listed whatever their score.
    above_threshold: bool | None = None
    #: The quality minimums the matched reference image breaks (enrolled flagged, not refused):
    #: a match on a blurred or turned-away reference deserves a closer look.
    reference_warnings: list[str] = Field(default_factory=list)


class SearchResult(View):
    """A stored candidate list: an investigative lead, with what Art 12(3) asks to be logged."""

    search_id: int
    label: str
    probe: ProbeSummary
    candidates: list[CandidateView]
    gallery_version: int
    model: str
    threshold: float | None  # the cut applied to the list (None: top-k whatever the score)
    threshold_record_id: int | None
    started_at: datetime
    ended_at: datetime | None
    review_status: ReviewStatus
    case: str | None = None  # None when the case row is gone
    threshold_source: str | None = None  # calibrated / shipped / explicit
    operating_threshold: float | None = None  # the model's operating threshold at the time
    operating_source: str | None = None  # calibrated / shipped
    mode: str = "operating"  # operating / investigation (legacy: before thresholds shipped)
    #: No candidate at or above the operating threshold: said plainly, and nothing to review.
    none_above_threshold: bool = False
    message: str | None = None


class VideoSearchResult(SearchResult):
    """A search of one face track: which video, track and time the probe came from."""

    video: dict[str, Any]  # the origin stored with the probe face (video hash, track, t, …)
    track: dict[str, Any]  # the track as ``retroface video scan`` shows it


class DisclosedDecision(View):
    """One review decision, disclosed once the review is settled."""

    stage: str
    decision: str
    candidate_rank: int | None
    note: str | None
    at: datetime


class DisclosedReview(View):
    status: ReviewStatus
    outcome: str | None
    decisions: list[DisclosedDecision]  # empty until settled
    note: str | None  # why decisions are withheld, if they are


class SearchExport(View):
    """A disclosure package: the search, its case, candidates and settled review."""

    disclosure: SearchResult
    review: DisclosedReview
    exported_by: str
    exported_at: datetime
    label: str = LEAD_LABEL


class FootageMatch(View):
    """A track in which the person looked for appears, with the span to look at."""

    track: int
    start_s: float
    end_s: float
    similarity_fused: float
    similarity_max: float
    peak_t: float
    faces: int
    faces_above: int


class FootageScanned(View):
    """A video that was searched: its matching tracks and the merged time spans."""

    video: str
    path: str
    sha256: str
    duration_s: float | None
    end_s: float | None
    decode: dict[str, Any]
    tracks: int
    matches: list[FootageMatch]
    spans: list[list[float]]


class FootageUnreadable(View):
    """A video that could not be read: reported, not fatal."""

    video: str
    path: str
    sha256: str | None = None  # None when the file could not even be hashed
    error: str

    @model_serializer(mode="wrap")
    def _omit_missing_hash(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # as before the models: an unhashable file has no sha256 key rather than a null one
        data: dict[str, Any] = handler(self)
        if self.sha256 is None:
            data.pop("sha256", None)
        return data


class FootageFind(View):
    """Where one person appears in a set of videos, under a case."""

    case: str
    label: str = LEAD_LABEL
    threshold: float
    probe: dict[str, Any]  # what the caller said the probe was (name, hash, face)
    videos: list[FootageScanned | FootageUnreadable]


#: The 5 landmarks every face carries, in order (left and right as seen in the image).
LANDMARK_NAMES = (
    "eye (image left)",
    "eye (image right)",
    "nose tip",
    "mouth corner (image left)",
    "mouth corner (image right)",
)


class FaceImage(View):
    """A face image to show a person: JPEG bytes decoded from the encrypted store in memory.

    ``landmarks`` are the 5 points (:data:`LANDMARK_NAMES`) in this image's pixels, given for
    aligned crops (the comparison view's overlay); ``blurred`` counts the regions blurred in it
    (faces not chosen, or every face with blur-all); ``scale`` maps the probe's face boxes (in
    the stored image's pixels, as :class:`FaceView` gives them) onto a whole probe image shown
    smaller, so a page can place a "pick this face" control over each blurred face.
    """

    jpeg: bytes
    width: int
    height: int
    scale: float = 1.0  # a whole image scaled down: box coordinates x scale = this image's
    blurred: int = 0
    landmarks: list[list[float]] | None = None
    media_type: str = "image/jpeg"


class ComparisonLandmarks(View):
    """The 5 landmarks of a search's probe face and of one candidate's reference face, each in
    its aligned ``size`` x ``size`` crop (``…/probe/aligned.jpg`` and
    ``…/candidates/{rank}/aligned.jpg`` at the same size): both crops share one frame, so the
    points can be drawn over either and compared. No similarity, no decision: nothing here
    unblinds a reviewer."""

    search_id: int
    rank: int
    size: int
    points: list[str] = list(LANDMARK_NAMES)
    probe: list[list[float]]
    candidate: list[list[float]]


class ProbeError(View):
    """Why one image of a batch was not searched (the API's error shape, per image)."""

    code: str  # unreadable, invalid_image, no_face, several_faces, invalid_input, …
    message: str


class BatchSearchResult(SearchResult):
    """One image of a batch that was searched: its candidate list and the input it came from."""

    input: str  # the path as given (CLI) or the upload's file name (API)


class BatchSearchFailure(View):
    """One image of a batch that was not searched; the other images are unaffected."""

    input: str
    error: ProbeError
    probe_id: int | None = None  # set when the image was stored as a probe (no or several faces)
