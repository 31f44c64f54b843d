"""The tamper-evident audit log (UK DPA 2018 s62 logging; EU AI Act Art 12 record-keeping).

Records are appended in the *caller's* session, so a record commits or rolls back with the action
it describes: there is never an action without its record, nor a record of an action that did not
happen. Each record is hash-chained to the previous one and the head is periodically signed (see
:mod:`retroface.audit.chain`); :meth:`AuditLog.verify` and :func:`verify_export` find the first
record that was edited, removed, inserted, reordered or truncated away.

Writers are serialised so two of them never take the same ``seq``: on PostgreSQL with a
transaction-level advisory lock taken before the last record is read; on SQLite by taking the
database write lock first (an empty UPDATE), which SQLite grants to one transaction at a time.
Any other backend relies on ``seq`` being the primary key: a concurrent writer fails with an
integrity error rather than forking the chain.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from retroface.audit import export as export_format
from retroface.audit.chain import (
    GENESIS_HASH,
    CheckpointView,
    VerifyResult,
    canonical_json,
    checkpoint_message,
    format_ts,
    key_id_of,
    record_hash,
    verify_chain,
)
from retroface.audit.keys import load_or_create_signing_key, load_public_keys, public_pem
from retroface.core.errors import ConflictError, InvalidInputError
from retroface.storage.db import Database
from retroface.storage.tables import AuditCheckpoint, AuditRecord

log = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock that serialises audit writers ("rfaudit1" in ASCII).
PG_LOCK_KEY = 0x7266_6175_6469_7431
DEFAULT_CHECKPOINT_EVERY = 100
_LIMITS = {"actor": 100, "action": 60, "case_ref": 100, "object_type": 60, "object_id": 200}
_TABLE = AuditRecord.__table__


class AuditLog:
    """Append, checkpoint, verify and export the audit trail.

    ``checkpoint_every``: sign the head automatically every N records (0 disables).
    ``trusted_public_keys``: PEM of retired signing keys whose checkpoints should still verify
    after a key rotation.
    """

    def __init__(
        self,
        db: Database,
        signing_key_path: Path,
        *,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        trusted_public_keys: Iterable[str | bytes] = (),
    ) -> None:
        if checkpoint_every < 0:
            raise InvalidInputError("checkpoint_every must be 0 (off) or a positive number")
        self.db = db
        self.signing_key_path = signing_key_path
        self.checkpoint_every = checkpoint_every
        self._trusted_pems = list(trusted_public_keys)

    # ------------------------------------------------------------------ keys

    @cached_property
    def _private_key(self) -> Ed25519PrivateKey:
        """Loaded (or created) on first use, so merely constructing the log touches no file."""
        return load_or_create_signing_key(self.signing_key_path)

    @property
    def key_id(self) -> str:
        return key_id_of(self._private_key.public_key())

    def public_key_pem(self) -> str:
        return public_pem(self._private_key.public_key())

    def _public_keys(self) -> dict[str, Ed25519PublicKey]:
        keys = [self._private_key.public_key()]
        for pem in self._trusted_pems:
            keys.extend(load_public_keys(pem))
        return {key_id_of(k): k for k in keys}

    # ------------------------------------------------------------------ writing

    def record(
        self,
        session: Session,
        *,
        actor: str,
        action: str,
        case_ref: str | None = None,
        object_type: str | None = None,
        object_id: str | int | None = None,
        justification: str | None = None,
        details: Mapping[str, Any] | None = None,
        ts: datetime | None = None,
    ) -> AuditRecord:
        """Append one record in ``session``'s transaction (flushed, not committed)."""
        ts = datetime.now(UTC) if ts is None else ts
        if ts.tzinfo is None:
            raise InvalidInputError("audit timestamps must be timezone-aware")
        fields: dict[str, Any] = {
            "actor": actor,
            "action": action,
            "case_ref": case_ref,
            "object_type": object_type,
            "object_id": None if object_id is None else str(object_id),
            "justification": justification,
        }
        _check_lengths(fields)
        fields["details"] = _normalise_details(details)
        self._serialise_writers(session)
        last = session.execute(
            select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
        ).first()
        fields["seq"] = last.seq + 1 if last else 1
        fields["prev_hash"] = last.hash if last else GENESIS_HASH
        fields["ts"] = format_ts(ts)
        digest = record_hash(fields)
        rec = AuditRecord(**{**fields, "ts": ts.astimezone(UTC)}, hash=digest)
        session.add(rec)
        session.flush()  # a duplicate seq fails here, inside the caller's transaction
        if self.checkpoint_every and rec.seq % self.checkpoint_every == 0:
            self._sign(session, rec.seq, digest)
        return rec

    def _serialise_writers(self, session: Session) -> None:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        elif dialect == "sqlite":
            # Any write takes SQLite's database lock until commit; this one changes nothing.
            session.execute(text("UPDATE audit_records SET seq = seq WHERE seq < 0"))

    def checkpoint(self, session: Session) -> AuditCheckpoint:
        """Sign the current head; returns the existing checkpoint if the head is already signed."""
        head = session.execute(
            select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
        ).first()
        if head is None:
            raise ConflictError("the audit log is empty: there is nothing to checkpoint")
        existing = session.scalars(
            select(AuditCheckpoint)
            .where(AuditCheckpoint.seq == head.seq)
            .where(AuditCheckpoint.hash == head.hash)
            .where(AuditCheckpoint.key_id == self.key_id)
            .limit(1)
        ).first()
        return existing or self._sign(session, head.seq, head.hash)

    def _sign(self, session: Session, seq: int, digest: str) -> AuditCheckpoint:
        signature = self._private_key.sign(checkpoint_message(seq, digest))
        cp = AuditCheckpoint(
            seq=seq,
            hash=digest,
            signature=base64.b64encode(signature).decode(),
            key_id=self.key_id,
            created_at=datetime.now(UTC),
        )
        session.add(cp)
        session.flush()
        log.debug("audit checkpoint at seq %d signed by key %s", seq, cp.key_id)
        return cp

    # ------------------------------------------------------------------ checking

    def verify(self, session: Session | None = None) -> VerifyResult:
        """Check the whole chain and every checkpoint; ``session`` also sees its own unflushed
        work, without it a fresh read-only session is used."""
        if session is not None:
            return self._verify(session)
        with self.db.session() as s:
            return self._verify(s)

    def _verify(self, session: Session) -> VerifyResult:
        # Checkpoints first: a record is committed no later than the checkpoint that covers it,
        # so every checkpoint read here refers to a record the second query can see.
        checkpoints = _checkpoint_views(session)
        return verify_chain(_record_fields(session), checkpoints, self._public_keys())

    # ------------------------------------------------------------------ export

    def export(self, path: Path) -> dict[str, Any]:
        """Write an export folder (see :mod:`retroface.audit.export`) covering the log up to now.

        The head is checkpointed first, so the export is signed up to its last record; returns
        the manifest plus ``path``.
        """
        export_format.prepare_folder(path)
        with self.db.session() as s:
            head = self.checkpoint(s) if _head_seq(s) else None
            last = head.seq if head else 0
            checkpoints = [c for c in _checkpoint_views(s) if c.seq <= last]
            keys = self._public_keys()
            bundle = "".join(public_pem(k) for k in keys.values())
            manifest = export_format.write_export(
                path,
                _record_fields(s, up_to=last),
                checkpoints,
                keys.values(),
                bundle,
                exported_at=format_ts(datetime.now(UTC)),
            )
        return {**manifest, "path": str(path)}

    def verify_export(self, path: Path) -> VerifyResult:
        """Check an export against *this* log's keys (pinned), not the keys bundled with it."""
        pems = [self.public_key_pem(), *(_as_str(p) for p in self._trusted_pems)]
        return export_format.verify_export(path, public_keys="".join(pems))


