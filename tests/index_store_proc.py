"""A second process for the stored-index tests (``test_index_segments.py``): run as a script.

``enrol HOME DB_URL FOLDER``: enrols the images in FOLDER through the real enroller (which
persists a delta segment), prints ``delta``, then forces a compaction (a test sets
``RETROFACE_TEST_COMPACTION_PAUSE`` so that it stops before its manifest, to be killed there).

``write HOME DB_URL MODEL_KEY VECTORS.npy TAG``: for each vector, commits a subject, an image and
a template (as the enroller does, recording the change in the change log) and persists the store;
two of these at once are two concurrent writers.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from retroface.config import Settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.roles import Role
from retroface.gallery.enrol import items_from_paths
from retroface.storage.crypto import template_aad
from retroface.storage.tables import FaceTemplate, ReferenceImage, Subject
from retroface.storage.versions import bump_gallery_version

ADMIN = Principal(id=1, username="admin", roles=frozenset({Role.ADMIN}))


def enrol(ctx: AppContext, folder: Path) -> None:
    ctx.enroller().run(ADMIN, items_from_paths([folder]))
    print("delta", flush=True)
    ctx.index.compact(ctx.engine.identity.key, force=True)
    print("compacted", flush=True)


def write(ctx: AppContext, key: str, vectors: np.ndarray, tag: str) -> None:
    from retroface.search.index_manager import IndexManager

    index = IndexManager(ctx.db, ctx.cipher, ctx.home / "index", dim=vectors.shape[1])
    for i, vector in enumerate(vectors):
        digest = hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()
        with ctx.db.session() as s:
            subject = Subject(reference=f"{tag}-{i}", inclusion_reason="test", created_by="test")
            s.add(subject)
            s.flush()
            image = ReferenceImage(
                subject=subject,
                content_hash=digest,
                original_name=f"{tag}-{i}.jpg",
                provenance="test",
                width=100,
                height=100,
            )
            template = FaceTemplate(
                image=image,
                subject_id=subject.id,
                model_key=key,
                embedding_enc=ctx.cipher.encrypt(
                    np.ascontiguousarray(vector, np.float32).tobytes(),
                    aad=template_aad(digest, key),
                ),
                det_score=0.9,
            )
            s.add_all([image, template])
            s.flush()
            bump_gallery_version(s, added=[template.id])
        index.persist(key)


def main(argv: list[str]) -> None:
    command, home, url = argv[:3]
    ctx = AppContext(Settings(home=Path(home), database_url=url))
    try:
        if command == "enrol":
            enrol(ctx, Path(argv[3]))
        elif command == "write":
            write(ctx, argv[3], np.load(argv[4]), argv[5])
        else:
            raise SystemExit(f"unknown command {command}")
    finally:
        ctx.close()


if __name__ == "__main__":
    main(sys.argv[1:])
