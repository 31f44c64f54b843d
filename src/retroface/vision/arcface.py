"""ArcFace-style recogniser run with onnxruntime: aligned 112x112 crops in, unit vectors out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retroface.vision.onnx_runtime import create_session
from retroface.vision.types import FloatArray, ImageArray, l2_normalise
from retroface.vision.weights import ModelUnavailableError


class ArcFaceRecogniser:
    def __init__(
        self,
        model_path: str,
        threads: int | None = None,
        batch_size: int = 32,
        providers: str | Sequence[str] | None = None,
    ) -> None:
        self.session = create_session(model_path, threads, providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4:
            raise ModelUnavailableError(f"{model_path} does not take NCHW face crops: {shape}")
        self.crop_size = int(shape[2]) if isinstance(shape[2], int) else 112
        out_shape = self.session.get_outputs()[0].shape
        self.embedding_size = int(out_shape[-1]) if isinstance(out_shape[-1], int) else 512
        self.batch_size = batch_size

    def embed(self, crops: list[ImageArray] | np.ndarray, flip: bool = False) -> FloatArray:
        """Embeddings for aligned RGB crops; with ``flip`` the mirror's embedding is added first."""
        if len(crops) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        batch = np.stack(list(crops)).astype(np.float32)
        batch = ((batch - 127.5) / 127.5).transpose(0, 3, 1, 2)
        out = self._run(batch)
        if flip:
            out = out + self._run(np.ascontiguousarray(batch[:, :, :, ::-1]))
        return l2_normalise(out)

    def embed_raw(
        self, crops: list[ImageArray] | np.ndarray, flip: bool = False
    ) -> tuple[FloatArray, FloatArray | None]:
        """Unnormalised outputs for the crops and, with ``flip``, for their mirrors. The raw
        length is a confidence signal (the probe quality model reads it); the search uses
        :func:`l2_normalise` of the sum, exactly what :meth:`embed` returns."""
        if len(crops) == 0:
            empty = np.zeros((0, self.embedding_size), dtype=np.float32)
            return empty, (empty if flip else None)
        batch = np.stack(list(crops)).astype(np.float32)
        batch = ((batch - 127.5) / 127.5).transpose(0, 3, 1, 2)
        out = self._run(batch)
        mirrored = self._run(np.ascontiguousarray(batch[:, :, :, ::-1])) if flip else None
        return out, mirrored

    def _run(self, batch: np.ndarray) -> FloatArray:
        parts = []
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(batch[start : start + self.batch_size])
            parts.append(self.session.run(None, {self.input_name: chunk})[0])
        return np.concatenate(parts).astype(np.float32)
