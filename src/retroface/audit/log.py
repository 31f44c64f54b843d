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
import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session, SessionTransaction

from retroface.audit import export as export_format
from retroface.audit.anchor import PREFIX, AnchorEntry, AnchorFile, AnchorState
from retroface.audit.chain import (
    GENESIS_HASH,
    ChainBreak,
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
from retroface.core.access import Principal
from retroface.core.clock import Clock, utcnow
from retroface.core.errors import ConflictError, InvalidInputError
from retroface.storage.db import Database
from retroface.storage.tables import AuditCheckpoint, AuditRecord

log = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock that serialises audit writers ("rfaudit1" in ASCII).
PG_LOCK_KEY = 0x7266_6175_6469_7431
#: Sign the head every N records: also the most records ``verify`` accepts after the last
#: checkpoint. Signing + fsync of the anchor line cost ~1 ms, so 50 adds ~20 µs per record.
DEFAULT_CHECKPOINT_EVERY = 50
#: ... and when a record comes more than T minutes after the last checkpoint (a quiet log's
#: newest records are not left unsigned for days).
DEFAULT_CHECKPOINT_MINUTES = 5.0
#: The details key naming the credential (token or session) an action was taken with ("via"
#: already says which front end an oversight report went through).
CREDENTIAL = "credential"
_LIMITS = {"actor": 100, "action": 60, "case_ref": 100, "object_type": 60, "object_id": 200}
_TABLE = AuditRecord.__table__


@dataclass
class _Pending:
    """What one transaction owes the anchor once (and only if) it commits."""

    owner: AuditLog
    head: tuple[int, str] | None = None
    checkpoints: list[AnchorEntry] = field(default_factory=list)
    signed_at: datetime | None = None


#: ``Session.info`` key: {id(AuditLog): _Pending} for the transaction in progress.
_PENDING = "retroface.audit.pending"


# One listener for every session, registered once: per-session ``event.listen`` cost ~44 µs
# each (measured), this costs a dict lookup per commit.
@event.listens_for(Session, "after_commit")
def _pay_anchor_debts(session: Session) -> None:
    for pending in session.info.pop(_PENDING, {}).values():
        pending.owner._anchor_committed(pending)


@event.listens_for(Session, "after_transaction_end")
def _forget_anchor_debts(session: Session, transaction: SessionTransaction) -> None:
    """A rolled-back transaction owes nothing (its records are gone). Savepoints are not
    tracked: the audit log is not written inside one."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


class AuditLog:
    """Append, checkpoint, anchor, verify and export the audit trail.

    ``checkpoint_every``: sign the head every N records (at least 1), and ``checkpoint_minutes``
    after the last checkpoint (0: no time trigger); ``verify`` refuses more than N unsigned
    records. ``anchor_path``: the append-only file outside the database that receives every
    signed checkpoint and, with ``anchor_heads``, the head after every committed transaction
    (see :mod:`retroface.audit.anchor`); None keeps no anchor (then only an earlier export can
    prove the history). ``trusted_public_keys``: PEM of retired signing keys whose checkpoints
    should still verify after a key rotation.
    """

    def __init__(
        self,
        db: Database,
        signing_key_path: Path,
        *,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES,
        anchor_path: Path | None = None,
        anchor_heads: bool = True,
        anchor_syslog: bool = False,
        trusted_public_keys: Iterable[str | bytes] = (),
        clock: Clock = utcnow,
    ) -> None:
        if checkpoint_every < 1:
            raise InvalidInputError(
                "checkpoint_every must be a positive number: signed checkpoints are mandatory"
            )
        if checkpoint_minutes < 0:
            raise InvalidInputError("checkpoint_minutes must be 0 (no time trigger) or positive")
        self.db = db
        self.signing_key_path = signing_key_path
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = timedelta(minutes=checkpoint_minutes)
        self.anchor = AnchorFile(anchor_path, syslog=anchor_syslog) if anchor_path else None
        self.anchor_heads = anchor_heads
        self.clock = clock
        self._trusted_pems = list(trusted_public_keys)
        self._signed_at: datetime | None = None  # time of the newest checkpoint, once known

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

    def _pinned_pem(self) -> str:
        return "".join([self.public_key_pem(), *(_as_str(p) for p in self._trusted_pems)])

    # ------------------------------------------------------------------ writing

    def record(
        self,
        session: Session,
        *,
        actor: str | Principal,
        action: str,
        case_ref: str | None = None,
        object_type: str | None = None,
        object_id: str | int | None = None,
        justification: str | None = None,
        details: Mapping[str, Any] | None = None,
        ts: datetime | None = None,
    ) -> AuditRecord:
        """Append one record in ``session``'s transaction (flushed, not committed).

        For a :class:`Principal` the actor is its username, and the credential it used goes
        into the details under ``credential`` (covered by the chain hash like any detail).
        """
        if isinstance(actor, Principal):
            if actor.credential is not None:
                details = {**(details or {}), CREDENTIAL: actor.credential}
            actor = actor.username
        ts = self.clock() if ts is None else ts
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
        pending = self._pending(session)
        if rec.seq % self.checkpoint_every == 0 or self._time_due(session, pending, ts):
            self._sign(session, rec.seq, digest)
        pending.head = (rec.seq, digest)
        return rec

    def _time_due(self, session: Session, pending: _Pending, ts: datetime) -> bool:
        """True when ``ts`` is more than the interval after the newest checkpoint.

        The newest checkpoint's time is read once per AuditLog (then kept up to date at each
        commit that signs); with none yet, the first record's time stands in for it.
        """
        if not self.checkpoint_interval:
            return False
        since = pending.signed_at or self._signed_at
        if since is None:
            since = session.scalar(select(func.max(AuditCheckpoint.created_at))) or session.scalar(
                select(AuditRecord.ts).order_by(AuditRecord.seq).limit(1)
            )
            self._signed_at = since
        return since is not None and ts - since > self.checkpoint_interval

    def _serialise_writers(self, session: Session) -> None:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        elif dialect == "sqlite":
            # Any write takes SQLite's database lock until commit; this one changes nothing.
            session.execute(text("UPDATE audit_records SET seq = seq WHERE seq < 0"))

    def checkpoint(self, session: Session) -> AuditCheckpoint:
        """Sign the current head (reusing a checkpoint that already signs it) and anchor it."""
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
        if existing is None:
            return self._sign(session, head.seq, head.hash)
        # Anchored again: harmless if it already was, and it starts an anchor that is new
        # (first run after an upgrade, or a new anchor path).
        self._pending(session).checkpoints.append(_anchor_entry(existing, self.clock()))
        return existing

    def _sign(self, session: Session, seq: int, digest: str) -> AuditCheckpoint:
        signature = self._private_key.sign(checkpoint_message(seq, digest))
        now = self.clock()
        cp = AuditCheckpoint(
            seq=seq,
            hash=digest,
            signature=base64.b64encode(signature).decode(),
            key_id=self.key_id,
            created_at=now,
        )
        session.add(cp)
        session.flush()
        pending = self._pending(session)
        pending.checkpoints.append(_anchor_entry(cp, now))
        pending.signed_at = now
        log.debug("audit checkpoint at seq %d signed by key %s", seq, cp.key_id)
        return cp

    # ------------------------------------------------------------------ the anchor

    def _pending(self, session: Session) -> _Pending:
        """This transaction's debt to the anchor, paid by :func:`_pay_anchor_debts` on commit."""
        debts = session.info.setdefault(_PENDING, {})
        pending = debts.get(id(self))
        if pending is None:
            pending = debts[id(self)] = _Pending(self)
        assert isinstance(pending, _Pending)
        return pending

    def _anchor_committed(self, pending: _Pending) -> None:
        """Written after the commit, never before: an anchored head is always in the database.

        A failure here is logged, not raised: the action is committed already, and the next
        commit's line covers this head.
        """
        if pending.signed_at is not None:
            self._signed_at = pending.signed_at
        if self.anchor is None:
            return
        entries = list(pending.checkpoints)
        if self.anchor_heads and pending.head is not None:
            head_seq, head_hash = pending.head
            if not any(e.seq == head_seq for e in entries):
                entries.append(
                    AnchorEntry(head_seq, head_hash, None, None, format_ts(self.clock()))
                )
        try:
            self.anchor.append(sorted(entries, key=lambda e: e.seq))
        except OSError:
            log.exception("audit anchor %s could not be written", self.anchor.path)

    # ------------------------------------------------------------------ checking

    def verify(
        self, session: Session | None = None, *, against: Path | None = None
    ) -> VerifyResult:
        """Check the chain, every checkpoint, the anchor and, with ``against``, an earlier export.

        ``session`` also sees its own unflushed work; without it a fresh session is used.
        ``against``: the folder of an export kept since: the log must still hold its records,
        unchanged, and the checkpoint that signed it.
        """
        if session is not None:
            return self._verify(session, against)
        with self.db.session() as s:
            return self._verify(s, against)

    def _verify(self, session: Session, against: Path | None) -> VerifyResult:
        # Order matters while others write. The anchor first: a line is written after its
        # commit, so each head it names is visible to the queries below. Then the head seq,
        # then the checkpoints: a checkpoint is committed with the record it signs, so those up
        # to the head are all visible; later ones (written meanwhile) are checked by lookup.
        anchor = self.anchor.read() if self.anchor else None
        head = _head_seq(session) or 0
        checkpoints = _checkpoint_views(session)
        keys = self._public_keys()
        prior = None
        if against is not None:
            opened = export_format.PriorExport.open(against, self._pinned_pem())
            if isinstance(opened, VerifyResult):
                return opened
            prior = opened
        records: Iterator[Mapping[str, Any]] = _record_fields(session, up_to=head)
        if prior is not None:  # asked for explicitly: its finding comes first
            records = prior.compare(records)
        if anchor is not None and anchor.exists and self.anchor is not None:
            records = _compare_with_anchor(records, anchor, self.anchor.path)
        within = [c for c in checkpoints if c.seq <= head]
        result = verify_chain(records, within, keys)
        if not result.ok:
            return result
        later = [c for c in checkpoints if c.seq > head]
        problem = (
            _check_later_checkpoints(session, later, keys, head)
            or (prior.check_end(result, checkpoints) if prior else None)
            or (self._check_anchor(anchor, result, checkpoints, keys) if anchor else None)
            or self._check_bound(result)
        )
        if problem is not None:
            return _fail(result, *problem)
        anchored = anchor.latest.seq if anchor and anchor.latest else 0
        if anchor is not None and anchor.exists and self.anchor_heads:
            anchored = max(anchored, result.checked)  # _check_anchor found the tail anchored
        return dataclasses.replace(result, anchored_through=anchored)

    def _check_anchor(
        self,
        anchor: AnchorState,
        result: VerifyResult,
        checkpoints: list[CheckpointView],
        keys: Mapping[str, Ed25519PublicKey],
    ) -> tuple[int | None, str] | None:
        assert self.anchor is not None
        where = self.anchor.path
        last = result.checked
        if not anchor.exists:
            # Looked at again: the first checkpoint may have committed after the anchor read.
            if checkpoints and not self.anchor.path.exists():
                return None, (
                    f"the anchor {where} is missing although the database holds signed "
                    "checkpoints: it was deleted, or RETROFACE_AUDIT_ANCHOR points elsewhere"
                )
            return None
        if anchor.malformed:
            return None, f"{anchor.malformed}: the anchor was edited or torn"
        for e in anchor.signed:
            key = keys.get(e.key_id or "")
            if key is None or not e.as_checkpoint().signature_valid(key):
                return e.seq, (
                    f"line {e.line} of the anchor {where} (seq {e.seq}) has an invalid "
                    f"signature or unknown key {e.key_id!r}: the anchor was edited"
                )
        latest = anchor.latest
        if latest is None:
            raced = self._reread_tail(result) >= last if self.anchor_heads else False
            if (checkpoints or (self.anchor_heads and last)) and not raced:
                return 1 if last else None, (
                    f"the anchor {where} is empty although the log holds {last} records and "
                    f"{len(checkpoints)} checkpoints: it was emptied"
                )
            return None
        if last == 0:
            return 1, (
                f"the log is empty but the anchor {where} lists heads up to seq {latest.seq}: "
                "the log was wiped"
            )
        if latest.seq > last:
            return last + 1, (
                f"the log ends at seq {last} but the anchor {where} (line {latest.line}) vouches "
                f"for seq {latest.seq}: records {last + 1}..{latest.seq} were removed"
            )
        if anchor.conflict is not None:
            c = anchor.conflict
            return c.seq, (
                f"the anchor {where} names two different heads for seq {c.seq} (line {c.line}): "
                "records were removed and written again"
            )
        in_db = {(c.seq, c.hash, c.signature) for c in checkpoints}
        for e in anchor.signed:
            if (e.seq, e.hash, e.signature) not in in_db:
                return e.seq, (
                    f"the checkpoint at seq {e.seq} (line {e.line} of the anchor {where}) is "
                    "missing from the database: it was deleted"
                )
        if self.anchor_heads and last > latest.seq and self._reread_tail(result) < last:
            return latest.seq + 1, (
                f"records {latest.seq + 1}..{last} are not in the anchor {where}: they were "
                "added outside the application (forged), or by a process using another anchor, "
                "or that process stopped between its commit and the anchor write (the next "
                "record written covers them)"
            )
        return None

    def _reread_tail(self, result: VerifyResult) -> int:
        """The anchored seq the verified head reaches now (0 if none): a writer may have
        committed between the anchor read and the head read, and anchors right after."""
        if self.anchor is None or not result.checked:
            return 0
        # A writer that committed just before the head was read appends its line right after;
        # under load that can take a while, so look a few times (at most ~0.6 s in all) before
        # calling the newest records unanchored.
        for attempt in range(6):
            latest = self.anchor.read().latest
            if latest is not None and latest.seq >= result.checked:
                if latest.seq == result.checked and latest.hash != result.head_hash:
                    return 0
                return result.checked
            time.sleep(0.02 * 2**attempt)
        return 0

    def _check_bound(self, result: VerifyResult) -> tuple[int | None, str] | None:
        unsigned = result.checked - result.signed_through
        if unsigned <= self.checkpoint_every:
            return None
        first = result.signed_through + 1
        return first, (
            f"records {first}..{result.checked} follow the last signed checkpoint (seq "
            f"{result.signed_through}) by more than {self.checkpoint_every}: checkpoints were "
            "deleted, or records were written around the application"
        )

    # ------------------------------------------------------------------ export

    def export(self, path: Path) -> dict[str, Any]:
        """Write an export folder (see :mod:`retroface.audit.export`) covering the log up to now.

        The head is checkpointed (and anchored) first, so the export is signed up to its last
        record; returns the manifest plus ``path``.
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
                exported_at=format_ts(self.clock()),
            )
        return {**manifest, "path": str(path)}

    def verify_export(self, path: Path) -> VerifyResult:
        """Check an export against *this* log's keys (pinned), not the keys bundled with it."""
        return export_format.verify_export(path, public_keys=self._pinned_pem())


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


