"""Evaluation datasets: folder-per-identity image trees, open-set protocols and pair lists.

A protocol says, image by image, what each file is for (``gallery``, ``mated`` search,
``nonmated`` search). It is either read from a CSV (``path,identity,role``, paths relative to the
CSV's folder) or built from the folders with the rule in ``shared/data/README.md``, which
reproduces ``lfw_1n_protocol.csv`` exactly. Its hash (sha256 over the sorted protocol lines) is
what a calibrated threshold records, so a threshold can always be traced to the exact searches
it was set on.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retroface.core.errors import InvalidInputError
from retroface.media.images import is_image_path

ROLES = ("gallery", "mated", "nonmated")
PROTOCOL_SUFFIX = "_1n_protocol.csv"


@dataclass(frozen=True)
class ProtocolEntry:
    """One image of a protocol; ``rel`` is the path as written in protocol lines."""

    path: Path
    rel: str
    identity: str
    role: str

    def line(self) -> str:
        return f"{self.rel},{self.identity},{self.role}"


@dataclass
class Protocol:
    """An open-set 1:N protocol over one dataset folder."""

    dataset: Path
    entries: list[ProtocolEntry]
    source: str  # "file:<path>" or "built from folders"
    limit: int | None = None
    notes: list[str] = field(default_factory=list)

    def role(self, role: str) -> list[ProtocolEntry]:
        return [e for e in self.entries if e.role == role]

    @property
    def identities(self) -> list[str]:
        return sorted({e.identity for e in self.entries})

    def counts(self) -> dict[str, int]:
        c = Counter(e.role for e in self.entries)
        return {r: c.get(r, 0) for r in ROLES}

    def without(self, identities: Iterable[str], reason: str = "") -> Protocol:
        """The protocol minus every image of ``identities`` (e.g. known label errors); the
        removal is recorded in ``notes`` and changes the dataset hash."""
        drop = set(identities)
        unknown = drop - {e.identity for e in self.entries}
        if unknown:
            raise InvalidInputError(f"not in the protocol: {', '.join(sorted(unknown))}")
        note = f"excluded identities: {', '.join(sorted(drop))}" + (
            f" ({reason})" if reason else ""
        )
        return Protocol(
            self.dataset,
            [e for e in self.entries if e.identity not in drop],
            self.source,
            self.limit,
            [*self.notes, note],
        )

    def dataset_hash(self) -> str:
        """sha256 over the sorted protocol lines (``path,identity,role``), one per line."""
        lines = sorted(e.line() for e in self.entries)
        return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()

    def describe(self) -> dict[str, object]:
        counts = self.counts()
        return {
            "path": str(self.dataset),
            "protocol": self.source,
            "limit_identities": self.limit,
            "identities": len(self.identities),
            "images": len(self.entries),
            "gallery_images": counts["gallery"],
            "mated_searches": counts["mated"],
            "nonmated_searches_protocol": counts["nonmated"],
            "dataset_hash": self.dataset_hash(),
        } | ({"notes": list(self.notes)} if self.notes else {})


def identity_folders(dataset: Path, limit: int | None = None) -> list[Path]:
    """Identity sub-folders sorted by name (code point order, as the LFW protocol file)."""
    if not dataset.is_dir():
        raise InvalidInputError(f"{dataset} is not a folder of identity folders")
    folders = sorted((d for d in dataset.iterdir() if d.is_dir()), key=lambda d: d.name)
    if not folders:
        raise InvalidInputError(f"{dataset} has no identity sub-folders")
    return folders[:limit] if limit else folders


def identity_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))


def build_protocol(dataset: Path, limit: int | None = None) -> Protocol:
    """The README's protocol from the folders.

    Each identity with two or more images: first image (by file name) in the gallery, the
    others mated searches. Single-image identities, sorted by name, alternate: gallery
    distractor, non-mated search, gallery distractor, ...
    """
    dataset = dataset.resolve()
    entries: list[ProtocolEntry] = []
    singles: list[tuple[str, Path]] = []
    for folder in identity_folders(dataset, limit):
        images = identity_images(folder)
        if len(images) >= 2:
            for i, p in enumerate(images):
                entries.append(_entry(dataset, p, folder.name, "gallery" if i == 0 else "mated"))
        elif images:
            singles.append((folder.name, images[0]))
    for i, (name, p) in enumerate(singles):
        entries.append(_entry(dataset, p, name, "gallery" if i % 2 == 0 else "nonmated"))
    return Protocol(dataset, entries, "built from folders", limit)


def _entry(dataset: Path, path: Path, identity: str, role: str) -> ProtocolEntry:
    # Lines name the dataset folder as the shared protocol file does ("lfw/Name/Name_0001.jpg").
    rel = f"{dataset.name}/{path.relative_to(dataset).as_posix()}"
    return ProtocolEntry(path, rel, identity, role)


def load_protocol(
    csv_path: Path, dataset: Path | None = None, limit: int | None = None
) -> Protocol:
    """Read a ``path,identity,role`` CSV (paths relative to the CSV's folder).

    With ``limit``, only the first ``limit`` identities of ``dataset`` (folder order) are kept,
    so a limited run uses the same subset whether the protocol is read or built.
    """
    base = csv_path.resolve().parent
    entries: list[ProtocolEntry] = []
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "identity", "role"} - set(reader.fieldnames or ())
            if missing:
                raise InvalidInputError(
                    f"{csv_path}: protocol needs the columns path,identity,role "
                    f"(missing {', '.join(sorted(missing))})"
                )
            for n, row in enumerate(reader, start=2):
                role = (row["role"] or "").strip().lower()
                if role not in ROLES:
                    raise InvalidInputError(
                        f"{csv_path} line {n}: role {row['role']!r} is not one of {ROLES}"
                    )
                rel = (row["path"] or "").strip()
                entries.append(ProtocolEntry(base / rel, rel, row["identity"].strip(), role))
    except OSError as exc:
        raise InvalidInputError(f"cannot read protocol {csv_path}: {exc}") from None
    if not entries:
        raise InvalidInputError(f"{csv_path}: the protocol lists no images")
    root = dataset.resolve() if dataset else base
    if limit:
        keep = {d.name for d in identity_folders(root, limit)}
        entries = [e for e in entries if e.identity in keep]
    absent = [e.rel for e in entries if not e.path.is_file()]
    if absent:
        raise InvalidInputError(
            f"{csv_path}: {len(absent)} listed image(s) do not exist, e.g. {absent[0]}"
        )
    return Protocol(root, entries, f"file:{csv_path}", limit)


def default_protocol_file(dataset: Path) -> Path | None:
    """``<parent>/<name>_1n_protocol.csv`` when it exists and lists images of this folder."""
    candidate = dataset.resolve().parent / f"{dataset.resolve().name}{PROTOCOL_SUFFIX}"
    if not candidate.is_file():
        return None
    prefix = f"{dataset.resolve().name}/"
    with candidate.open(newline="", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh), None)
    return candidate if first and str(first.get("path", "")).startswith(prefix) else None


def resolve_protocol(
    dataset: Path, protocol: Path | None = None, limit: int | None = None
) -> Protocol:
    """The protocol a command uses: ``--protocol``, else the shared file, else built."""
    if protocol is not None:
        return load_protocol(protocol, dataset, limit)
    found = default_protocol_file(dataset)
    if found is not None:
        return load_protocol(found, dataset, limit)
    return build_protocol(dataset, limit)


# --------------------------------------------------------------------------------------------
# 1:1 pairs in the LFW format
# --------------------------------------------------------------------------------------------


@dataclass
class PairList:
    """Verification pairs over image files, with LFW View 2 folds when the file has them."""

    source: Path
    paths: list[Path]  # unique images
    pairs: list[tuple[int, int, bool]]  # (image index, image index, same person)
    folds: list[int]
    fold_source: str
    skipped: int = 0  # pairs naming an image that is not there

    def describe(self) -> dict[str, object]:
        same = sum(1 for *_, s in self.pairs if s)
        return {
            "pairs_file": str(self.source),
            "pairs": len(self.pairs),
            "same": same,
            "different": len(self.pairs) - same,
            "pairs_skipped_missing_image": self.skipped,
            "images": len(self.paths),
            "folds": self.fold_source,
        }


_NUMBER = re.compile(r"^\d+$")


def _lfw_image(root: Path, name: str, number: str) -> Path:
    return root / name / f"{name}_{int(number):04d}.jpg"


def load_pairs(
    pairs_file: Path, image_root: Path | None = None, identities: Iterable[str] | None = None
) -> PairList:
    """Parse ``name i j`` / ``name1 i name2 j`` lines (headers such as ``10 300`` ignored).

    Images are ``<image_root>/<name>/<name>_NNNN.jpg``; ``image_root`` defaults to the ``lfw``
    folder beside the pairs file. Folds: the LFW layout is ten runs of same pairs followed by
    different pairs; when the file has exactly ten such runs they are the folds (people never
    cross folds), otherwise pair ``i`` goes to fold ``i % 10``.
    """
    root = image_root or pairs_file.resolve().parent / "lfw"
    allowed = set(identities) if identities is not None else None
    raw: list[tuple[Path, Path, bool]] = []
    for line in pairs_file.read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) == 3 and _NUMBER.match(f[1]) and _NUMBER.match(f[2]):
            raw.append((_lfw_image(root, f[0], f[1]), _lfw_image(root, f[0], f[2]), True))
        elif len(f) == 4 and _NUMBER.match(f[1]) and _NUMBER.match(f[3]):
            raw.append((_lfw_image(root, f[0], f[1]), _lfw_image(root, f[2], f[3]), False))
    if not raw:
        raise InvalidInputError(f"{pairs_file}: no pairs in the LFW pairs format")
    fold_of: list[int] = []
    fold, prev_same = -1, False
    for _, _, same in raw:
        if same and (fold < 0 or not prev_same):
            fold += 1
        fold_of.append(fold)
        prev_same = same
    if fold + 1 == 10:
        fold_source = "the file's 10 consecutive same/different blocks (LFW View 2 folds)"
    else:
        fold_of = [i % 10 for i in range(len(raw))]
        fold_source = "round-robin (pair i in fold i % 10)"
    index: dict[Path, int] = {}
    pairs: list[tuple[int, int, bool]] = []
    folds: list[int] = []
    skipped = 0
    for (a, b, same), k in zip(raw, fold_of, strict=True):
        if allowed is not None and not (a.parent.name in allowed and b.parent.name in allowed):
            continue
        if not (a.is_file() and b.is_file()):
            skipped += 1
            continue
        ia, ib = index.setdefault(a, len(index)), index.setdefault(b, len(index))
        pairs.append((ia, ib, same))
        folds.append(k)
    if not pairs:
        raise InvalidInputError(f"{pairs_file}: none of the paired images exist under {root}")
    return PairList(pairs_file, list(index), pairs, folds, fold_source, skipped)


def folder_images(dataset: Path, limit: int | None = None) -> tuple[list[Path], list[str]]:
    """Every image of a folder-per-identity tree with its identity (for all-pairs 1:1)."""
    paths: list[Path] = []
    labels: list[str] = []
    for folder in identity_folders(dataset, limit):
        for p in identity_images(folder):
            paths.append(p)
            labels.append(folder.name)
    return paths, labels


def unique_paths(groups: Sequence[Sequence[Path]]) -> list[Path]:
    """Paths of several lists, each once, first occurrence order."""
    seen: dict[Path, None] = {}
    for g in groups:
        for p in g:
            seen.setdefault(p, None)
    return list(seen)
