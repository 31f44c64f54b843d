"""The export format and its offline check: a folder anyone can verify without the database.

An export is one folder, so it travels as a unit (zip it, hash it, hand it over)::

    records.jsonl      one record per line: the hashed fields plus "hash", canonical JSON
    checkpoints.json   the signed checkpoints up to the last exported record
    public_keys.pem    the Ed25519 public key(s) the checkpoints are signed with
    manifest.json      format, counts, head seq/hash, key id and the sha256 of each file above

Every export ends with a signed checkpoint at its last record, so removing or appending lines is
detected. The bundled public key only proves the export is self-consistent: an auditor should
pin the key (``public_keys`` argument) to one obtained independently.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from retroface.audit.chain import (
    HASHED_FIELDS,
    ChainBreak,
    CheckpointView,
    VerifyResult,
    canonical_json,
    key_id_of,
    verify_chain,
)
from retroface.audit.keys import load_public_keys
from retroface.core.errors import ConflictError, RetrofaceError

FORMAT = "retroface-audit-export/1"
RECORDS = "records.jsonl"
CHECKPOINTS = "checkpoints.json"
PUBLIC_KEYS = "public_keys.pem"
MANIFEST = "manifest.json"

_STR = ("ts", "actor", "action", "prev_hash", "hash")
_STR_OR_NONE = ("case_ref", "object_type", "object_id", "justification")


def _open_private(path: Path) -> IO[str]:
    """Audit records name people and cases: exported files are private to the owner (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8", newline="\n")


def prepare_folder(path: Path) -> None:
    """Create the export folder (0700); refuse a non-empty one rather than overwrite evidence."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if any(path.iterdir()):
        raise ConflictError(f"{path} is not empty; export to a new folder")


def write_export(
    path: Path,
    records: Iterable[Mapping[str, Any]],
    checkpoints: Iterable[CheckpointView],
    public_keys: Iterable[Ed25519PublicKey],
    public_keys_pem: str,
    exported_at: str,
) -> dict[str, Any]:
    """Write the folder prepared by :func:`prepare_folder`; returns the manifest."""
    digests: dict[str, str] = {}
    count, first, last, head = 0, None, None, None
    h = hashlib.sha256()
    with _open_private(path / RECORDS) as f:
        for rec in records:
            line = canonical_json({k: rec[k] for k in (*HASHED_FIELDS, "hash")}) + "\n"
            f.write(line)
            h.update(line.encode())
            count += 1
            first = rec["seq"] if first is None else first
            last, head = rec["seq"], rec["hash"]
    digests[RECORDS] = h.hexdigest()
    cps = [
        {"id": c.id, "seq": c.seq, "hash": c.hash, "signature": c.signature, "key_id": c.key_id}
        for c in checkpoints
    ]
    digests[CHECKPOINTS] = _write_text(path / CHECKPOINTS, json.dumps(cps, indent=1) + "\n")
    digests[PUBLIC_KEYS] = _write_text(path / PUBLIC_KEYS, public_keys_pem)
    manifest = {
        "format": FORMAT,
        "exported_at": exported_at,
        "records": count,
        "first_seq": first,
        "last_seq": last,
        "head_hash": head,
        "checkpoints": len(cps),
        "key_ids": [key_id_of(k) for k in public_keys],
        "files": digests,
    }
    _write_text(path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _write_text(path: Path, text: str) -> str:
    with _open_private(path) as f:
        f.write(text)
    return hashlib.sha256(text.encode()).hexdigest()


def verify_export(path: Path, public_keys: str | bytes | None = None) -> VerifyResult:
    """Check an export folder offline: chain, signatures, coverage of the head and file digests.

    ``public_keys`` (PEM, one or more keys) pins the trusted keys; without it the export's own
    ``public_keys.pem`` is used, which proves consistency but not origin.
    """
    try:
        pem = public_keys if public_keys is not None else (path / PUBLIC_KEYS).read_text()
        keys = {key_id_of(k): k for k in load_public_keys(pem)}
        checkpoints = _read_checkpoints(path / CHECKPOINTS)
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        with (path / RECORDS).open("rb") as f:
            result = verify_chain(_read_records(f), checkpoints, keys)
    except (OSError, ValueError, KeyError, TypeError, RetrofaceError) as exc:
        return _unreadable(f"export at {path} is incomplete or malformed: {exc}")
    if not result.ok:
        return result
    last = result.checked
    if result.signed_through < last:
        return _fail(
            result,
            result.signed_through + 1,
            f"records {result.signed_through + 1}..{last} are not covered by a signed "
            "checkpoint: lines were appended after the export was made",
        )
    if manifest.get("format") != FORMAT:
        return _fail(result, None, f"unknown export format {manifest.get('format')!r}")
    if manifest.get("last_seq") != (last or None) or manifest.get("head_hash") != result.head_hash:
        return _fail(result, None, "manifest.json does not describe the records in the export")
    files = manifest.get("files", {})
    for name in (RECORDS, CHECKPOINTS, PUBLIC_KEYS):
        if public_keys is not None and name == PUBLIC_KEYS:
            continue
        if hashlib.sha256((path / name).read_bytes()).hexdigest() != files.get(name):
            return _fail(result, None, f"{name} does not match the digest in manifest.json")
    return result


class PriorExport:
    """An export kept since, that the live log must still contain (``verify --against``).

    The log must hold the export's records unchanged, as a prefix, and every checkpoint the
    export holds (the last of them signs its last record). The export itself is verified first
    against the pinned keys, so a doctored export cannot vouch for a doctored log.
    """

    def __init__(
        self, path: Path, manifest: Mapping[str, Any], checkpoints: list[CheckpointView]
    ) -> None:
        self.path = path
        self.last_seq: int = manifest.get("last_seq") or 0
        self.exported_at: str = str(manifest.get("exported_at"))
        self.checkpoints = checkpoints

    @classmethod
    def open(cls, path: Path, public_keys: str) -> PriorExport | VerifyResult:
        """The export at ``path``, or the failed result saying why it cannot be relied on."""
        checked = verify_export(path, public_keys)
        if not checked.ok:
            return _fail(
                checked, None, f"the earlier export {path} does not verify: {checked.problem}"
            )
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return cls(path, manifest, _read_checkpoints(path / CHECKPOINTS))

    def _what(self) -> str:
        return f"the earlier export {self.path} (made {self.exported_at})"

    def compare(self, records: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """Pass the live records through, stopping at the first that differs from the export."""
        with (self.path / RECORDS).open("rb") as f:
            for rec in records:
                if rec["seq"] <= self.last_seq:
                    raw = f.readline()
                    live = canonical_json({k: rec[k] for k in (*HASHED_FIELDS, "hash")})
                    if not raw or json.loads(raw) != json.loads(live):
                        raise ChainBreak(
                            rec["seq"],
                            f"record {rec['seq']} differs from {self._what()}: the log was "
                            "altered, or records removed or inserted, after that export",
                        )
                yield rec

    def check_end(
        self, result: VerifyResult, checkpoints: Iterable[CheckpointView]
    ) -> tuple[int | None, str] | None:
        """After the chain: does the log reach the export's head, and keep its checkpoint?"""
        if result.checked < self.last_seq:
            return result.checked + 1, (
                f"the log ends at seq {result.checked} but {self._what()} holds records up to "
                f"{self.last_seq}: records {result.checked + 1}..{self.last_seq} were removed"
            )
        in_db = {(c.seq, c.hash, c.signature) for c in checkpoints}
        for c in sorted(self.checkpoints, key=lambda c: c.seq):
            if (c.seq, c.hash, c.signature) not in in_db:
                return c.seq, (
                    f"the checkpoint at seq {c.seq} in {self._what()} is missing from the "
                    "database: it was deleted"
                )
        return None


def _read_checkpoints(path: Path) -> list[CheckpointView]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    cps = []
    for c in raw:
        cp = CheckpointView(
            id=c["id"], seq=c["seq"], hash=c["hash"], signature=c["signature"], key_id=c["key_id"]
        )
        if not (
            isinstance(cp.id, int)
            and isinstance(cp.seq, int)
            and all(isinstance(v, str) for v in (cp.hash, cp.signature, cp.key_id))
        ):
            raise ValueError(f"checkpoint {c!r} has fields of the wrong type")
        cps.append(cp)
    return cps


def _read_records(f: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Parse and type-check each line; a bad line stops verification at the seq it should hold."""
    expected = 1
    for lineno, raw in enumerate(f, start=1):
        try:
            rec = json.loads(raw)
            ok = (
                isinstance(rec, dict)
                and isinstance(rec.get("seq"), int)
                and all(isinstance(rec.get(k), str) for k in _STR)
                and all(k in rec and isinstance(rec[k], str | None) for k in _STR_OR_NONE)
                and isinstance(rec.get("details"), dict)
            )
        except ValueError:
            ok = False
        if not ok:
            raise ChainBreak(
                expected, f"line {lineno} of {RECORDS} (seq {expected}) is not a valid record"
            )
        yield rec
        expected = rec["seq"] + 1


def _unreadable(problem: str) -> VerifyResult:
    return VerifyResult(ok=False, checked=0, problem=problem)


def _fail(result: VerifyResult, seq: int | None, problem: str) -> VerifyResult:
    return VerifyResult(
        ok=False,
        checked=result.checked,
        first_bad_seq=seq,
        problem=problem,
        checkpoints_verified=result.checkpoints_verified,
        head_hash=result.head_hash,
        signed_through=result.signed_through,
    )
