"""The governance policy in force: offence categories, time limits and retention periods.

Values come from settings (``RETROFACE_*``) so a force can set them to its own policy document;
they are reported verbatim in the DPIA facts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from retroface.core.errors import InvalidInputError

DEFAULT_OFFENCE_CATEGORIES = (
    "homicide",
    "sexual-offence",
    "violence-with-injury",
    "robbery",
    "burglary",
    "kidnap",
    "terrorism",
    "child-sexual-exploitation",
    "serious-fraud",
    "missing-person",
    "public-order-serious",
)

#: Audit records must outlive what they describe; UK DPA 2018 s62 logs are kept for review.
MIN_AUDIT_RETENTION_DAYS = 183
MAX_URGENT_WINDOW_HOURS = 48.0
#: An authorisation is reviewed at least yearly: neither the default nor a decision may exceed it.
MAX_AUTHORISATION_DAYS = 365


@dataclass(frozen=True)
class GovernancePolicy:
    offence_categories: tuple[str, ...] = DEFAULT_OFFENCE_CATEGORIES
    urgent_window_hours: float = 48.0
    authorisation_days: float = 90.0
    probe_retention_days: float = 90.0
    search_record_retention_days: float = 365.0
    audit_retention_days: float = 2190.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.audit_retention_days < MIN_AUDIT_RETENTION_DAYS:
            raise InvalidInputError(
                f"audit retention must be at least {MIN_AUDIT_RETENTION_DAYS} days (6 months)"
            )
        if not 0 < self.urgent_window_hours <= MAX_URGENT_WINDOW_HOURS:
            raise InvalidInputError(
                "the urgent window must be between 0 and 48 hours: EU AI Act Art 26(10) requires "
                "authorisation of an urgent use within 48 hours at the latest"
            )
        if not 0 < self.authorisation_days <= MAX_AUTHORISATION_DAYS:
            raise InvalidInputError(
                f"the authorisation period must be between 0 and {MAX_AUTHORISATION_DAYS} days"
            )
        if self.probe_retention_days <= 0 or self.search_record_retention_days <= 0:
            raise InvalidInputError("retention periods must be positive")

    @property
    def urgent_window(self) -> timedelta:
        return timedelta(hours=self.urgent_window_hours)

    @property
    def probe_retention(self) -> timedelta:
        return timedelta(days=self.probe_retention_days)

    @property
    def search_record_retention(self) -> timedelta:
        return timedelta(days=self.search_record_retention_days)

    def check_offence(self, category: str) -> str:
        if category not in self.offence_categories:
            raise InvalidInputError(
                f"offence category {category!r} is not configured; choose one of: "
                + ", ".join(self.offence_categories)
            )
        return category

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["offence_categories"] = list(self.offence_categories)
        return data
