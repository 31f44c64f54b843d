"""retroface: open, accountable retrospective facial recognition.

The Python API (see docs/python-api.md) is imported on first use, so that ``import retroface``
(and every CLI start) stays cheap: ``retroface.open_home``, ``retroface.compare_faces``,
``retroface.detect_faces``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "compare_faces", "detect_faces", "open_home"]


def __getattr__(name: str) -> Any:
    if name in ("open_home", "compare_faces", "detect_faces", "Home"):
        from retroface import home

        return getattr(home, name)
    raise AttributeError(f"module 'retroface' has no attribute {name!r}")