def verify_export(path: Path, public_keys: str | bytes | None = None) -> VerifyResult:
    """Offline check of an export folder; no database needed (see :mod:`.export`)."""
    return export_format.verify_export(path, public_keys)


# ---------------------------------------------------------------------- helpers


def _check_lengths(fields: Mapping[str, str | None]) -> None:
    """Enforce the column limits here so SQLite (which ignores them) behaves like PostgreSQL."""
    for name in ("actor", "action"):
        if not fields[name]:
            raise InvalidInputError(f"audit {name} must not be empty")
    for name, limit in _LIMITS.items():
        value = fields[name]
        if value is not None and len(value) > limit:
            raise InvalidInputError(f"audit {name} is longer than {limit} characters")


def _normalise_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Round-trip through canonical JSON so what is stored is exactly what was hashed."""
    try:
        normal = json.loads(canonical_json(dict(details or {})))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"audit details must be plain JSON data: {exc}") from None
    return dict(normal)


def _head_seq(session: Session) -> int | None:
    return session.scalar(select(AuditRecord.seq).order_by(AuditRecord.seq.desc()).limit(1))


def _checkpoint_views(session: Session) -> list[CheckpointView]:
    return [
        CheckpointView(id=c.id, seq=c.seq, hash=c.hash, signature=c.signature, key_id=c.key_id)
        for c in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id))
    ]


def _record_fields(session: Session, up_to: int | None = None) -> Iterator[dict[str, Any]]:
    """Stream rows as plain mappings (no ORM identity map), ``ts`` as its hashed text."""
    stmt = select(_TABLE).order_by(_TABLE.c.seq)
    if up_to is not None:
        stmt = stmt.where(_TABLE.c.seq <= up_to)
    for row in session.execute(stmt.execution_options(yield_per=1000)).mappings():
        yield {**row, "ts": format_ts(row["ts"])}


def _as_str(pem: str | bytes) -> str:
    return pem.decode() if isinstance(pem, bytes) else pem
