"""The anchor: an append-only file outside the database that remembers the audit chain's heads.

Someone who can rewrite the audit tables can recompute every hash and delete every checkpoint; they
cannot reach back into a file on another path (ideally another host or mount) that already holds
the heads. Each line is one JSON object::

    {"seq": 120, "hash": "<sha256 hex>", "key_id": "<16 hex>", "signature": "<base64>",
     "time": "2026-12-01T11:00:00.000000+00:00"}

Signed lines are checkpoints (the same signature as in ``audit_checkpoints``) and are fsynced.
Unsigned lines (``key_id`` and ``signature`` null) are the head after each committed transaction
that wrote audit records: they cost one ``write(2)`` (9-25 µs measured) and no fsync, and are what
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


#: Bytes of each anchored head kept in memory by :meth:`AnchorFile.read` (16 MB per million
#: records); a forgery matching 128 bits of a sha256 is out of reach.
PREFIX = 16


@dataclass
class AnchorState:
    """What :meth:`AnchorFile.read` keeps of a file that may hold a line per transaction.

    ``heads`` holds, at ``seq * PREFIX``, the first bytes of every anchored head's hash (zeros
    where the anchor names no head for that seq), so every record can be compared while the
    chain streams past; ``signed`` keeps the checkpoint lines whole.
    """

    exists: bool
    lines: int = 0
    latest: AnchorEntry | None = None
    signed: list[AnchorEntry] = field(default_factory=list)
    malformed: str | None = None
    heads: bytearray = field(default_factory=bytearray)
    #: The first seq the anchor names with two different hashes: the database was rewritten
    #: between the two lines (a line is only written for a committed head).
    conflict: AnchorEntry | None = None

    def head(self, seq: int) -> bytes | None:
        """The anchored hash prefix for ``seq``, or None where the anchor has none."""
        part = bytes(self.heads[seq * PREFIX : (seq + 1) * PREFIX])
        return part if part and any(part) else None

    def _note(self, entry: AnchorEntry) -> None:
        prefix = bytes.fromhex(entry.hash)[:PREFIX]
        at = entry.seq * PREFIX
        if len(self.heads) < at + PREFIX:
            self.heads.extend(bytes(at + PREFIX - len(self.heads)))
        old = bytes(self.heads[at : at + PREFIX])
        if not any(old):
            self.heads[at : at + PREFIX] = prefix
        elif old != prefix and (self.conflict is None or entry.seq < self.conflict.seq):
            self.conflict = entry


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
                state._note(entry)
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
        and 0 < seq < 2**40
        and isinstance(hash_, str)
        and len(hash_) == 64
        and all(c in "0123456789abcdef" for c in hash_)
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
