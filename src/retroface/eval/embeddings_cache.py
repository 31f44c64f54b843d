"""Embedding evaluation images once, in parallel, with an on-disk cache.

A full LFW run embeds ~6,000 images (minutes on a small CPU); every later report, calibration or
metric change should reuse them. Results are cached per *variant* (the model key, the pipeline
settings that change embeddings and any probe degradation) and per image content (sha256), in
one ``.npz`` file per variant under ``$RETROFACE_HOME/eval-cache``.

The cache holds face embeddings in plain numpy files, unencrypted: fine for public evaluation
data such as LFW, but never point an evaluation at operational images without ``--no-cache``
(templates of real people belong in the encrypted gallery only). Deleting the folder is safe.

Each image stands for one face, the :func:`~retroface.vision.engines.primary_face` (the
subject of a single-person photo). A failure to detect is recorded as such, never patched with
a whole-image crop: a deployed system does not get that second chance either.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retroface.core.errors import RetrofaceError
from retroface.eval.degrade import DegradeSpec, degrade_image
from retroface.media.images import load_image
from retroface.vision.engines import EngineOptions, analyse_probe, primary_face
from retroface.vision.probe_quality import FEATURES
from retroface.vision.types import FaceEngine, ModelIdentity

CACHE_DIRNAME = "eval-cache"
#: 2: per-image probe quality features (the calibrated quality model's inputs).
CACHE_FORMAT = 2
#: Save the cache every this many new images, so an interrupted run keeps its work.
SAVE_EVERY = 500

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EngineSpec(EngineOptions):
    """The engine under test: options that worker processes can build the same engine from
    (``build`` is :func:`~retroface.vision.engines.build_engine`)."""

    def settings(self) -> dict[str, Any]:
        """Pipeline settings outside the model key that still change embeddings."""
        if self.backend in ("arcface", "fused"):
            return {"det_size": self.det_size, "det_threshold": self.det_threshold}
        return {}


@dataclass
class FaceRecord:
    """What one image gave: the primary face's embedding, box and quality verdict."""

    found: bool
    embedding: NDArray[np.float32] | None
    box: tuple[float, float, float, float] | None
    det_score: float
    acceptable: bool
    n_faces: int
    error: str = ""
    #: the probe quality model's inputs (``FEATURES``); None where not found or not measured
    features: NDArray[np.float32] | None = None


@dataclass
class EmbeddingSet:
    """Embeddings of a list of images, row ``i`` for image ``i``; zero rows where not found."""

    paths: list[Path]
    embeddings: NDArray[np.float32]
    found: NDArray[np.bool_]
    boxes: NDArray[np.float32]  # (n, 4); NaN where not found
    det_scores: NDArray[np.float32]
    acceptable: NDArray[np.bool_]
    n_faces: NDArray[np.int32]
    errors: dict[int, str]
    model: ModelIdentity
    variant: str
    computed: int  # images embedded in this run (the rest came from the cache)
    seconds: float
    #: (n, len(FEATURES)) probe quality features; NaN rows where not found or not measured
    features: NDArray[np.float32] | None = None

    def index_of(self) -> dict[Path, int]:
        return {p: i for i, p in enumerate(self.paths)}

    @property
    def face_widths(self) -> NDArray[np.float32]:
        return np.asarray(self.boxes[:, 2] - self.boxes[:, 0], dtype=np.float32)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: Modules whose code decides an image's embedding, per backend. Weights are in the model key;
#: the code is fingerprinted too, so a changed detector or alignment never reads stale results.
PIPELINE_MODULES: dict[str, tuple[str, ...]] = {
    "arcface": (
        "retroface.vision.scrfd",
        "retroface.vision.alignment",
        "retroface.vision.arcface",
        "retroface.vision.onnx_runtime",
        "retroface.vision.probe_quality",
    ),
    "dlib": ("retroface.vision.dlib_backend",),
}
#: ``fused`` is the arcface pipeline plus a second recogniser (its class is in ``engines``).
PIPELINE_MODULES["fused"] = PIPELINE_MODULES["arcface"]
COMMON_MODULES = ("retroface.vision.engines", "retroface.vision.quality", "retroface.media.images")


