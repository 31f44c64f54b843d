"""The composition root: one object that wires settings to storage, crypto and the face engine.

The CLI, the API and tests build one :class:`AppContext`; domain services receive what they need
from it and never read the environment themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from retroface.audit.log import AuditLog
from retroface.config import Settings, get_settings
from retroface.core.clock import utcnow
from retroface.gallery.enrol import Enroller
from retroface.gallery.service import GalleryService
from retroface.governance.cases import CaseService
from retroface.governance.policy import DEFAULT_OFFENCE_CATEGORIES, GovernancePolicy
from retroface.governance.retention import RetentionService
from retroface.governance.review import ReviewService
from retroface.governance.users import UserService
from retroface.jobs.local import LocalJobRunner
from retroface.jobs.redis_queue import RedisJobRunner
from retroface.jobs.store import JobStore
from retroface.jobs.video import register_video_jobs
from retroface.search.index_manager import IndexManager
from retroface.search.matcher import Matcher
from retroface.search.service import SearchService
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.crypto import Cipher, load_or_create_key
from retroface.storage.db import Database
from retroface.vision.engines import engine_from_settings
from retroface.vision.types import FaceEngine


class AppContext:
    def __init__(
        self,
        settings: Settings | None = None,
        engine: FaceEngine | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings or get_settings()
        self.clock = clock
        self._engine = engine
        self._engine_injected = engine is not None
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def home(self) -> Path:
        return self.settings.home

    @cached_property
    def db(self) -> Database:
        db = Database(self.settings.resolved_database_url)
        db.migrate()
        return db

    @cached_property
    def cipher(self) -> Cipher:
        return Cipher(load_or_create_key(self.home, os.environ.get("RETROFACE_DATA_KEY")))

    @cached_property
    def blobs(self) -> EncryptedBlobStore:
        return EncryptedBlobStore(self.home / "images", self.cipher)

    @property
    def engine(self) -> FaceEngine:
        """The interactive engine: one search at a time, using every core."""
        if self._engine is None:
            self._engine = engine_from_settings(self.settings)
        return self._engine

    @cached_property
    def batch_engine(self) -> FaceEngine:
        """For batch work: single-threaded sessions, run from one worker thread per core.

        Measured on 2 cores: two 1-thread runs in parallel go ~1.5x faster than one 2-thread run,
        because small images leave intra-op threads idle.
        """
        if self._engine_injected:
            return self.engine
        return engine_from_settings(self.settings, threads=1)

    @property
    def batch_workers(self) -> int:
        return max(1, self.settings.threads or os.cpu_count() or 1)

    @cached_property
    def index(self) -> IndexManager:
        return IndexManager(
            self.db,
            self.cipher,
            self.home / "index",
            dim=self.engine.identity.embedding_size,
            kind=self.settings.index_kind,
        )

    @cached_property
    def gallery(self) -> GalleryService:
        return GalleryService(
            self.db, self.blobs, self.index, audit=self.audit.record, clock=self.clock
        )

    @cached_property
    def matcher(self) -> Matcher:
        return Matcher(self.index)

    def enroller(
        self, actor: str = "system", require_quality: bool = True, multi_face: str = "reject"
    ) -> Enroller:
        return Enroller(
            self.db,
            self.blobs,
            self.cipher,
            self.batch_engine,
            self.index,
            workers=self.batch_workers,
            require_quality=require_quality,
            multi_face=multi_face,
            max_image_pixels=self.settings.max_image_pixels,
            actor=actor,
            audit=self.audit.record,
            clock=self.clock,
        )

    # ------------------------------------------------------------------ governance

    @cached_property
    def policy(self) -> GovernancePolicy:
        s = self.settings
        cats = tuple(c.strip() for c in s.offence_categories.split(",") if c.strip())
        return GovernancePolicy(
            offence_categories=cats or DEFAULT_OFFENCE_CATEGORIES,
            urgent_window_hours=s.urgent_window_hours,
            authorisation_days=s.authorisation_days,
            probe_retention_days=s.probe_retention_days,
            search_record_retention_days=s.search_record_retention_days,
            audit_retention_days=s.audit_retention_days,
        )

    @cached_property
    def audit(self) -> AuditLog:
        s = self.settings
        trusted = s.audit_trusted_keys
        return AuditLog(
            self.db,
            s.resolved_audit_signing_key,
            checkpoint_every=s.audit_checkpoint_every,
            checkpoint_minutes=s.audit_checkpoint_minutes,
            anchor_path=s.resolved_audit_anchor,
            anchor_heads=s.audit_anchor_heads,
            anchor_syslog=s.audit_anchor_syslog,
            trusted_public_keys=[trusted.read_text()] if trusted else (),
            clock=self.clock,
        )

    @cached_property
    def users(self) -> UserService:
        return UserService(self.db, self.audit, clock=self.clock)

    @cached_property
    def cases(self) -> CaseService:
        return CaseService(self.db, self.blobs, self.policy, self.audit.record, clock=self.clock)

    @cached_property
    def searches(self) -> SearchService:
        return SearchService(
            self.db,
            self.blobs,
            self.cipher,
            self.engine,
            self.matcher,
            self.cases,
            self.audit.record,
            max_image_pixels=self.settings.max_image_pixels,
            clock=self.clock,
        )

    @cached_property
    def reviews(self) -> ReviewService:
        return ReviewService(self.db, self.audit.record, clock=self.clock)

    @cached_property
    def retention(self) -> RetentionService:
        return RetentionService(
            self.db,
            self.blobs,
            self.policy,
            self.cases,
            self.gallery,
            self.audit.record,
            clock=self.clock,
        )

    # ------------------------------------------------------------------ jobs

    @cached_property
    def job_store(self) -> JobStore:
        return JobStore(self.db, clock=self.clock)

    @cached_property
    def jobs(self) -> LocalJobRunner | RedisJobRunner:
        """Redis (RQ) workers when ``RETROFACE_REDIS_URL`` is set, else a thread in this process."""
        runner: LocalJobRunner | RedisJobRunner
        if self.settings.redis_url:
            runner = RedisJobRunner(
                self.job_store,
                self.settings.redis_url,
                self.settings.redis_queue,
                checkpoint_root=self.home / "jobs",
            )
        else:
            runner = LocalJobRunner(self.job_store)
        runner.register("gallery.enrol", self._enrol_job)
        register_video_jobs(runner, self)
        return runner

    def _enrol_job(
        self, payload: dict[str, Any], progress: Callable[[int, int], None]
    ) -> dict[str, Any]:
        """Batch enrolment from the import folder, as a job (the API's batch route)."""
        from dataclasses import replace

        from retroface.gallery.enrol import items_from_paths

        root = self.settings.import_dir
        if root is None:
            raise RuntimeError("RETROFACE_IMPORT_DIR is not set")
        actor = str(payload["actor"])
        items = [
            replace(
                i,
                inclusion_reason=payload.get("inclusion_reason"),
                source=payload.get("source"),
            )
            for i in items_from_paths([root / p for p in payload["paths"]])
        ]
        enroller = self.enroller(
            actor=actor,
            require_quality=not payload.get("allow_low_quality", False),
            multi_face=str(payload.get("multi_face", "reject")),
        )
        return enroller.run(items, progress=progress).to_dict()

    def close(self) -> None:
        if "jobs" in self.__dict__:
            self.jobs.stop()
        if "db" in self.__dict__:
            self.db.dispose()
