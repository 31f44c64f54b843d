"""What to enrol: one :class:`EnrolItem` per image, from paths, folders or a CSV manifest.

Kept apart from the enroller (``gallery/enrol.py``) and light on purpose: the CLI's remote
enrolment (``retroface gallery enrol`` with ``RETROFACE_URL``) lists, labels and reads the images
here and sends them to the server, and must not import NumPy, SQLAlchemy or the face models to do
so (tests/test_cli_remote.py checks the modules of a remote command).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from retroface.core.errors import InvalidInputError
from retroface.core.text import optional_text, subject_reference
from retroface.media.formats import is_image_path


@dataclass(frozen=True)
class EnrolItem:
    """One image to enrol, with what the manifest says about it.

    ``path`` is read when the run gets to the item, unless ``data`` holds the image already (an
    API upload, enrolled from memory so that no plaintext copy ever touches the disk); ``path``
    is then only the image's name, for the record and any rejection.
    """

    path: Path
    subject: str
    face: int | None = None
    inclusion_reason: str | None = None
    legal_basis: str | None = None
    source: str | None = None
    provenance: str | None = None
    capture_date: datetime | None = None
    display_name: str | None = None
    retention_until: datetime | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)
    #: The folder ``path`` must really lie in (``RETROFACE_IMPORT_DIR`` for jobs): checked after
    #: following links, before and after opening, so a link to a file outside is refused unread.
    confine: Path | None = None


def check_item(item: EnrolItem) -> None:
    """Refuse labels the stores cannot hold (control characters, over-long), before any work."""
    subject_reference(item.subject)
    for name, value, limit in (
        ("inclusion reason", item.inclusion_reason, 200),
        ("legal basis", item.legal_basis, 200),
        ("source", item.source, 200),
        ("provenance", item.provenance, 500),
        ("display name", item.display_name, 200),
    ):
        optional_text(value, name, limit)


def items_from_paths(paths: Iterable[Path], confine: Path | None = None) -> Iterator[EnrolItem]:
    """Images given directly, or found in folders: the subject is the image's parent folder name.

    Linked sub-folders are not descended into (``Path.rglob`` does not follow them); with
    ``confine`` they are listed as items all the same, so that the run reports them as refused
    instead of passing over them in silence.
    """
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                image = f.is_file() and is_image_path(f)
                linked_dir = confine is not None and f.is_symlink() and f.is_dir()
                if (image or linked_dir) and not f.name.startswith("."):
                    yield EnrolItem(path=f, subject=f.parent.name, confine=confine)
        else:
            yield EnrolItem(path=p, subject=p.parent.name or p.stem, confine=confine)


def items_from_manifest(manifest: Path) -> Iterator[EnrolItem]:
    """CSV with at least ``path,subject``; optional ``face, inclusion_reason, legal_basis, source,
    provenance, capture_date, display_name, retention_until`` (ISO dates, UTC). Relative paths are
    relative to the CSV."""
    try:
        fh = manifest.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInputError(f"{manifest}: cannot read manifest ({exc.strerror})") from None
    with fh:
        reader = csv.DictReader(fh)
        missing = {"path", "subject"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInputError(
                f"{manifest}: manifest needs columns path,subject (missing {', '.join(missing)})"
            )
        for line, row in enumerate(reader, start=2):
            if not (row.get("path") or "").strip() or not (row.get("subject") or "").strip():
                raise InvalidInputError(f"{manifest}:{line}: empty path or subject")
            path = Path(row["path"].strip())
            if not path.is_absolute():
                path = manifest.parent / path
            face = row.get("face") or None
            date = row.get("capture_date") or None
            until = row.get("retention_until") or None
            try:
                yield EnrolItem(
                    path=path,
                    subject=row["subject"].strip(),
                    face=int(face) if face is not None else None,
                    inclusion_reason=row.get("inclusion_reason") or None,
                    legal_basis=row.get("legal_basis") or None,
                    source=row.get("source") or None,
                    provenance=row.get("provenance") or None,
                    capture_date=_utc(datetime.fromisoformat(date)) if date else None,
                    display_name=row.get("display_name") or None,
                    retention_until=_utc(datetime.fromisoformat(until)) if until else None,
                )
            except ValueError as exc:
                raise InvalidInputError(f"{manifest}:{line}: {exc}") from None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