def _code_digest(module: str) -> str:
    """sha256 of a module's syntax tree without docstrings: comment and docstring edits do
    not invalidate the cache, any code change does."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return "missing"
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


@functools.cache
def pipeline_fingerprint(backend: str, degraded: bool) -> str:
    """Digest of the pipeline code, taken once per process: the code this process runs was
    loaded at start, so a file edited later must not change the answer mid-run."""
    modules = PIPELINE_MODULES.get(backend, ()) + COMMON_MODULES
    if degraded:
        modules += ("retroface.eval.degrade",)
    joined = ",".join(f"{m}={_code_digest(m)}" for m in sorted(modules))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def variant_key(
    model: ModelIdentity, spec: EngineSpec, degrade: DegradeSpec | None, probe: bool = False
) -> str:
    parts: dict[str, Any] = {
        "model": model.key,
        **spec.settings(),
        "code": pipeline_fingerprint(model.backend, degrade is not None),
        "cache_format": CACHE_FORMAT,
    }
    if degrade is not None:
        parts["degrade"] = asdict(degrade)
    if probe:  # analysed as a search probe (``analyse_probe``: arcface adds test-time flip)
        parts["probe"] = True
    return json.dumps(parts, sort_keys=True)


#: embedding, found, box, detection score, acceptable, faces in the image, quality features
_Row = tuple[NDArray[np.float32], bool, NDArray[np.float32], float, bool, int, NDArray[np.float32]]


class EmbeddingCache:
    """One ``.npz`` per variant: image sha256 -> embedding, detection flag, box, quality."""

    def __init__(self, folder: Path | None, variant: str, dim: int) -> None:
        self.folder = folder
        self.variant = variant
        self.dim = dim
        self.rows: dict[str, _Row]
        self.rows = {}
        self._dirty = False
        if folder is not None and self.path.is_file():
            self._load()

    @property
    def path(self) -> Path:
        assert self.folder is not None
        digest = hashlib.sha256(self.variant.encode()).hexdigest()[:24]
        return self.folder / f"{digest}.npz"

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["variant"]) != self.variant or z["embeddings"].shape[1] != self.dim:
                    return
                # Read each array once (indexing ``z[name]`` re-reads it from the file).
                keys = z["keys"].tolist()
                emb, found, boxes = z["embeddings"], z["found"], z["boxes"]
                det, ok, n_faces = z["det_scores"], z["acceptable"], z["n_faces"]
                feats = z["features"]
        except (OSError, KeyError, ValueError):
            return  # unreadable cache: recompute rather than fail
        for i, key in enumerate(keys):
            self.rows[key] = (
                emb[i].copy(),
                bool(found[i]),
                boxes[i].copy(),
                float(det[i]),
                bool(ok[i]),
                int(n_faces[i]),
                feats[i].copy(),
            )

    def get(self, key: str) -> FaceRecord | None:
        row = self.rows.get(key)
        if row is None:
            return None
        emb, found, box, det, ok, n, feats = row
        return FaceRecord(
            found=found,
            embedding=emb if found else None,
            box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])) if found else None,
            det_score=det,
            acceptable=ok,
            n_faces=n,
            features=None if np.isnan(feats).all() else feats,
        )

    def put(self, key: str, rec: FaceRecord) -> None:
        if rec.error:  # unreadable files are not cached: the file may be fixed
            return
        emb = rec.embedding if rec.embedding is not None else np.zeros(self.dim, np.float32)
        box = np.asarray(rec.box if rec.box is not None else (np.nan,) * 4, dtype=np.float32)
        feats = (
            np.asarray(rec.features, dtype=np.float32)
            if rec.features is not None
            else np.full(len(FEATURES), np.nan, dtype=np.float32)
        )
        self.rows[key] = (
            np.asarray(emb, dtype=np.float32),
            rec.found,
            box,
            rec.det_score,
            rec.acceptable,
            rec.n_faces,
            feats,
        )
        self._dirty = True

    def save(self) -> None:
        """Write atomically (temp file + rename); concurrent writers: the last one wins."""
        if self.folder is None or not self._dirty or not self.rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = list(self.rows)
        cols = list(zip(*(self.rows[k] for k in keys), strict=True))
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            variant=np.array(self.variant),
            keys=np.array(keys),
            embeddings=np.stack(cols[0]).astype(np.float32),
            found=np.array(cols[1], dtype=bool),
            boxes=np.stack(cols[2]).astype(np.float32),
            det_scores=np.array(cols[3], dtype=np.float32),
            acceptable=np.array(cols[4], dtype=bool),
            n_faces=np.array(cols[5], dtype=np.int32),
            features=np.stack(cols[6]).astype(np.float32),
        )
        os.replace(tmp, self.path)
        self._dirty = False


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------

_ENGINE: FaceEngine | None = None


class PipelineChangedError(RetrofaceError):
    """A worker process loaded different pipeline code or weights than the parent."""


def _init_worker(spec: EngineSpec, threads: int) -> None:
    global _ENGINE
    _ENGINE = spec.build(threads=threads)


def _worker_identity(degraded: bool) -> tuple[str, str]:
    assert _ENGINE is not None
    key = _ENGINE.identity.key
    return key, pipeline_fingerprint(_ENGINE.identity.backend, degraded)


#: index, path, source face box (for degrading), degradation, analysed as a search probe
Task = tuple[int, str, tuple[float, float, float, float] | None, DegradeSpec | None, bool]


def analyse_one(engine: FaceEngine, task: Task) -> tuple[int, FaceRecord]:
    """Load (and degrade) one image, keep its primary face."""
    index, path, box, degrade, probe = task
    try:
        image = load_image(path)
    except Exception as exc:  # a broken file is reported per image, never fatal
        return index, FaceRecord(False, None, None, 0.0, False, 0, f"{type(exc).__name__}: {exc}")
    if degrade is not None:
        if box is None:  # no face found in the clean image: nothing to size the degradation by
            return index, FaceRecord(False, None, None, 0.0, False, 0)
        image = degrade_image(image, box, degrade).image
    faces = analyse_probe(engine, image) if probe else engine.analyse(image)
    face = primary_face(faces, image.shape)
    if face is None:
        return index, FaceRecord(False, None, None, 0.0, False, len(faces))
    return index, FaceRecord(
        found=True,
        embedding=np.asarray(face.embedding, dtype=np.float32),
        box=face.box,
        det_score=float(face.det_score),
        acceptable=bool(face.quality.acceptable),
        n_faces=len(faces),
        features=(
            np.asarray(face.quality.features, dtype=np.float32)
            if len(face.quality.features) == len(FEATURES)
            else None
        ),
    )


def _worker(task: Task) -> tuple[int, FaceRecord]:
    assert _ENGINE is not None
    return analyse_one(_ENGINE, task)


def default_workers() -> int:
    """One single-threaded engine per core: on small images that beats one multi-threaded
    engine (intra-op threads sit idle), see ``AppContext.batch_engine``."""
    return max(1, min(os.cpu_count() or 1, 8))


def _run_tasks(
    tasks: list[Task],
    spec: EngineSpec,
    engine: FaceEngine | None,
    workers: int,
    expected: tuple[str, str],
) -> Iterator[tuple[int, FaceRecord]]:
    if workers <= 1 or len(tasks) < 32:
        eng = engine or spec.build()
        for t in tasks:
            yield analyse_one(eng, t)
        return
    # "spawn": forking a process that holds live onnxruntime sessions is unsafe. Spawned
    # workers import the code afresh, so they must prove they run what the cache key says.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(spec, 1)
    )
    try:
        got = pool.submit(_worker_identity, tasks[0][3] is not None).result()
        if got != expected:
            raise PipelineChangedError(
                "the face pipeline changed on disk during the evaluation (worker runs "
                f"{got[0]} code {got[1]}, this process {expected[0]} code {expected[1]}): "
                "run the evaluation again"
            )
        yield from pool.map(_worker, tasks, chunksize=8)
    except BaseException:
        # Ctrl-C or an error: drop queued work instead of finishing every image first.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def embed_images(
    paths: Sequence[Path],
    spec: EngineSpec,
    *,
    model: ModelIdentity,
    cache_dir: Path | None,
    engine: FaceEngine | None = None,
    workers: int | None = None,
    degrade: DegradeSpec | None = None,
    source_boxes: Sequence[tuple[float, float, float, float] | None] | None = None,
    progress: ProgressFn | None = None,
    label: str = "Embedding",
    probe: bool = False,
) -> EmbeddingSet:
    """Primary-face embeddings of ``paths``, computed only for images not in the cache.

    With ``degrade``, each image is first degraded around its face box from ``source_boxes``
    (the clean run's detections); images without a box count as failures to detect.
    ``engine`` (already built, in this process) is used when running in-process. With
    ``probe`` the images are analysed as search probes are (``analyse_probe``).
    """
    start = time.perf_counter()
    variant = variant_key(model, spec, degrade, probe)
    cache = EmbeddingCache(cache_dir, variant, model.embedding_size)
    n = len(paths)
    records: list[FaceRecord | None] = [None] * n
    tasks: list[Task] = []
    keys = [file_sha256(p) for p in paths]
    for i, (p, key) in enumerate(zip(paths, keys, strict=True)):
        rec = cache.get(key)
        if rec is not None:
            records[i] = rec
        else:
            box = source_boxes[i] if source_boxes is not None else None
            tasks.append((i, str(p), box, degrade, probe))
    done = n - len(tasks)
    if progress:
        progress(label, done, n)
    for count, (i, rec) in enumerate(
        _run_tasks(
            tasks,
            spec,
            engine,
            workers or default_workers(),
            (model.key, pipeline_fingerprint(model.backend, degrade is not None)),
        ),
        1,
    ):
        records[i] = rec
        cache.put(keys[i], rec)
        if count % SAVE_EVERY == 0:
            cache.save()
        if progress:
            progress(label, done + count, n)
    cache.save()
    dim = model.embedding_size
    emb = np.zeros((n, dim), dtype=np.float32)
    boxes = np.full((n, 4), np.nan, dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    det = np.zeros(n, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    n_faces = np.zeros(n, dtype=np.int32)
    feats = np.full((n, len(FEATURES)), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    for i, rec in enumerate(records):
        assert rec is not None
        if rec.found and rec.embedding is not None:
            found[i] = True
            emb[i] = rec.embedding
            boxes[i] = rec.box
            if rec.features is not None:
                feats[i] = rec.features
        det[i], ok[i], n_faces[i] = rec.det_score, rec.acceptable, rec.n_faces
        if rec.error:
            errors[i] = rec.error
    return EmbeddingSet(
        paths=list(paths),
        embeddings=emb,
        found=found,
        boxes=boxes,
        det_scores=det,
        acceptable=ok,
        n_faces=n_faces,
        errors=errors,
        model=model,
        variant=variant,
        computed=len(tasks),
        seconds=time.perf_counter() - start,
        features=feats,
    )
