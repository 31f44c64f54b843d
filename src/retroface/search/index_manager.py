"""Keeps the derived vector index in step with the database, the source of truth.

The index file is encrypted (it holds templates) and carries the gallery version and model it was
built from; a missing, stale or unreadable file is rebuilt from the database automatically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from retroface.search.index import VectorIndex, index_from_bytes, new_index
from retroface.storage.crypto import Cipher, DecryptionError, template_aad
from retroface.storage.db import Database
from retroface.storage.files import atomic_write
from retroface.storage.tables import FaceTemplate, ReferenceImage
from retroface.storage.versions import gallery_version

log = logging.getLogger(__name__)


@dataclass
class LoadedIndex:
    index: VectorIndex
    version: int
    model_key: str
    rebuilt: bool
    subject_of: dict[int, int]  # template id -> subject id
    image_of: dict[int, int]  # template id -> reference image id


class IndexManager:
    def __init__(
        self, db: Database, cipher: Cipher, folder: Path, dim: int, kind: str = "flat"
    ) -> None:
        self.db = db
        self.cipher = cipher
        self.folder = folder
        self.dim = dim
        self.kind = kind
        self._loaded: dict[str, LoadedIndex] = {}

    def path_for(self, model_key: str) -> Path:
        digest = hashlib.sha256(model_key.encode()).hexdigest()[:16]
        return self.folder / f"{digest}.{self.kind}.idx.enc"

    def get(self, model_key: str) -> LoadedIndex:
        """The index for a model, current with the database's gallery version."""
        with self.db.session() as s:
            version = gallery_version(s)
        cached = self._loaded.get(model_key)
        if cached and cached.version == version:
            return cached
        loaded = self._load_file(model_key, version) or self.rebuild(model_key)
        self._loaded[model_key] = loaded
        return loaded

    def _load_file(self, model_key: str, version: int) -> LoadedIndex | None:
        path = self.path_for(model_key)
        if not path.exists():
            log.info("index %s missing: rebuilding", path.name)
            return None
        try:
            raw = self.cipher.decrypt(path.read_bytes(), aad=model_key.encode())
            header_len = int.from_bytes(raw[:4], "big")
            header = json.loads(raw[4 : 4 + header_len])
            if header["version"] != version or header["model_key"] != model_key:
                log.info("index %s stale (v%s, gallery v%s)", path.name, header["version"], version)
                return None
            index = index_from_bytes(self.kind, raw[4 + header_len :])
            maps = header["maps"]
            return LoadedIndex(
                index,
                version,
                model_key,
                False,
                {int(k): v for k, v in maps["subject"].items()},
                {int(k): v for k, v in maps["image"].items()},
            )
        except (DecryptionError, ValueError, KeyError, json.JSONDecodeError, RuntimeError) as exc:
            log.warning("index %s unreadable (%s): rebuilding", path.name, exc)
            return None

    def rebuild(self, model_key: str) -> LoadedIndex:
        """Re-derive the index from every template of this model in the database."""
        with self.db.session() as s:
            version = gallery_version(s)
            rows = s.execute(
                select(
                    FaceTemplate.id,
                    FaceTemplate.subject_id,
                    FaceTemplate.image_id,
                    FaceTemplate.embedding_enc,
                    ReferenceImage.content_hash,
                )
                .join(FaceTemplate.image)
                .where(FaceTemplate.model_key == model_key)
                .order_by(FaceTemplate.id)
            ).all()
        index = new_index(self.kind, self.dim)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if rows:
            vectors = np.stack(
                [
                    np.frombuffer(
                        self.cipher.decrypt(r[3], aad=template_aad(r[4], model_key)),
                        dtype=np.float32,
                    )
                    for r in rows
                ]
            )
            index.add(ids, vectors)
        loaded = LoadedIndex(
            index,
            version,
            model_key,
            True,
            {int(r[0]): int(r[1]) for r in rows},
            {int(r[0]): int(r[2]) for r in rows},
        )
        self.save(loaded)
        self._loaded[model_key] = loaded
        return loaded

    def apply(
        self,
        model_key: str,
        new_version: int,
        added: list[tuple[int, int, int, np.ndarray]] | None = None,
        removed: list[int] | None = None,
        save: bool = False,
    ) -> None:
        """Follow a committed change incrementally; if anyone else changed the gallery, rebuild."""
        cached = self._loaded.get(model_key)
        if cached is None:
            return
        if cached.version != new_version - 1:
            self._loaded.pop(model_key, None)
            return
        if added:
            cached.index.add(
                np.array([a[0] for a in added], dtype=np.int64), np.stack([a[3] for a in added])
            )
            for tid, sid, iid, _ in added:
                cached.subject_of[tid] = sid
                cached.image_of[tid] = iid
        if removed:
            cached.index.remove(np.array(removed, dtype=np.int64))
            for tid in removed:
                cached.subject_of.pop(tid, None)
                cached.image_of.pop(tid, None)
        cached.version = new_version
        if save:
            self.save(cached)

    def invalidate(self) -> None:
        self._loaded.clear()

    def save(self, loaded: LoadedIndex | None = None, model_key: str | None = None) -> None:
        if loaded is None:
            if model_key is None or model_key not in self._loaded:
                return
            loaded = self._loaded[model_key]
        header = json.dumps(
            {
                "version": loaded.version,
                "model_key": loaded.model_key,
                "kind": self.kind,
                "count": loaded.index.count(),
                "maps": {"subject": loaded.subject_of, "image": loaded.image_of},
            }
        ).encode()
        raw = len(header).to_bytes(4, "big") + header + loaded.index.to_bytes()
        blob = self.cipher.encrypt(raw, aad=loaded.model_key.encode())
        atomic_write(self.path_for(loaded.model_key), blob)
