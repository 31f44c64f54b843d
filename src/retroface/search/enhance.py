"""Audited probe enhancement: a derived version of a probe, never a change to the original.

An operator on the case's team applies steps (crop, rotate, brightness, contrast, gamma,
equalise, denoise, sharpen, upscale: :mod:`retroface.media.enhance`) to a probe or to a version
already derived from it. The result is a new probe row under the same case, with the same
provenance, stored encrypted like any probe, with its faces detected afresh so it can be searched.
It records its parent, the ordered steps with every parameter, the parent's hash (input), its own
file and pixel hashes (output), the library versions, who and when; the audit record
``probe.enhance`` says the same. Retention and a case purge delete it with its original.

A search of the version stores the chain (original hash -> steps -> searched hash) with the
search record, and the disclosure export shows it (see :mod:`retroface.search.lineage`).
Generative restoration is not offered (docs/enhancement.md says why).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from retroface.audit.guard import Guard
from retroface.core.access import AuditFn, Principal
from retroface.core.clock import utcnow
from retroface.core.errors import InvalidInputError, NotFoundError
from retroface.core.roles import Role
from retroface.core.text import check_id
from retroface.governance.cases import CaseNotSearchableError, CaseService
from retroface.media.enhance import (
    apply_steps,
    encode_png,
    parse_steps,
    pixels_sha256,
    tool_versions,
)
from retroface.media.images import decode_image
from retroface.search.lineage import MAX_DEPTH, chain_of, lineage_of
from retroface.search.service import probe_face_rows
from retroface.search.views import FaceView, ProbeView
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.crypto import Cipher
from retroface.storage.db import Database
from retroface.storage.references import still_referenced
from retroface.storage.tables import Case, Probe
from retroface.vision.engines import analyse_probe
from retroface.vision.types import FaceEngine


class EnhancementService:
    def __init__(
        self,
        db: Database,
        blobs: EncryptedBlobStore,
        cipher: Cipher,
        engine: FaceEngine,
        cases: CaseService,
        audit: AuditFn,
        max_image_pixels: int = 50_000_000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.cipher = cipher
        self.engine = engine
        self.cases = cases
        self.audit = audit
        self.max_image_pixels = max_image_pixels
        self.clock = clock
        self.guard = Guard(db, audit, clock)

    def enhance(self, actor: Principal, probe_id: int, steps: Any) -> ProbeView:
        """Derive a new version of probe ``probe_id`` by ``steps`` (their JSON form: a list of
        ``{"op": ..., parameter: value}``); returns the version with its faces and lineage.

        Refused (and audited as ``probe.enhance.refused``) for anyone but an operator on the
        case's team, and while the case is not searchable. Bad steps (unknown operation, a
        value out of range, a crop outside the image) are :class:`InvalidInputError` before
        anything is stored.
        """
        check_id(probe_id, "probe id")
        self.guard.require(
            actor, Role.OPERATOR, action="probe.enhance", object_type="probe", object_id=probe_id
        )
        case_ref = self._case_of(probe_id)
        self.cases.team.require_case(actor, case_ref, "probe.enhance", work=True)
        self.cases.purge_lapsed(case_ref)  # a lapsed urgent case loses its probes first
        self.cases.check_searchable(actor, case_ref, "probe.enhance")
        parsed = parse_steps(steps)
        with self.db.session() as s:
            parent = s.get(Probe, probe_id)
            if parent is None:
                raise NotFoundError(f"no probe {probe_id}")
            if len(chain_of(s, parent)) > MAX_DEPTH:
                raise InvalidInputError(
                    f"probe {probe_id} is already {MAX_DEPTH} versions from its original; "
                    "enhance an earlier version"
                )
            parent_hash, parent_name = parent.content_hash, parent.original_name
        data = self.blobs.get(parent_hash)
        image = decode_image(data, name=f"probe {probe_id}", max_pixels=self.max_image_pixels)
        out = apply_steps(image, parsed, self.max_image_pixels)
        png = encode_png(out)
        faces = analyse_probe(self.engine, out)  # as any probe (SearchService.add_probe)
        digest = self.blobs.put(png)
        derivation = {
            "input_sha256": parent_hash,
            "steps": [step.to_dict() for step in parsed],
            "output_sha256": digest,
            "output_pixels_sha256": pixels_sha256(out),
            "width": int(out.shape[1]),
            "height": int(out.shape[0]),
            "by": actor.username,
            "at": self.clock().isoformat(),
            "tool": tool_versions(),
        }
        try:
            return self._store(actor, case_ref, probe_id, parent_name, digest, derivation, faces)
        except BaseException as exc:
            self._drop_unreferenced(digest)
            if isinstance(exc, CaseNotSearchableError):  # the case changed meanwhile
                self.cases.refused(actor, "probe.enhance", exc, case_ref)
            raise

    def _case_of(self, probe_id: int) -> str:
        with self.db.session() as s:
            probe = s.get(Probe, probe_id)
            case = s.get(Case, probe.case_id) if probe is not None else None
            if probe is None or case is None:
                raise NotFoundError(f"no probe {probe_id}")
            return case.reference

    def _store(
        self,
        actor: Principal,
        case_ref: str,
        parent_id: int,
        parent_name: str | None,
        digest: str,
        derivation: dict[str, Any],
        faces: list[Any],
    ) -> ProbeView:
        model_key = self.engine.identity.key
        with self.db.session() as s:
            case = self.cases.require_searchable(s, case_ref)
            parent = s.get(Probe, parent_id)
            if parent is None or parent.case_id != case.id:
                raise NotFoundError(f"probe {parent_id} was deleted during the enhancement")
            stem = PurePosixPath(parent_name or f"probe-{parent_id}").stem
            probe = Probe(
                case_id=case.id,
                content_hash=digest,
                media_type="image",
                original_name=f"{stem}.v{parent_id}-enhanced.png"[-500:],
                source=parent.source,
                how_obtained=parent.how_obtained,
                width=derivation["width"],
                height=derivation["height"],
                uploaded_by=actor.id,
                created_at=self.clock(),
                parent_id=parent.id,
                derivation=derivation,
            )
            s.add(probe)
            s.flush()
            s.add_all(probe_face_rows(self.cipher, probe.id, digest, model_key, faces))
            s.flush()
            lineage = lineage_of(s, probe)
            self.audit(
                s,
                actor=actor,
                action="probe.enhance",
                case_ref=case_ref,
                object_type="probe",
                object_id=str(probe.id),
                details={
                    "parent_id": parent.id,
                    "input_sha256": derivation["input_sha256"],
                    "steps": derivation["steps"],
                    "output_sha256": digest,
                    "output_pixels_sha256": derivation["output_pixels_sha256"],
                    "faces": len(faces),
                },
                ts=self.clock(),
            )
            return ProbeView(
                probe_id=probe.id,
                case=case_ref,
                sha256=digest,
                faces=[FaceView(face=i, **f.to_dict()) for i, f in enumerate(faces)],
                parent_id=parent.id,
                lineage=lineage,
            )

    def _drop_unreferenced(self, digest: str) -> None:
        """A derived file whose row never committed is deleted (unless another row holds the
        same bytes: the same steps on the same probe give the same file)."""
        with self.db.session() as s:
            if still_referenced(s, {digest}):
                return
        self.blobs.delete(digest)
