"""Scan many videos on a Ray cluster (optional extra: ``pip install 'retroface[ray]'``).

Each video is one Ray task needing one CPU, spread over the cluster's nodes; a worker process
builds its face engine once (single-threaded: Ray gives it one CPU) and keeps it for later tasks.
Videos are read by path, so every node must see them at the same path (shared storage). Only the
scan summary (tracks, times, quality; no embeddings or pixels) travels back to the driver.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from retroface.core.errors import InvalidInputError
from retroface.vision.engines import EngineOptions, build_engine
from retroface.vision.types import FaceEngine

#: This worker process's engines, by the options they were built from (built once, then kept).
_ENGINES: dict[EngineOptions, FaceEngine] = {}


def _engine(options: EngineOptions) -> FaceEngine:
    if options not in _ENGINES:
        _ENGINES[options] = build_engine(options, threads=1)
    return _ENGINES[options]


def scan_task(path: str, fps: float | None, options: EngineOptions) -> dict[str, Any]:
    """Runs on a Ray worker: one video's summary, labelled with the node that scanned it."""
    import ray

    from retroface.media.footage import scan_summary

    result = scan_summary(path, _engine(options), fps)
    result["worker"] = {
        "ray_node": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    return result


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInputError(
            "Ray is not installed: pip install 'retroface[ray]' (or run without --ray)"
        ) from None
    return ray


def scan_many_ray(
    items: Sequence[tuple[int, str]],
    address: str,
    *,
    fps: float | None,
    engine_opts: EngineOptions,
    on_result: Callable[[int, dict[str, Any]], None],
    heartbeat: Callable[[], None] | None = None,
) -> None:
    """Scan ``(index, path)`` items on the cluster at ``address``; results arrive as they finish.

    If ``on_result`` or ``heartbeat`` raises (a cancelled job), outstanding tasks are cancelled.
    """
    if not items:
        return
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=address,
                log_to_driver=False,
                logging_level="WARNING",
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InvalidInputError(f"cannot join the Ray cluster at {address}: {exc}") from None
    task = ray.remote(num_cpus=1, max_retries=2, scheduling_strategy="SPREAD")(scan_task)
    pending = {task.remote(path, fps, engine_opts): (i, path) for i, path in items}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not done:
                if heartbeat:
                    heartbeat()
                continue
            ref = done[0]
            index, path = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the task failed even after retries
                result = {"path": path, "error": f"scan failed on the cluster: {exc}"}
            on_result(index, result)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
