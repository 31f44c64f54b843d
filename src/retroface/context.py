"""The composition root: one object that wires settings to storage, crypto and the face engine.

The CLI, the API, the RQ worker (:mod:`retroface.jobs.worker`) and tests build one
:class:`AppContext`; domain services receive what they need from it in their constructors and
never read the environment themselves. It is wiring only: no module below the CLI and the API
imports it (``tests/test_architecture.py`` checks), so it holds no rules of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from functools import cached_property
from pathlib import Path

from retroface.audit.guard import Guard
from retroface.audit.log import AuditLog
from retroface.config import Settings, get_settings
from retroface.core.clock import utcnow
from retroface.gallery.enrol import Enroller
from retroface.gallery.service import GalleryService
from retroface.governance.cases import CaseService
from retroface.governance.oversight import OversightService
from retroface.governance.policy import DEFAULT_OFFENCE_CATEGORIES, GovernancePolicy
from retroface.governance.retention import RetentionService
from retroface.governance.review import ReviewService
from retroface.governance.schema import SchemaService
from retroface.governance.thresholds import ThresholdService
from retroface.governance.users import UserService
from retroface.jobs.base import JobRunner
from retroface.jobs.handlers import JobServices, register_handlers
from retroface.jobs.local import LocalJobRunner
from retroface.jobs.redis_queue import RedisJobRunner
from retroface.jobs.store import JobStore
from retroface.search.enhance import EnhancementService
from retroface.search.faces import FaceImages
from retroface.search.footage import FootageSearch
from retroface.search.index_manager import IndexManager
from retroface.search.matcher import Matcher
from retroface.search.service import SearchService
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.crypto import Cipher, load_or_create_key
from retroface.storage.db import Database, SchemaChange
from retroface.vision.engines import build_engine, engine_options
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
        #: Set by the API server: index compaction then runs in a background thread while the
        #: cached index keeps serving (a command-line process compacts before it exits).
        self.serving = False

        #: What opening the database changed (``db`` migrates to head on first use).
        self.schema_change: SchemaChange | None = None
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def home(self) -> Path:
        return self.settings.home

    @cached_property
    def db(self) -> Database:
        db = Database(self.settings.resolved_database_url)
        self.schema_change = db.migrate()
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
            self._engine = build_engine(self.settings)
        return self._engine

    @cached_property
    def batch_engine(self) -> FaceEngine:
        """For batch work: single-threaded sessions, run from one worker thread per core.

        Measured on 2 cores: two 1-thread runs in parallel go ~1.5x faster than one 2-thread run,
        because small images leave intra-op threads idle.
        """
        if self._engine_injected:
            return self.engine
        return build_engine(self.settings, threads=1)

    @property
    def batch_workers(self) -> int:
        return max(1, self.settings.threads or os.cpu_count() or 1)

    @cached_property
    def index(self) -> IndexManager:
        kind = self.settings.index_kind
        if self.settings.index_shards:
            from retroface.search import sharded  # registers the sharded kinds; loads no Ray

            sharded.connect(self.settings.ray_address, min_cpus=self.settings.index_shards)
            kind = sharded.sharded_kind(kind, self.settings.index_shards)
        return IndexManager(
            self.db,
            self.cipher,
            self.home / "index",
            dim=self.engine.identity.embedding_size,
            kind=kind,
            compact_in_background=self.serving,
        )

    @cached_property
    def gallery(self) -> GalleryService:
        return GalleryService(
            self.db, self.blobs, self.index, audit=self.audit.record, clock=self.clock
        )

    @cached_property
    def matcher(self) -> Matcher:
        return Matcher(self.index)

    def enroller(self, require_quality: bool = False, multi_face: str = "reject") -> Enroller:
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
    def schema(self) -> SchemaService:
        return SchemaService(self.db, self.audit.record, clock=self.clock)

    @cached_property
    def guard(self) -> Guard:
        """Audits refusals made outside a service (the API's access matrix)."""
        return Guard(self.db, self.audit.record, self.clock)

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
    def faces(self) -> FaceImages:
        """Face images for screens: need-to-know, audited, decrypted in memory, privacy blur."""
        return FaceImages(
            self.db,
            self.blobs,
            self.cases,
            self.audit.record,
            blur_all=self.settings.blur_all_faces,
            max_image_pixels=self.settings.max_image_pixels,
            clock=self.clock,
        )

    @cached_property
    def enhancements(self) -> EnhancementService:
        """Audited probe enhancement: derived versions of probes, searchable like probes."""
        return EnhancementService(
            self.db,
            self.blobs,
            self.cipher,
            self.engine,
            self.cases,
            self.audit.record,
            max_image_pixels=self.settings.max_image_pixels,
            clock=self.clock,
        )

    @cached_property
    def footage(self) -> FootageSearch:
        """Search a video's face track, find a person in footage: casework on recorded video."""
        return FootageSearch(
            self.db,
            self.searches,
            self.cases,
            self.engine,
            self.audit.record,
            match_threshold=self.settings.match_threshold,
            clock=self.clock,
        )

    @cached_property
    def reviews(self) -> ReviewService:
        return ReviewService(self.db, self.audit.record, clock=self.clock)

    @cached_property
    def oversight(self) -> OversightService:
        return OversightService(
            self.db,
            self.audit,
            self.gallery,
            self.policy,
            self.settings,
            engine=lambda: self.engine,
            clock=self.clock,
        )

    @cached_property
    def thresholds(self) -> ThresholdService:
        return ThresholdService(
            self.db,
            self.audit.record,
            clock=self.clock,
            max_fnir_ratio=self.settings.fairness_max_fnir_ratio,
            max_fpir_ratio=self.settings.fairness_max_fpir_ratio,
        )

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
    def job_services(self) -> JobServices:
        """What the job handlers are bound to (the engine is built when a job first needs it)."""
        return JobServices(
            engine=lambda: self.engine,
            engine_options=engine_options(self.settings),
            enroller=self.enroller,
            principal_for=self.users.principal_for,
            import_dir=self.settings.import_dir,
            checkpoint_root=self.home / "jobs",
        )

    @cached_property
    def jobs(self) -> JobRunner:
        """Redis (RQ) workers when ``RETROFACE_REDIS_URL`` is set, else a thread in this process.

        Every job kind is registered here, once; RQ worker processes build a context too
        (:mod:`retroface.jobs.worker`) and so get the same handlers.
        """
        runner: JobRunner
        if self.settings.redis_url:
            runner = RedisJobRunner(
                self.job_store,
                self.settings.redis_url,
                self.settings.redis_queue,
                checkpoint_root=self.home / "jobs",
            )
        else:
            runner = LocalJobRunner(self.job_store)
        register_handlers(runner, self.job_services)
        return runner

    def close(self) -> None:
        if "jobs" in self.__dict__:
            self.jobs.stop()
        if "index" in self.__dict__:
            self.index.close()  # closes the segment files a lean state reads its rows from
        if "db" in self.__dict__:
            self.db.dispose()
