"""The anchor: an append-only file outside the database that remembers the audit chain's heads.

Someone who can rewrite the audit tables can recompute every hash and delete every checkpoint; they
cannot reach back into a file on another path (ideally another host or mount) that already holds
the heads. Each line is one JSON object::

    {"seq": 120, "hash": "<sha256 hex>", "key_id": "<16 hex>", "signature": "<base64>",
     "time": "2026-12-01T11:00:00.000000+00:00"}

Signed lines are checkpoints (the same signature as in ``audit_checkpoints``) and are fsynced.
Unsigned lines (``key_id`` and ``signature`` null) are the head after each committed transaction
that wrote audit records: they cost one ``write(2)`` (~7 µs measured) and no fsync, and are what
lets ``verify`` notice a cut or a forged append in the unsigned tail. Lines are written only
*after* the database commit, so a line never names a head the database does not hold; a crash
between commit and write loses a line, which the next commit's line covers.

The file is opened ``O_APPEND`` (one ``write`` per commit, so concurrent processes never
interleave within a line), created 0600 in a 0700 folder. Optionally each signed line is also
sent to syslog (``/dev/log``), a second copy the database host's root may not be able to rewrite
(remote journald or syslog forwarding).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retroface.audit.chain import CheckpointView, canonical_json

log = logging.getLogger(__name__)
SYSLOG_SOCKET = Path("/dev/log")


@dataclass(frozen=True)
class AnchorEntry:
    """One line of the anchor; ``line`` is its 1-based line number, for messages."""

    seq: int
    hash: str
    key_id: str | None
    signature: str | None
    time: str
    line: int = 0

    @property
    def signed(self) -> bool:
        return self.signature is not None

    def as_checkpoint(self) -> CheckpointView:
        return CheckpointView(
            id=self.line, seq=self.seq, hash=self.hash, signature=self.signature or "",
            key_id=self.key_id or "",
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "key_id": self.key_id,
            "signature": self.signature,
            "time": self.time,
        }


@dataclass
class AnchorState:
    """What :meth:`AnchorFile.read` keeps of a file that may hold a line per transaction.

    Only the newest head and the signed lines are kept (one per checkpoint): the hash chain
    makes the newest head vouch for every record before it.
    """

    exists: bool
    lines: int = 0
    latest: AnchorEntry | None = None
    signed: list[AnchorEntry] = field(default_factory=list)
    malformed: str | None = None


class AnchorFile:
    """Append heads to, and read them back from, one JSON-lines file."""

    def __init__(self, path: Path, *, syslog: bool = False) -> None:
        self.path = path
        self._syslog = _syslog_logger() if syslog else None
        self._folder_made = False

    def append(self, entries: Iterable[AnchorEntry]) -> None:
        """One ``write`` for all entries; fsync when any is a signed checkpoint."""
        batch = list(entries)
        if not batch:
            return
        data = "".join(canonical_json(e.to_json()) + "\n" for e in batch).encode()
        if not self._folder_made:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._folder_made = True
        # Opened per append, not held: a deleted or moved anchor must not swallow lines.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            if any(e.signed for e in batch):
                os.fsync(fd)
        finally:
            os.close(fd)
        if self._syslog is not None:
            for e in batch:
                if e.signed:
                    self._syslog.info("retroface-audit-anchor %s", canonical_json(e.to_json()))

    def close(self) -> None:
        """Close the syslog socket, if any (the file is never held open)."""
        if self._syslog is not None:
            for handler in self._syslog.handlers:
                handler.close()

    def read(self) -> AnchorState:
        """Stream the file; stop at the first malformed line (a torn or edited anchor)."""
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return AnchorState(exists=False)
        state = AnchorState(exists=True)
        with f:
            for n, raw in enumerate(f, start=1):
                state.lines = n
                entry = _parse(raw, n)
                if entry is None:
                    state.malformed = f"line {n} of the anchor {self.path} is not a valid entry"
                    return state
                if state.latest is None or entry.seq >= state.latest.seq:
                    state.latest = entry
                if entry.signed:
                    state.signed.append(entry)
        return state


def _parse(raw: bytes, line: int) -> AnchorEntry | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, Mapping):
        return None
    seq, hash_, key_id, sig, time = (
        obj.get(k) for k in ("seq", "hash", "key_id", "signature", "time")
    )
    if not (
        isinstance(seq, int)
        and seq > 0
        and isinstance(hash_, str)
        and isinstance(time, str)
        and (key_id is None) == (sig is None)
        and all(v is None or isinstance(v, str) for v in (key_id, sig))
    ):
        return None
    return AnchorEntry(seq=seq, hash=hash_, key_id=key_id, signature=sig, time=time, line=line)


def _syslog_logger() -> logging.Logger | None:
    """A private logger (not in logging's registry, so no configuration can divert it) to the
    local syslog socket, or None (with a warning) where there is none."""
    if not SYSLOG_SOCKET.exists():
        log.warning("audit anchor: %s not found, syslog copy disabled", SYSLOG_SOCKET)
        return None
    logger = logging.Logger("retroface.audit.anchor", logging.INFO)
    logger.propagate = False
    logger.addHandler(
        logging.handlers.SysLogHandler(
            address=str(SYSLOG_SOCKET), facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
        )
    )
    return logger
