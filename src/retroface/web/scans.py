"""Footage scans held in this server process's memory: one per uploaded video, for its operator.

See :mod:`retroface.web.routes.footage` for why scans live here and not in the job queue. The
case page lists an operator's scans of the case from here too.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from fastapi import Request

from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import NotFoundError, RetrofaceError
from retroface.media.footage import VideoScan
from retroface.media.video import VideoLoadError
from retroface.search.service import ProbeProvenance

#: How long a finished scan is kept for its operator to pick a track, and how many at most.
KEEP_S = 3600.0
MAX_SCANS = 8


@dataclass
class FootageScan:
    """One uploaded video being scanned, or scanned, for one operator under one case."""

    id: str
    owner: int
    case: str
    name: str
    provenance: ProbeProvenance
    created: float = field(default_factory=time.monotonic)
    seconds: float = 0.0  # of footage decoded so far
    duration: float | None = None
    scan: VideoScan | None = None
    error: str | None = None
    done: bool = False

    def progress(self, t: float, duration: float | None) -> None:
        self.seconds, self.duration = t, duration

    @property
    def percent(self) -> int:
        if self.done:
            return 100
        if not self.duration:
            return 0
        return max(0, min(99, int(100 * self.seconds / self.duration)))


class FootageScans:
    """This process's footage scans, by an unguessable id; each visible to its operator only."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scans: dict[str, FootageScan] = {}

    def start(
        self,
        ctx: AppContext,
        caller: Principal,
        ref: str,
        data: bytes,
        name: str,
        p: ProbeProvenance,
    ) -> FootageScan:
        job = FootageScan(secrets.token_urlsafe(16), caller.id, ref, name, p)
        with self.lock:
            self._expire()
            self.scans[job.id] = job

        def run() -> None:
            try:
                job.scan = ctx.footage.scan_upload(
                    caller, ref, data, name, p, progress=job.progress
                )
            except (RetrofaceError, VideoLoadError) as exc:
                job.error = getattr(exc, "message", None) or str(exc)
            except Exception as exc:  # a thread has no one else to tell
                job.error = f"the scan failed: {type(exc).__name__}"
            finally:
                job.done = True

        threading.Thread(target=run, name=f"retroface-footage-{job.id[:6]}", daemon=True).start()
        return job

    def get(self, caller: Principal, scan_id: str) -> FootageScan:
        with self.lock:
            self._expire()
            job = self.scans.get(scan_id)
        # another operator's scan is "not found", not "forbidden": its id says nothing
        if job is None or job.owner != caller.id:
            raise NotFoundError(f"no footage scan {scan_id} (scans are kept for an hour)")
        return job

    def of_case(self, caller: Principal, case: str) -> list[FootageScan]:
        """The caller's scans of ``case``, newest first."""
        with self.lock:
            self._expire()
            mine = [j for j in self.scans.values() if j.owner == caller.id and j.case == case]
        return sorted(mine, key=lambda j: j.created, reverse=True)

    def _expire(self) -> None:
        now = time.monotonic()
        for key, job in list(self.scans.items()):
            if job.done and now - job.created > KEEP_S:
                del self.scans[key]
        finished = sorted((j for j in self.scans.values() if j.done), key=lambda j: j.created)
        while len(self.scans) >= MAX_SCANS and finished:
            del self.scans[finished.pop(0).id]


_registry_lock = threading.Lock()


def scans_of(request: Request) -> FootageScans:
    with _registry_lock:
        registry: FootageScans | None = getattr(request.app.state, "footage_scans", None)
        if registry is None:
            registry = request.app.state.footage_scans = FootageScans()
        return registry


def clock_time(seconds: float) -> str:
    """A time in the footage as a player shows it: ``1:02.4``."""
    minutes, rest = divmod(max(0.0, seconds), 60)
    return f"{int(minutes)}:{rest:04.1f}"
