"""SCRFD face detector (InsightFace) run with onnxruntime.

The ONNX graph stops at raw per-anchor outputs; decoding (anchor centres on strides 8/16/32, two
anchors per location, distance-to-box and distance-to-keypoint) and NMS happen here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from retroface.vision.onnx_runtime import create_session
from retroface.vision.types import FloatArray, ImageArray
from retroface.vision.weights import ModelUnavailableError


@dataclass
class Detections:
    boxes: FloatArray  # (N, 4) x1 y1 x2 y2
    scores: FloatArray  # (N,)
    landmarks: FloatArray  # (N, 5, 2)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; returns kept indices in descending score order."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= iou_threshold]
    return keep


class ScrfdDetector:
    """One SCRFD model with keypoints (the ``*_bnkps`` variants)."""

    strides = (8, 16, 32)
    num_anchors = 2

    def __init__(
        self,
        model_path: str,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        threads: int | None = None,
        providers: str | Sequence[str] | None = None,
    ) -> None:
        self.session = create_session(model_path, threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        if len(outputs) != 9:
            raise ModelUnavailableError(
                f"{model_path} is not an SCRFD model with keypoints "
                f"(expected 9 outputs, found {len(outputs)})"
            )
        self.output_names = [o.name for o in outputs]
        self.input_size = int(input_size)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self._centres: dict[tuple[int, int, int], FloatArray] = {}

    def _anchor_centres(self, height: int, width: int, stride: int) -> FloatArray:
        key = (height, width, stride)
        if key not in self._centres:
            ys, xs = np.mgrid[:height, :width]
            centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            self._centres[key] = np.repeat(centres, self.num_anchors, axis=0)
        return self._centres[key]

    def _prepare(self, image: ImageArray) -> tuple[np.ndarray, float]:
        """Fit the image within ``input_size`` (never enlarging it), pad right and bottom to
        multiples of 32.

        Enlarging a small image makes its face too big for SCRFD's anchors: 250x250 LFW photos
        blown up to 640 lost 13 of 6,175 faces and 0.7 points of verification accuracy. The
        padded canvas follows the image's shape, so a 16:9 frame costs 640x384, not 640x640.
        """
        h, w = image.shape[:2]
        size = self.input_size
        scale = min(1.0, size / h, size / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = (
            image if scale == 1.0 else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        )
        ch, cw = -(-nh // 32) * 32, -(-nw // 32) * 32
        canvas = np.zeros((ch, cw, 3), dtype=np.uint8)
        canvas[:nh, :nw] = resized
        blob = (canvas.astype(np.float32) - 127.5) / 128.0
        return blob.transpose(2, 0, 1)[None], scale

    def detect_rescaled(self, image: ImageArray, factor: float) -> Detections:
        """Faces found in ``image`` resized by ``factor`` (cubic when enlarging, area averaging
        when shrinking), with coordinates mapped back to ``image``'s pixels."""
        h, w = image.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        interp = cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA
        dets = self.detect(np.ascontiguousarray(cv2.resize(image, size, interpolation=interp)))
        sx, sy = size[0] / w, size[1] / h
        boxes = dets.boxes / np.array([sx, sy, sx, sy], dtype=np.float32)
        landmarks = dets.landmarks / np.array([sx, sy], dtype=np.float32)
        return Detections(boxes.astype(np.float32), dets.scores, landmarks.astype(np.float32))

    def detect(self, image: ImageArray, max_faces: int = 0) -> Detections:
        """Faces in an RGB image, in descending score order, coordinates in image pixels."""
        blob, scale = self._prepare(image)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        # Some exports keep a batch axis on every output, some do not.
        outs = [o[0] if o.ndim == 3 else o for o in outs]
        ch, cw = blob.shape[2], blob.shape[3]
        all_scores, all_boxes, all_kps = [], [], []
        for level, stride in enumerate(self.strides):
            scores = outs[level].reshape(-1)
            bbox = outs[level + 3].reshape(-1, 4) * stride
            kps = outs[level + 6].reshape(-1, 10) * stride
            centres = self._anchor_centres(ch // stride, cw // stride, stride)
            keep = np.where(scores >= self.score_threshold)[0]
            if keep.size == 0:
                continue
            c = centres[keep]
            d = bbox[keep]
            boxes = np.stack(
                [c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], axis=1
            )
            k = kps[keep].reshape(-1, 5, 2) + c[:, None, :]
            all_scores.append(scores[keep])
            all_boxes.append(boxes)
            all_kps.append(k)
        if not all_scores:
            return Detections(
                np.zeros((0, 4), np.float32),
                np.zeros((0,), np.float32),
                np.zeros((0, 5, 2), np.float32),
            )
        scores = np.concatenate(all_scores).astype(np.float32)
        boxes = (np.concatenate(all_boxes) / scale).astype(np.float32)
        kps = (np.concatenate(all_kps) / scale).astype(np.float32)
        keep_idx = nms(boxes, scores, self.nms_threshold)
        if max_faces > 0:
            keep_idx = keep_idx[:max_faces]
        h, w = image.shape[:2]
        boxes = boxes[keep_idx]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return Detections(boxes, scores[keep_idx], kps[keep_idx])
