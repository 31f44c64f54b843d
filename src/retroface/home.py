"""The Python API: retroface for people who script it, as plain as face_recognition's ``api.py``.

Two tools that store nothing and need no case::

    import retroface

    faces = retroface.detect_faces("group.jpg")              # every face, with quality
    result = retroface.compare_faces("a.jpg", "b.jpg")       # main face of each
    print(result.similarity, result.same_person)

and a data folder (a "home") in which everything goes through the same services as the CLI and
the REST API, so the same roles are checked and the same audit records are written::

    home = retroface.open_home("~/.retroface")
    admin = home.sign_in("admin", "admin's passphrase")
    home.enrol(admin, ["custody/"], inclusion_reason="custody image", source="force records")
    olive = home.sign_in("olive", "olive's passphrase")
    home.open_case(olive, "CR/1/26", offence="robbery", purpose="identify the suspect",
                   justification="serious offence; CCTV is the only lead")
    home.authorise(home.sign_in("arthur", "…"), "CR/1/26", note="necessary and proportionate")
    result = home.search(olive, "still.jpg", case="CR/1/26", source="CCTV",
                         how_obtained="exported from the DVR, exhibit AB/1")

Every call that acts takes the acting :class:`~retroface.core.access.Principal` first, as the
services do: a script cannot act as nobody. This module is a front end like the CLI and the API
(it wires an :class:`~retroface.context.AppContext`); nothing in the domain imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

from retroface.audit.chain import VerifyResult
from retroface.config import Settings, get_settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import InvalidInputError
from retroface.gallery.enrol import EnrolItem, items_from_paths
from retroface.gallery.views import EnrolSummary
from retroface.governance.views import CaseView, ReviewOutcome
from retroface.media.images import load_image
from retroface.search.service import ProbeProvenance
from retroface.search.views import ProbeView, SearchResult
from retroface.vision.compare import Comparison
from retroface.vision.compare import compare_faces as _compare
from retroface.vision.engines import build_engine
from retroface.vision.types import Face, FaceEngine

__all__ = ["Home", "compare_faces", "detect_faces", "open_home"]


@lru_cache(maxsize=1)
def _engine() -> FaceEngine:
    """The face engine from ``RETROFACE_*`` settings, built once per process."""
    return build_engine()


def detect_faces(image: str | Path) -> list[Face]:
    """Every face in an image file: box, landmarks, detection score, quality and embedding."""
    return _engine().analyse(load_image(image, max_pixels=get_settings().max_image_pixels))


def compare_faces(a: str | Path, b: str | Path, threshold: float | None = None) -> Comparison:
    """Compare the main face of two image files (``same_person`` at ``threshold``, default the
    configured ``RETROFACE_MATCH_THRESHOLD``). A score is a lead, never an identification."""
    settings = get_settings()
    t = settings.match_threshold if threshold is None else threshold
    max_pixels = settings.max_image_pixels
    image_a, image_b = (load_image(p, max_pixels=max_pixels) for p in (a, b))
    return _compare(_engine(), image_a, image_b, t, (str(a), str(b)))


def open_home(path: str | Path | None = None, **settings: Any) -> Home:
    """Open (or create) a data folder; ``settings`` override ``RETROFACE_*`` (e.g.
    ``database_url="postgresql://…"``). Use it as a context manager, or call ``close()``."""
    values = dict(settings)
    if path is not None:
        values["home"] = Path(path).expanduser()
    return Home(AppContext(Settings(**values)))


class Home:
    """One data folder and its services. Thin on purpose: each method is one service call."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def __enter__(self) -> Home:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.ctx.close()

    @property
    def path(self) -> Path:
        return self.ctx.home

    # ------------------------------------------------------------------ who acts

    def create_admin(self, username: str, password: str) -> Principal:
        """First run only: the first administrator (refused once an active admin exists)."""
        if self.ctx.users.ensure_admin(username, password) is None:
            raise InvalidInputError("this home already has an administrator: sign in instead")
        return self.sign_in(username, password)

    def sign_in(self, username: str, password: str) -> Principal:
        """Check a password (audited, like every login) and return who is acting."""
        return self.ctx.users.authenticate_password(username, password)

    def sign_in_token(self, token: str) -> Principal:
        return self.ctx.users.authenticate_token(token)

    def add_user(
        self, admin: Principal, username: str, roles: str | Iterable[str], password: str
    ) -> Principal:
        """An account with comma-separated or listed roles (operator, authoriser, reviewer,
        auditor, admin); only an admin may add one."""
        return self.ctx.users.add(admin, username, roles, password)

    # ------------------------------------------------------------------ gallery

    def enrol(
        self,
        admin: Principal,
        paths: Iterable[str | Path],
        *,
        inclusion_reason: str,
        source: str | None = None,
        multi_face: str = "reject",
        progress: Callable[[int, int], None] | None = None,
    ) -> EnrolSummary:
        """Enrol image files or folders (a folder's images belong to the subject named by their
        parent folder); already enrolled images are skipped, unusable ones listed with why."""
        items = [
            EnrolItem(
                path=i.path, subject=i.subject, inclusion_reason=inclusion_reason, source=source
            )
            for i in items_from_paths(Path(p).expanduser() for p in paths)
        ]
        return self.ctx.enroller(multi_face=multi_face).run(admin, items, progress=progress)

    # ------------------------------------------------------------------ casework

    def open_case(
        self,
        operator: Principal,
        reference: str,
        *,
        offence: str,
        purpose: str,
        justification: str,
        urgent: bool = False,
    ) -> CaseView:
        return self.ctx.cases.open(operator, reference, offence, purpose, justification, urgent)

    def authorise(
        self,
        authoriser: Principal,
        reference: str,
        *,
        note: str,
        approve: bool = True,
        valid_days: float | None = None,
        investigation_mode: bool = False,
    ) -> CaseView:
        """Approve (or, with ``approve=False``, refuse) a case; nobody may decide their own.
        ``investigation_mode`` lets its searches list candidates below the operating threshold."""
        return self.ctx.cases.authorise(
            authoriser, reference, approve, note, valid_days, investigation_mode=investigation_mode
        )

    def search(
        self,
        operator: Principal,
        image: str | Path,
        *,
        case: str,
        source: str,
        how_obtained: str,
        face: int | None = None,
        top_k: int = 20,
    ) -> SearchResult:
        """Submit a probe image with its provenance and search one face of it under ``case``.

        An image with several faces needs ``face`` (see :func:`detect_faces`): a search targets
        one person, never everyone in a picture. The stored candidate list goes to review.
        """
        path = Path(image).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInputError(f"{path}: {exc.strerror or exc}") from None
        searches = self.ctx.searches
        added = searches.add_probe(
            operator, case, data, path.name, ProbeProvenance(source, how_obtained)
        )
        return searches.search(operator, case, added.probe_id, face, top_k)

    def enhance(self, operator: Principal, probe_id: int, steps: list[dict[str, Any]]) -> ProbeView:
        """Derive an enhanced version of a probe by ``steps`` (e.g. ``[{"op": "denoise"},
        {"op": "upscale", "factor": 2}]``); the original never changes, and the version
        records its steps and hashes (docs/enhancement.md). Search it with
        :meth:`search_probe`."""
        return self.ctx.enhancements.enhance(operator, probe_id, steps)

    def search_probe(
        self,
        operator: Principal,
        probe_id: int,
        *,
        case: str,
        face: int | None = None,
        top_k: int = 20,
    ) -> SearchResult:
        """Search a probe already stored (an original or an enhanced version) under ``case``."""
        return self.ctx.searches.search(operator, case, probe_id, face, top_k)

    def review(
        self,
        reviewer: Principal,
        search_id: int,
        *,
        decision: str,
        note: str,
        rank: int | None = None,
    ) -> ReviewOutcome:
        """One blind review decision ("possible match" with ``rank``, or "no match", …)."""
        return self.ctx.reviews.decide(reviewer, search_id, decision, note, rank)

    def verify_audit(self, auditor: Principal) -> VerifyResult:
        """Check the audit chain and its signed checkpoints."""
        return self.ctx.oversight.verify_audit(auditor)
