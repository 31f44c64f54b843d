"""The audit log: chaining, checkpoints, tamper detection in the database and in exports."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert, select, text, update

from retroface.audit import AuditLog, verify_export
from retroface.audit.chain import (
    GENESIS_HASH,
    checkpoint_message,
    format_ts,
    key_id_of,
    record_hash,
)
from retroface.audit.keys import public_pem
from retroface.core.errors import ConflictError, InvalidInputError, RetrofaceError
from retroface.storage.db import Database
from retroface.storage.tables import AuditCheckpoint, AuditRecord

T = AuditRecord.__table__


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "audit_signing.pem"


@pytest.fixture
def log(db: Database, key_path: Path) -> AuditLog:
    return AuditLog(db, key_path, checkpoint_every=1000, checkpoint_minutes=0)


def fill(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with log.db.session() as s:
            log.record(
                s,
                actor=f"user{i % 3}",
                action="search.run",
                case_ref=f"CASE-{i // 4}",
                object_type="search",
                object_id=i,
                justification="lead in burglary" if i % 2 else None,
                details={"top_k": 10, "threshold": 0.36, "note": "é ü ✓", "nested": {"a": [1, 2]}},
            )


def row(db: Database, seq: int) -> dict[str, Any]:
    with db.engine.connect() as conn:
        return dict(conn.execute(select(T).where(T.c.seq == seq)).mappings().one())


def sql(db: Database, statement: Any, params: dict[str, Any] | None = None) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(statement) if isinstance(statement, str) else statement, params or {})


def renumber(db: Database, from_seq: int, delta: int) -> None:
    """Shift seq of every record >= from_seq (two steps: the primary key is checked per row)."""
    sql(db, update(T).where(T.c.seq >= from_seq).values(seq=T.c.seq + 1_000_000))
    sql(db, update(T).where(T.c.seq >= 1_000_000).values(seq=T.c.seq - 1_000_000 + delta))


def forged(seq: int, prev_hash: str, *, rehash: bool) -> dict[str, Any]:
    ts = datetime(2025, 1, 1, tzinfo=UTC)
    fields: dict[str, Any] = {
        "seq": seq,
        "ts": format_ts(ts),
        "actor": "mallory",
        "action": "search.run",
        "case_ref": None,
        "object_type": None,
        "object_id": None,
        "justification": "forged",
        "details": {},
        "prev_hash": prev_hash,
    }
    digest = record_hash(fields) if rehash else "f" * 64
    return {**fields, "ts": ts, "hash": digest}


def assert_bad(log: AuditLog, seq: int, *words: str) -> None:
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == seq, result.problem
    assert result.problem is not None
    for word in (str(seq), *words):
        assert word in result.problem, result.problem


# --------------------------------------------------------------------------- writing


def test_untouched_log_verifies(log: AuditLog) -> None:
    fill(log, 12)
    result = log.verify()
    assert result.ok and result.problem is None and result.first_bad_seq is None
    assert result.checked == 12
    assert result.signed_through == 0  # no checkpoint yet: the tail is merely chained
    with log.db.session() as s:
        cp = log.checkpoint(s)
    assert cp.seq == 12
    result = log.verify()
    assert result.ok and result.checkpoints_verified == 1 and result.signed_through == 12
    assert result.head_hash == row(log.db, 12)["hash"]


def test_empty_log_verifies_and_cannot_be_checkpointed(log: AuditLog) -> None:
    assert log.verify().ok and log.verify().checked == 0
    with pytest.raises(ConflictError), log.db.session() as s:
        log.checkpoint(s)


def test_hash_is_the_documented_canonical_json(log: AuditLog) -> None:
    """Pin the format: an independent verifier must be able to recompute it from the spec."""
    ts = datetime(2025, 3, 1, 12, 0, 0, 5, tzinfo=UTC)
    with log.db.session() as s:
        log.record(
            s, actor="alice", action="case.open", case_ref="C-1", details={"b": 1, "a": "é"}, ts=ts
        )
        log.record(s, actor="bob", action="case.authorise", case_ref="C-1")
    first, second = row(log.db, 1), row(log.db, 2)
    spec = {
        "seq": 1,
        "ts": "2025-03-01T12:00:00.000005+00:00",
        "actor": "alice",
        "action": "case.open",
        "case_ref": "C-1",
        "object_type": None,
        "object_id": None,
        "justification": None,
        "details": {"a": "é", "b": 1},
        "prev_hash": "0" * 64,
    }
    text_ = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first["hash"] == hashlib.sha256(text_.encode()).hexdigest()
    assert first["prev_hash"] == GENESIS_HASH
    assert second["prev_hash"] == first["hash"] and second["seq"] == 2


def test_record_commits_and_rolls_back_with_the_callers_transaction(log: AuditLog) -> None:
    with pytest.raises(RuntimeError), log.db.session() as s:
        log.record(s, actor="alice", action="case.open")
        raise RuntimeError("the action failed")
    assert log.verify().checked == 0
    with log.db.session() as s:
        rec = log.record(s, actor="alice", action="case.open")
    assert rec.seq == 1 and log.verify().checked == 1


def test_record_validates_its_input(log: AuditLog) -> None:
    with log.db.session() as s:
        with pytest.raises(InvalidInputError, match="timezone"):
            log.record(s, actor="a", action="x", ts=datetime(2025, 1, 1))
        with pytest.raises(InvalidInputError, match="actor"):
            log.record(s, actor="a" * 101, action="x")
        with pytest.raises(InvalidInputError, match="action"):
            log.record(s, actor="a", action="")
        with pytest.raises(InvalidInputError, match="JSON"):
            log.record(s, actor="a", action="x", details={"when": datetime.now(UTC)})
        with pytest.raises(InvalidInputError, match="JSON"):
            log.record(s, actor="a", action="x", details={"score": float("nan")})
        rec = log.record(s, actor="a", action="x", details={"pair": (1, 2)}, object_id=7)
    assert rec.details == {"pair": [1, 2]} and rec.object_id == "7"
    assert log.verify().ok


def test_automatic_checkpoint_every_n_records(db: Database, key_path: Path) -> None:
    log = AuditLog(db, key_path, checkpoint_every=5)
    fill(log, 12)
    with db.session() as s:
        seqs = s.scalars(select(AuditCheckpoint.seq).order_by(AuditCheckpoint.seq)).all()
    assert seqs == [5, 10]
    result = log.verify()
    assert result.ok and result.checkpoints_verified == 2 and result.signed_through == 10


def test_explicit_checkpoint_is_idempotent(log: AuditLog) -> None:
    fill(log, 3)
    with log.db.session() as s:
        a = log.checkpoint(s)
    with log.db.session() as s:
        b = log.checkpoint(s)
    assert a.id == b.id and a.key_id == log.key_id and len(log.key_id) == 16


def test_concurrent_writers_never_share_a_seq(db: Database, key_path: Path) -> None:
    log = AuditLog(db, key_path, checkpoint_every=7)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            fill(log, 10, start=i * 10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = log.verify()
    assert result.ok and result.checked == 40 and result.signed_through == 35


def test_signing_key_file_is_private(log: AuditLog, key_path: Path) -> None:
    assert not key_path.exists()  # created on first use, not on construction
    pem = log.public_key_pem()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert key_path.parent.stat().st_mode & 0o777 == 0o700
    assert "PRIVATE" in key_path.read_text()
    key_path.chmod(0o644)
    with pytest.raises(RetrofaceError, match="chmod 600"):
        AuditLog(log.db, key_path).public_key_pem()


# --------------------------------------------------------------------------- tampering


def test_edited_field_is_detected(log: AuditLog) -> None:
    fill(log, 8)
    sql(log.db, "UPDATE audit_records SET actor = 'mallory' WHERE seq = 5")
    assert_bad(log, 5, "altered")


def test_edited_details_and_timestamp_are_detected(log: AuditLog) -> None:
    fill(log, 8)
    sql(log.db, update(T).where(T.c.seq == 6).values(details={"top_k": 1}))
    assert_bad(log, 6, "altered")
    sql(log.db, update(T).where(T.c.seq == 3).values(ts=datetime(2020, 1, 1, tzinfo=UTC)))
    assert_bad(log, 3, "altered")


def test_deleted_record_is_detected(log: AuditLog) -> None:
    fill(log, 8)
    sql(log.db, "DELETE FROM audit_records WHERE seq = 5")
    assert_bad(log, 5, "missing")


def test_deleted_first_record_is_detected(log: AuditLog) -> None:
    fill(log, 4)
    sql(log.db, "DELETE FROM audit_records WHERE seq = 1")
    assert_bad(log, 1, "missing")


def test_deleted_and_renumbered_record_is_detected(log: AuditLog) -> None:
    fill(log, 8)
    sql(log.db, "DELETE FROM audit_records WHERE seq = 5")
    renumber(log.db, 6, -1)
    assert_bad(log, 5, "removed")


def test_inserted_forged_record_is_detected(log: AuditLog) -> None:
    fill(log, 8)
    renumber(log.db, 5, +1)
    sql(log.db, insert(T).values(forged(5, row(log.db, 4)["hash"], rehash=False)))
    assert_bad(log, 5, "altered")


def test_inserted_well_formed_forgery_is_detected(log: AuditLog) -> None:
    """Even a forgery with a correct hash and prev_hash breaks the record after it."""
    fill(log, 8)
    renumber(log.db, 5, +1)
    sql(log.db, insert(T).values(forged(5, row(log.db, 4)["hash"], rehash=True)))
    assert_bad(log, 5, "inserted")


def test_appended_record_with_wrong_link_is_detected(log: AuditLog) -> None:
    fill(log, 4)
    sql(log.db, insert(T).values(forged(5, "a" * 64, rehash=True)))
    assert_bad(log, 5, "prev_hash")


def test_reordered_records_are_detected(log: AuditLog) -> None:
    fill(log, 8)
    r3, r4 = row(log.db, 3), row(log.db, 4)
    swap = [c for c in r3 if c != "seq"]
    sql(log.db, update(T).where(T.c.seq == 3).values({c: r4[c] for c in swap}))
    sql(log.db, update(T).where(T.c.seq == 4).values({c: r3[c] for c in swap}))
    assert_bad(log, 3, "record 3")


def test_truncated_tail_after_checkpoint_is_detected(log: AuditLog) -> None:
    fill(log, 10)
    with log.db.session() as s:
        log.checkpoint(s)
    sql(log.db, "DELETE FROM audit_records WHERE seq >= 8")
    assert_bad(log, 8, "truncation", "8..10")


def test_rewritten_tail_after_checkpoint_is_detected(log: AuditLog) -> None:
    """A removed tail replaced by a well-formed new chain: only the checkpoint catches it."""
    fill(log, 5)
    with log.db.session() as s:
        log.checkpoint(s)
    fill(log, 5, start=5)
    with log.db.session() as s:
        log.checkpoint(s)
    sql(log.db, "DELETE FROM audit_records WHERE seq >= 8")
    fill(log, 3, start=100)  # seq 8..10 again, correctly chained to record 7
    assert_bad(log, 6, "rewritten", "6..10")


def _sign(key: Ed25519PrivateKey, seq: int, digest: str) -> str:
    return base64.b64encode(key.sign(checkpoint_message(seq, digest))).decode()


def test_forged_checkpoint_signature_is_detected(log: AuditLog) -> None:
    fill(log, 6)
    with log.db.session() as s:
        cp = log.checkpoint(s)
    mallory = Ed25519PrivateKey.generate()
    sql(
        log.db,
        update(AuditCheckpoint.__table__)
        .where(AuditCheckpoint.__table__.c.id == cp.id)
        .values(signature=_sign(mallory, 6, cp.hash)),
    )
    assert_bad(log, 6, "invalid signature")


def test_checkpoint_from_another_key_is_detected(log: AuditLog, tmp_path: Path) -> None:
    fill(log, 6)
    with log.db.session() as s:
        log.checkpoint(s)
    other = AuditLog(log.db, tmp_path / "other" / "key.pem")
    result = other.verify()
    assert not result.ok and result.first_bad_seq == 6
    assert result.problem is not None and "unknown key" in result.problem
    # After a key rotation, the retired public key is trusted explicitly:
    rotated = AuditLog(
        log.db, tmp_path / "other" / "key.pem", trusted_public_keys=[log.public_key_pem()]
    )
    assert rotated.verify().ok


# --------------------------------------------------------------------------- export


def test_export_verifies_offline(log: AuditLog, tmp_path: Path) -> None:
    fill(log, 7)
    out = tmp_path / "export"
    manifest = log.export(out)
    assert (
        manifest["records"] == 7
        and manifest["last_seq"] == 7
        and manifest["key_ids"] == [log.key_id]
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints.json",
        "manifest.json",
        "public_keys.pem",
        "records.jsonl",
    ]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in out.iterdir())
    log.db.dispose()
    result = verify_export(out)  # files only
    assert result.ok and result.checked == 7 and result.signed_through == 7
    assert log.verify_export(out).ok
    lines = (out / "records.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["prev_hash"] == GENESIS_HASH
    assert json.loads(lines[-1])["hash"] == manifest["head_hash"]


def test_export_of_empty_log(log: AuditLog, tmp_path: Path) -> None:
    log.export(tmp_path / "e")
    assert verify_export(tmp_path / "e").ok


def test_export_refuses_a_non_empty_folder(log: AuditLog, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("evidence")
    with pytest.raises(ConflictError):
        log.export(tmp_path / "x")


@pytest.fixture
def exported(log: AuditLog, tmp_path: Path) -> Path:
    fill(log, 6)
    log.export(tmp_path / "export")
    return tmp_path / "export"


def _edit_lines(path: Path, edit: Any) -> None:
    f = path / "records.jsonl"
    lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
    f.chmod(0o600)
    f.write_text("".join(edit(lines)), encoding="utf-8")


def test_tampered_export_line_is_detected(exported: Path) -> None:
    def edit(lines: list[str]) -> list[str]:
        rec = json.loads(lines[2])
        rec["actor"] = "mallory"
        lines[2] = json.dumps(rec) + "\n"
        return lines

    _edit_lines(exported, edit)
    result = verify_export(exported)
    assert not result.ok and result.first_bad_seq == 3
    assert result.problem is not None and "record 3" in result.problem


def test_removed_export_lines_are_detected(exported: Path) -> None:
    _edit_lines(exported, lambda lines: lines[:-2])
    result = verify_export(exported)
    assert not result.ok and result.first_bad_seq == 5
    assert result.problem is not None and "truncation" in result.problem


def test_appended_export_line_is_detected(exported: Path) -> None:
    def edit(lines: list[str]) -> list[str]:
        last = json.loads(lines[-1])
        extra = forged(7, last["hash"], rehash=True)
        extra["ts"] = format_ts(extra["ts"])
        return [*lines, json.dumps(extra) + "\n"]

    _edit_lines(exported, edit)
    result = verify_export(exported)
    assert not result.ok and result.first_bad_seq == 7


def test_malformed_export_line_is_detected(exported: Path) -> None:
    _edit_lines(exported, lambda lines: [*lines[:3], "{not json\n", *lines[4:]])
    result = verify_export(exported)
    assert not result.ok and result.first_bad_seq == 4
    assert result.problem is not None and "line 4" in result.problem


def test_re_signed_export_fails_against_the_pinned_key(log: AuditLog, exported: Path) -> None:
    """Someone rewriting an export with their own key passes a self-check, not a pinned one."""
    mallory = Ed25519PrivateKey.generate()
    cps = json.loads((exported / "checkpoints.json").read_text())
    for cp in cps:
        cp["signature"] = _sign(mallory, cp["seq"], cp["hash"])
        cp["key_id"] = key_id_of(mallory.public_key())
    for name, content in [
        ("checkpoints.json", json.dumps(cps)),
        ("public_keys.pem", public_pem(mallory.public_key())),
    ]:
        os.chmod(exported / name, 0o600)
        (exported / name).write_text(content)
    pinned = log.verify_export(exported)
    assert not pinned.ok and pinned.problem is not None and "unknown key" in pinned.problem
    other = verify_export(exported, public_keys=log.public_key_pem())
    assert not other.ok
