"""onnxruntime sessions configured once, the same way for every ONNX model."""

from __future__ import annotations

import os

import onnxruntime as ort

from retroface.vision.weights import ModelUnavailableError


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def create_session(path: str, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    # Spinning worker threads burn the other core while waiting; on a small or shared machine
    # that made 2 threads 3x slower than 1. Sleeping costs microseconds per run.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
    providers.append("CPUExecutionProvider")
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelUnavailableError(f"could not load ONNX model {path}: {exc}") from None