def _anchor_entry(cp: AuditCheckpoint, now: datetime) -> AnchorEntry:
    return AnchorEntry(cp.seq, cp.hash, cp.key_id, cp.signature, format_ts(now))


def _compare_with_anchor(
    records: Iterable[Mapping[str, Any]], anchor: AnchorState, path: Path
) -> Iterator[Mapping[str, Any]]:
    """Pass records through, stopping at the first whose hash is not the head anchored for it."""
    good = 0
    for rec in records:
        seq = rec["seq"]
        anchored = anchor.head(seq)
        if anchored is not None:
            if bytes.fromhex(rec["hash"])[:PREFIX] != anchored:
                raise ChainBreak(
                    good + 1,
                    f"record {seq} is not the head the anchor {path} recorded for seq {seq}: "
                    f"the log was rewritten somewhere in seq {good + 1}..{seq}",
                )
            good = seq
        yield rec


def _check_later_checkpoints(
    session: Session,
    later: list[CheckpointView],
    keys: Mapping[str, Ed25519PublicKey],
    head: int,
) -> tuple[int | None, str] | None:
    """Checkpoints beyond the head read first: written meanwhile (fine), or left behind by a
    truncation (their record is gone or different)."""
    for cp in sorted(later, key=lambda c: c.seq):
        key = keys.get(cp.key_id)
        digest = session.scalar(select(AuditRecord.hash).where(AuditRecord.seq == cp.seq))
        if digest is None:
            return head + 1, (
                f"the log ends at seq {head} but checkpoint #{cp.id} vouches for seq {cp.seq}: "
                f"records {head + 1}..{cp.seq} were removed (truncation)"
            )
        if key is None or not cp.signature_valid(key) or digest != cp.hash:
            return cp.seq, f"checkpoint #{cp.id} at seq {cp.seq} does not sign record {cp.seq}"
    return None


def _fail(result: VerifyResult, seq: int | None, problem: str) -> VerifyResult:
    return dataclasses.replace(result, ok=False, first_bad_seq=seq, problem=problem)


def _as_str(pem: str | bytes) -> str:
    return pem.decode() if isinstance(pem, bytes) else pem
