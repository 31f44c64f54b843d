"""The composition root: one object that wires settings to storage, crypto and the face engine.

The CLI, the API and tests build one :class:`AppContext`; domain services receive what they need
from it and never read the environment themselves.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from retroface.config import Settings, get_settings
from retroface.storage.blobstore import EncryptedBlobStore
from retroface.storage.crypto import Cipher, load_or_create_key
from retroface.storage.db import Database
from retroface.vision.types import FaceEngine


class AppContext:
    def __init__(self, settings: Settings | None = None, engine: FaceEngine | None = None) -> None:
        self.settings = settings or get_settings()
        self._engine = engine
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
        if self._engine is None:
            from retroface.vision.engines import engine_from_settings

            self._engine = engine_from_settings()
        return self._engine

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()
