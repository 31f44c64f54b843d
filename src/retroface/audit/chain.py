"""The hash chain and its verification, free of any database so an export can be checked offline.

Each record's hash covers its content *and* its ``seq`` and ``prev_hash``: editing, removing,
inserting or reordering a record breaks the chain at that point, and signed checkpoints
(``"{seq}:{hash}"`` signed with Ed25519) pin the chain's head so that truncating the tail, or
rewriting it consistently, is detected too. Without a checkpoint covering them, the newest records
can be removed or re-written unnoticed by anyone able to write to the store: checkpoint often.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS_HASH = "0" * 64

#: The fields a record's hash covers, in the order they are documented (the JSON is key-sorted).
HASHED_FIELDS = (
    "seq",
    "ts",
    "actor",
    "action",
    "case_ref",
    "object_type",
    "object_id",
    "justification",
    "details",
    "prev_hash",
)


def canonical_json(value: Any) -> str:
    """One byte-exact serialisation, so a hash can be recomputed anywhere (NaN is not JSON)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def format_ts(ts: datetime) -> str:
    """UTC, fixed precision: the hashed text must not depend on the backend's round trip."""
    if ts.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def record_hash(fields: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of the hashed fields; ``ts`` is an ISO string here."""
    return hashlib.sha256(
        canonical_json({k: fields[k] for k in HASHED_FIELDS}).encode()
    ).hexdigest()


def checkpoint_message(seq: int, hash_: str) -> bytes:
    return f"{seq}:{hash_}".encode()


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a key: the first 16 hex digits of sha256 of its raw bytes."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class CheckpointView:
    """A checkpoint as the verifier sees it, whether it came from the database or an export."""

    id: int
    seq: int
    hash: str
    signature: str
    key_id: str

    def signature_valid(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(
                base64.b64decode(self.signature, validate=True),
                checkpoint_message(self.seq, self.hash),
            )
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking the chain; ``checked`` counts the records read before stopping.

    ``first_bad_seq`` is the lowest ``seq`` from which the log can no longer be trusted (for a bad
    checkpoint, the checkpoint's ``seq``); ``problem`` says what was found, naming that ``seq``.
    ``head_hash`` is the hash of the last record checked: compare it with a copy kept elsewhere.
    ``signed_through`` is the newest ``seq`` vouched for by a valid checkpoint; records after it
    are chained, and only the anchor (``anchored_through``: the newest ``seq`` whose head the
    anchor file holds) tells if some were removed or appended around the application.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    checkpoints_verified: int = 0
    head_hash: str | None = None
    signed_through: int = 0
    anchored_through: int = 0


class ChainBreak(Exception):
    """Raised (also by a record source, e.g. a malformed export line) to stop at ``seq``."""

    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


def verify_chain(
    records: Iterable[Mapping[str, Any]],
    checkpoints: Sequence[CheckpointView],
    public_keys: Mapping[str, Ed25519PublicKey],
) -> VerifyResult:
    """Check records (each a mapping with the hashed fields plus ``hash``, in ``seq`` order).

    Checks run in ``seq`` order and stop at the first failure, so the reported ``seq`` is the
    earliest break; later damage is not described (it cannot be told apart from the first).
    Read the checkpoints *before* the records when the log may be growing, so that every
    checkpoint refers to a record that is already visible.
    """
    by_seq: dict[int, list[CheckpointView]] = {}
    for cp in sorted(checkpoints, key=lambda c: (c.seq, c.id)):
        by_seq.setdefault(cp.seq, []).append(cp)
    checked = 0
    cps_ok = 0
    hashes: dict[int, str] = {0: GENESIS_HASH}  # only the last two are kept
    last_trusted_cp = 0  # seq of the newest checkpoint confirmed so far
    expected = 1
    try:
        for rec in records:
            seq = rec["seq"]
            _check_record(rec, expected, hashes)
            hashes[seq] = rec["hash"]
            hashes.pop(seq - 2, None)
            for cp in by_seq.pop(seq, []):
                _check_checkpoint(cp, rec["hash"], public_keys, last_trusted_cp)
                cps_ok += 1
                last_trusted_cp = seq
            checked += 1
            expected = seq + 1
        last = expected - 1
        if by_seq:
            first_missing = min(by_seq)
            cp = by_seq[first_missing][0]
            if first_missing > last:
                raise ChainBreak(
                    last + 1,
                    f"the log ends at seq {last} but checkpoint #{cp.id} vouches for seq "
                    f"{cp.seq}: records {last + 1}..{cp.seq} were removed (truncation)",
                )
            raise ChainBreak(
                first_missing, f"checkpoint #{cp.id} refers to missing seq {first_missing}"
            )
    except ChainBreak as fail:
        return VerifyResult(
            ok=False,
            checked=checked,
            first_bad_seq=fail.seq,
            problem=fail.problem,
            checkpoints_verified=cps_ok,
            head_hash=hashes.get(expected - 1) if expected > 1 else None,
            signed_through=last_trusted_cp,
        )
    return VerifyResult(
        ok=True,
        checked=checked,
        checkpoints_verified=cps_ok,
        head_hash=hashes.get(last) if last else None,
        signed_through=last_trusted_cp,
    )


def _check_record(rec: Mapping[str, Any], expected: int, hashes: Mapping[int, str]) -> None:
    seq = rec["seq"]
    if seq != expected:
        if seq < expected:
            raise ChainBreak(
                seq, f"record {seq} is out of order or duplicated (expected seq {expected})"
            )
        gap = (
            f"record {expected} is" if seq == expected + 1 else f"records {expected}..{seq - 1} are"
        )
        where = (
            f"starts at seq {seq}" if expected == 1 else f"jumps from seq {expected - 1} to {seq}"
        )
        raise ChainBreak(expected, f"{gap} missing: the log {where}")
    if record_hash(rec) != rec["hash"]:
        raise ChainBreak(*_diagnose_mismatch(rec, hashes))
    if rec["prev_hash"] != hashes[seq - 1]:
        raise ChainBreak(
            seq,
            f"record {seq} does not follow record {seq - 1} (prev_hash mismatch): a record was "
            f"inserted, removed or reordered at seq {seq}, or record {seq - 1} was re-hashed",
        )


def _diagnose_mismatch(rec: Mapping[str, Any], hashes: Mapping[int, str]) -> tuple[int, str]:
    """Tell a renumbered record (an insertion or removal before it) from an edited one."""
    seq = rec["seq"]
    if record_hash({**rec, "seq": seq - 1}) == rec["hash"] and rec["prev_hash"] == hashes.get(
        seq - 2
    ):
        return seq - 1, (
            f"record {seq - 1} was inserted or rewritten: record {seq} is the original record "
            f"{seq - 1}, renumbered"
        )
    if record_hash({**rec, "seq": seq + 1}) == rec["hash"]:
        return seq, (
            f"record {seq} was removed or records were reordered: record {seq} holds the "
            f"original record {seq + 1}"
        )
    return seq, f"record {seq} was altered: its contents do not match its hash"


def _check_checkpoint(
    cp: CheckpointView,
    record_hash_: str,
    public_keys: Mapping[str, Ed25519PublicKey],
    last_trusted_cp: int,
) -> None:
    key = public_keys.get(cp.key_id)
    if key is None:
        raise ChainBreak(
            cp.seq,
            f"checkpoint #{cp.id} at seq {cp.seq} is signed by unknown key {cp.key_id!r}",
        )
    if not cp.signature_valid(key):
        raise ChainBreak(cp.seq, f"checkpoint #{cp.id} at seq {cp.seq} has an invalid signature")
    if cp.hash != record_hash_:
        raise ChainBreak(
            last_trusted_cp + 1,
            f"record {cp.seq} does not match signed checkpoint #{cp.id}: the log was rewritten "
            f"somewhere in seq {last_trusted_cp + 1}..{cp.seq}",
        )
