"""Input limits shared by every front end: text, references, file names, ids and periods.

The services call these before anything reaches the database, so the CLI and the API refuse the
same input with the same message, and both stores behave alike. Without them PostgreSQL refused
NUL bytes and over-long strings with a driver error (a 500), SQLite refused integers of 2^63 and
more (``OverflowError``, a 500), and a case reference could hold a right-to-left override or a
zero-width space, so two references that look identical on screen named two different cases.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime

from retroface.core.errors import InvalidInputError

#: Largest id the API accepts: PostgreSQL's ``integer`` columns stop at 2^31 - 1.
MAX_ID = 2**31 - 1
#: Largest list offset accepted (far beyond any real list; keeps SQL ``OFFSET`` in range).
MAX_OFFSET = 10**9
#: File names are cut to this many UTF-8 bytes (the usual file-system limit).
MAX_FILENAME_BYTES = 255
#: Years a report period may span: the system's data cannot predate 1970 (Unix time), and
#: years past 2100 are typing mistakes, not plans.
MIN_YEAR, MAX_YEAR = 1970, 2100

_MULTILINE_ALLOWED = frozenset("\n\t\r")


def _bad_char(value: str, allowed: frozenset[str]) -> str | None:
    """The first character that no stored text may hold, or None.

    Control characters (Cc: NUL, escapes, newlines where not allowed) and lone surrogates (Cs:
    valid in JSON, not encodable as UTF-8, so each driver fails on them differently).
    """
    for ch in value:
        if ch in allowed:
            continue
        if unicodedata.category(ch) in ("Cc", "Cs"):
            return ch
    return None


def clean_text(
    value: object,
    field: str,
    max_len: int,
    *,
    multiline: bool = False,
    required: bool = True,
) -> str:
    """``value`` if it is text the stores can hold, else :class:`InvalidInputError`.

    NUL and other control characters are refused (newline, tab and carriage return only where
    ``multiline``); the length is counted in characters, as the columns are declared.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{field} must be text")
    bad = _bad_char(value, _MULTILINE_ALLOWED if multiline else frozenset())
    if bad is not None:
        raise InvalidInputError(f"{field} contains a control character (U+{ord(bad):04X})")
    if len(value) > max_len:
        raise InvalidInputError(f"{field} is longer than {max_len} characters")
    if required and not value.strip():
        raise InvalidInputError(f"{field} must not be empty")
    return value


def optional_text(value: str | None, field: str, max_len: int, *, multiline: bool = False) -> None:
    """:func:`clean_text` for a field that may be absent (None) or empty."""
    if value is not None:
        clean_text(value, field, max_len, multiline=multiline, required=False)


def reference(value: object, field: str = "reference", max_len: int = 100) -> str:
    """A reference (case, subject) in one canonical form, safe to show and to compare.

    NFKC folds look-alike compatibility forms (full-width letters, ligatures, non-breaking
    spaces) into one spelling; format characters (Unicode category Cf: bidirectional overrides,
    zero-width spaces and joiners) are refused, since they make two different references look
    the same; separators other than the plain space (line and paragraph separators) too.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{field} must be text")
    clean_text(value, field, max_len * 4, required=False)  # control characters, before NFKC
    text = unicodedata.normalize("NFKC", value).strip()
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cf", "Cc", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise InvalidInputError(
                f"{field} contains an invisible or formatting character (U+{ord(ch):04X})"
            )
    if not text:
        raise InvalidInputError(f"{field} must not be empty")
    if len(text) > max_len:
        raise InvalidInputError(f"{field} is longer than {max_len} characters")
    return text


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A client-supplied file name reduced to a harmless last component.

    Drops any folder part (``/`` or ``\\``), control and format characters, refuses ``.`` and
    ``..`` (falling back to ``default``) and cuts the name to 255 UTF-8 bytes, keeping its
    extension, so it can be stored, shown and used as a file name anywhere.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    base = base.strip()
    if base in ("", ".", ".."):
        return default
    if len(base.encode("utf-8")) <= MAX_FILENAME_BYTES:
        return base
    stem, dot, ext = base.rpartition(".")
    suffix = f".{ext}" if dot and stem and len(ext.encode("utf-8")) <= 16 else ""
    head = base[: len(base) - len(suffix)] if suffix else base
    room = MAX_FILENAME_BYTES - len(suffix.encode("utf-8"))
    cut = head.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return (cut + suffix) or default


def check_id(value: object, field: str = "id") -> int:
    """An id within what both stores can hold (1 to 2^31 - 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise InvalidInputError(f"{field} must be a whole number from 1 to {MAX_ID}")
    return value


def check_period(start: datetime, end: datetime) -> None:
    """A report period within 1970-2100 (year 1 or 9999 overflowed date arithmetic: a 500)."""
    for label, when in (("start", start), ("end", end)):
        if not MIN_YEAR <= when.year <= MAX_YEAR:
            raise InvalidInputError(
                f"period {label} must fall between the years {MIN_YEAR} and {MAX_YEAR}"
            )


def case_reference(value: object) -> str:
    """A case reference (crime numbers: ``CR/123/26``), in its canonical form."""
    return reference(value, "case reference", 100)


def subject_reference(value: object) -> str:
    """A gallery subject's reference, checked but not rewritten.

    Unlike case references these are not NFKC-normalised: they come from folder names and
    manifests of existing collections, and rewriting them would orphan subjects already held.
    """
    return clean_text(value, "subject reference", 200)


def check_page(offset: int, limit: int, max_limit: int = 10_000) -> None:
    """List paging within what both stores accept as ``OFFSET``/``LIMIT``."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInputError(f"offset must be a whole number from 0 to {MAX_OFFSET}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise InvalidInputError(f"limit must be a whole number from 1 to {max_limit}")
