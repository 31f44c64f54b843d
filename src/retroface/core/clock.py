"""Time: one injectable clock, so time windows (urgent authorisation, retention) are testable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Timezone-aware now in UTC: every stored time is UTC."""
    return datetime.now(UTC)
