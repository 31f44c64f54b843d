"""1:1 comparison of the main faces of two images: the `compare` command and the Python API.

It stores nothing and needs no case: it is a tool for checking the engine and an operator's own
images, and its result carries the same caution as a search (a score is a lead, not an identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from retroface.core.errors import NoFaceError
from retroface.vision.engines import primary_face
from retroface.vision.types import Face, FaceEngine, ImageArray

COMPARE_NOTE = "a similarity score is an investigative lead, not an identification"


@dataclass(frozen=True)
class Comparison:
    similarity: float
    threshold: float
    face_a: Face
    face_b: Face
    faces_in_a: int
    faces_in_b: int

    @property
    def same_person(self) -> bool:
        return self.similarity >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "similarity": round(self.similarity, 4),
            "threshold": self.threshold,
            "same_person": self.same_person,
            "note": COMPARE_NOTE,
            "a": {"faces": self.faces_in_a, **self.face_a.to_dict()},
            "b": {"faces": self.faces_in_b, **self.face_b.to_dict()},
            "model": self.face_a.model.to_dict(),
        }


def main_face(engine: FaceEngine, image: ImageArray, name: str) -> tuple[Face, int]:
    """The most prominent face of ``image`` and how many were found; ``NoFaceError`` if none."""
    faces = engine.analyse(image)
    face = primary_face(faces, image.shape)
    if face is None:
        raise NoFaceError(f"{name}: no face found")
    return face, len(faces)


def compare_faces(
    engine: FaceEngine,
    image_a: ImageArray,
    image_b: ImageArray,
    threshold: float,
    names: tuple[str, str] = ("image A", "image B"),
) -> Comparison:
    """Cosine similarity of the two images' main faces (embeddings are unit length)."""
    fa, na = main_face(engine, image_a, names[0])
    fb, nb = main_face(engine, image_b, names[1])
    similarity = float(np.dot(fa.embedding, fb.embedding))
    return Comparison(similarity, threshold, fa, fb, na, nb)
