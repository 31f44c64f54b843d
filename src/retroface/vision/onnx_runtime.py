"""onnxruntime sessions configured once, the same way for every ONNX model.

Which hardware runs a model is a deployment choice (``RETROFACE_PROVIDERS``, e.g. ``cuda,cpu`` or
``openvino,cpu``), never part of what the model is: the model key stored with every template
comes from the weight files' hashes, so the same files give the same key on any provider, and
templates made on a GPU are searched on a CPU and back. A provider this onnxruntime build does
not have, or one that fails to start (a CUDA build without its libraries), is skipped with a
warning in the log and the CPU runs the model: a search never fails because an accelerator is
missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import onnxruntime as ort

from retroface.vision.weights import ModelUnavailableError

log = logging.getLogger("retroface.vision")

CPU = "CPUExecutionProvider"

#: Short names accepted in ``RETROFACE_PROVIDERS``; a full onnxruntime name
#: (``...ExecutionProvider``) is accepted as well.
PROVIDER_NAMES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
}

#: Providers that ran into trouble, warned about once per process (not once per model file).
_warned: set[tuple[str, str]] = set()


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


#: With nothing configured: CUDA where this onnxruntime build has it, else the CPU (as before).
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", CPU)


def parse_providers(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """onnxruntime provider names, in order of preference, from ``"cuda,cpu"`` or a list.

    Empty or ``None`` gives ``()`` (the default applies). Unknown names raise
    ``ModelUnavailableError`` naming the accepted ones, so that a typo in the setting is an error
    at start-up, not a silent CPU run.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec or ())
    names: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name = PROVIDER_NAMES.get(item.lower())
        if name is None and item.endswith("ExecutionProvider"):
            name = item
        if name is None:
            known = ", ".join(sorted(PROVIDER_NAMES))
            raise ModelUnavailableError(
                f"unknown execution provider {item!r} in RETROFACE_PROVIDERS; use {known} "
                "or a full onnxruntime name (…ExecutionProvider)"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def resolve_providers(spec: str | Sequence[str] | None) -> list[str]:
    """The providers to ask onnxruntime for: those requested that this build has, in order,
    always ending with the CPU. A requested one that is missing is logged (once a process); the
    default's CUDA is tried quietly, as it always was."""
    available = set(ort.get_available_providers())
    requested = parse_providers(spec)
    chosen = [p for p in requested or DEFAULT_PROVIDERS if p in available]
    if CPU not in chosen:
        chosen.append(CPU)
    for p in requested:
        if p not in available and ("missing", p) not in _warned:
            _warned.add(("missing", p))
            log.warning(
                "execution provider %s is not in this onnxruntime build (it has %s): running on %s",
                p,
                ", ".join(sorted(available)),
                ", ".join(chosen),
            )
    return chosen


def create_session(
    path: str, threads: int | None = None, providers: str | Sequence[str] | None = None
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    # Spinning worker threads burn the other core while waiting; on a small or shared machine
    # that made 2 threads 3x slower than 1. Sleeping costs microseconds per run.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    wanted = resolve_providers(providers)
    try:
        session = ort.InferenceSession(path, sess_options=opts, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        if wanted == [CPU]:
            raise ModelUnavailableError(f"could not load ONNX model {path}: {exc}") from None
        # an accelerator that is there but cannot start must not stop the CPU from running
        log.warning("could not start %s for %s (%s): using the CPU", wanted[:-1], path, exc)
        try:
            session = ort.InferenceSession(path, sess_options=opts, providers=[CPU])
        except Exception as exc2:
            raise ModelUnavailableError(f"could not load ONNX model {path}: {exc2}") from None
    # onnxruntime itself drops a provider whose libraries fail to load, with only its own log line
    dropped = [p for p in wanted if p not in session.get_providers()]
    if dropped and ("dropped", ",".join(dropped)) not in _warned:
        _warned.add(("dropped", ",".join(dropped)))
        log.warning(
            "execution provider(s) %s could not start: %s runs on %s",
            ", ".join(dropped),
            os.path.basename(path),
            ", ".join(session.get_providers()),
        )
    return session
