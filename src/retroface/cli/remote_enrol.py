"""``retroface gallery enrol`` through a running server (``RETROFACE_URL``).

The images are listed and labelled here exactly as for a local run (``gallery/items.py``), read
here, and sent to ``POST /api/v1/gallery/images`` in groups over the one kept-alive connection of
:class:`~retroface.cli.remote.Remote`. The server runs the same enroller, so it checks the same
role, skips what is enrolled already (by content hash) and writes the same records; the CLI adds
the groups' summaries up into one :class:`~retroface.gallery.views.EnrolSummary` and prints it
with the local code, so the output (text and ``--json``) is a local run's.

Groups hold up to 32 images (the enroller's commit batch) and about 8 MB: a local run commits,
and records as one ``gallery.enrol`` entry, every 32 enrolled images, and a group is one commit
on the server, so the records are the same whenever no image of a group is rejected or skipped
(otherwise the same images are recorded, grouped by request). What this side alone can tell is
said as locally, with the same words: a file it cannot read (``unreadable: …``), labels the
stores cannot hold (``check_item``). A single image larger than the server's upload limit is a
rejection (``upload is larger than the limit …``), where a local run would enrol it.

Only httpx, pydantic and the light item helpers are imported: never NumPy, SQLAlchemy or the
models (tests/test_cli_remote.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retroface.cli.common import fail
from retroface.cli.remote import Remote, RemoteError
from retroface.core.errors import InvalidInputError
from retroface.gallery.items import EnrolItem, check_item
from retroface.gallery.views import EnrolSummary, LowQualityReference, Rejection

#: Images per request: the enroller's commit batch (``Enroller.batch_size``), so that a group is
#: one commit and one record on the server, as 32 images are locally.
GROUP_IMAGES = 32
#: Bytes of images per request: well under the server's default upload limit (25 MB for the
#: whole body), so a group is never refused for its size where its images alone would not be.
GROUP_BYTES = 8_000_000


@dataclass
class _Group:
    """Consecutive items: those read (to send) and those rejected here, by position."""

    sent: list[tuple[int, EnrolItem, bytes]] = field(default_factory=list)
    size: int = 0


def _labels(item: EnrolItem) -> dict[str, Any]:
    labels: dict[str, Any] = {"path": str(item.path), "subject": item.subject}
    for name in (
        "face",
        "inclusion_reason",
        "legal_basis",
        "source",
        "provenance",
        "display_name",
    ):
        value = getattr(item, name)
        if value is not None:
            labels[name] = value
    for name in ("capture_date", "retention_until"):
        value = getattr(item, name)
        if value is not None:
            labels[name] = value.isoformat()
    return labels


def enrol_remotely(
    remote: Remote,
    items: list[EnrolItem],
    multi_face: str,
    strict_quality: bool,
    progress: Callable[[int, int], None],
) -> EnrolSummary:
    """Enrol ``items`` through the server, one request per group; their summaries added up."""
    if multi_face not in ("reject", "main"):
        raise InvalidInputError("multi_face must be 'reject' or 'main'")  # the enroller's words
    started = time.perf_counter()
    total = len(items)
    summary = EnrolSummary()
    subjects: set[str] = set()
    rejected: list[tuple[int, Rejection]] = []
    form = {"multi_face": multi_face, "strict_quality": str(strict_quality).lower()}
    done = 0
    progress(0, total)

    def send(group: list[tuple[int, EnrolItem, bytes]]) -> None:
        try:
            answer = remote.request(
                "POST",
                "/gallery/images",
                files=[
                    ("files", (item.path.name or "image", data, "application/octet-stream"))
                    for _, item, data in group
                ],
                data={**form, "items": json.dumps([_labels(item) for _, item, _ in group])},
            )
        except RemoteError as exc:
            if exc.code == "upload_too_large":
                if len(group) > 1:  # the server's limit is below this group: one at a time
                    for one in group:
                        send([one])
                    return
                index, item, _ = group[0]
                rejected.append((index, Rejection(path=str(item.path), reason=exc.message)))
                return
            fail(exc.message)
        at: dict[str, list[int]] = {}
        for index, item, _ in group:
            at.setdefault(str(item.path), []).append(index)
        for raw in answer.get("rejected", []):
            rejection = Rejection.model_validate(raw)
            indices = at.get(rejection.path) or [group[-1][0]]
            rejected.append((indices.pop(0) if len(indices) > 1 else indices[0], rejection))
        summary.enrolled += int(answer["enrolled"])
        # enrolled below a quality minimum (flagged): in sending order, as a local run lists them
        summary.low_quality += [
            LowQualityReference.model_validate(raw) for raw in answer.get("low_quality", [])
        ]
        summary.skipped += int(answer["skipped"])
        summary.new_subjects += int(answer["new_subjects"])
        summary.gallery_version = int(answer["gallery_version"])
        subjects.update(answer.get("subject_references", []))

    group = _Group()
    for index, item in enumerate(items):
        try:
            check_item(item)
            data = Path(item.path).read_bytes()
        except InvalidInputError as exc:
            rejected.append((index, Rejection(path=str(item.path), reason=exc.message)))
        except OSError as exc:  # the enroller's words for a file it cannot read
            reason = f"unreadable: {exc.strerror or exc}"
            rejected.append((index, Rejection(path=str(item.path), reason=reason)))
        else:
            if group.sent and (
                len(group.sent) >= GROUP_IMAGES or group.size + len(data) > GROUP_BYTES
            ):
                send(group.sent)
                done = group.sent[-1][0] + 1
                progress(done, total)
                group = _Group()
            group.sent.append((index, item, data))
            group.size += len(data)
    if group.sent:
        send(group.sent)
    progress(total, total)
    rejected.sort(key=lambda pair: pair[0])  # in the items' order, as a local run lists them
    summary.rejected = [r for _, r in rejected]
    summary.touch(subjects)
    summary.seconds = time.perf_counter() - started
    return summary
