"""Oversight: transparency and DPIA reports, audit-log verification and export.

A report reveals activity across every case and an export hands over the whole audit log, so who
looked, and at what, belongs in the trail: this service checks the caller's role and writes the
audit record itself, so the CLI and the API cannot produce a report without leaving one. Refused
attempts are audited too (``<action>.refused``).

Roles (the same as the API's access matrix): reports and verification, auditor or admin; an
export of the log, auditor only (the log records what admins do, so its custodian is the auditor);
the monthly oversight figures, which name nobody, also the oversight role (an ethics panel or a
regulator), which may see nothing else.

Verification is not itself recorded: it reads nothing about people or cases, and appending to a
chain that was just found broken would only muddy the evidence; a refused verification is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retroface.audit.guard import Guard
from retroface.core.access import Principal
from retroface.core.clock import utcnow
from retroface.core.errors import InvalidInputError
from retroface.core.roles import Role
from retroface.governance import oversight_figures, reports
from retroface.governance.audit_browse import AuditPage, AuditQuery, check_query, read_page
from retroface.governance.views import OversightFigures

if TYPE_CHECKING:
    from retroface.audit.chain import VerifyResult
    from retroface.audit.log import AuditLog
    from retroface.config import Settings
    from retroface.gallery.service import GalleryService
    from retroface.governance.policy import GovernancePolicy
    from retroface.storage.db import Database
    from retroface.vision.types import FaceEngine

REPORT_ROLES = (Role.AUDITOR, Role.ADMIN)
VERIFY_ROLES = (Role.AUDITOR, Role.ADMIN)
EXPORT_ROLES = (Role.AUDITOR,)
FIGURES_ROLES = (Role.OVERSIGHT, Role.AUDITOR, Role.ADMIN)
#: Reading the log on screen: as its export, the auditor's (it records what admins do).
BROWSE_ROLES = (Role.AUDITOR,)


class OversightService:
    """Reports and audit-log access for oversight; it is also the reports' data source.

    The attributes ``db``, ``gallery``, ``clock``, ``settings``, ``policy``, ``audit`` and
    ``engine`` are what :class:`retroface.governance.reports.DpiaSource` reads. The engine is
    passed as a function so that building the service loads no model; only a DPIA asks for it.
    """

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        gallery: GalleryService,
        policy: GovernancePolicy,
        settings: Settings,
        engine: Callable[[], FaceEngine],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.audit = audit
        self.gallery = gallery
        self.policy = policy
        self.settings = settings
        self._engine = engine
        self.clock = clock
        self.guard = Guard(db, audit.record, clock)

    @property
    def engine(self) -> FaceEngine:
        return self._engine()

    # ------------------------------------------------------------------ reports

    def transparency(
        self,
        principal: Principal,
        start: datetime,
        end: datetime,
        *,
        html: Path | None = None,
        via: str | None = None,
    ) -> reports.TransparencyReport:
        """Activity in ``[start, end)``; with ``html``, also written there as a report."""
        action = "report.transparency"
        self.guard.require(principal, *REPORT_ROLES, action=action, object_type="report")
        report = reports.transparency(self, start, end)
        if html is not None:
            _write(reports.render_transparency_html(report), html)
        period = {"start": report["period"]["start"], "end": report["period"]["end"]}
        self._record(principal, action, html, via, period)
        return report

    def dpia(
        self, principal: Principal, *, html: Path | None = None, via: str | None = None
    ) -> reports.DpiaReport:
        """The DPIA facts as the system holds them now; with ``html``, also written there."""
        action = "report.dpia"
        self.guard.require(principal, *REPORT_ROLES, action=action, object_type="report")
        report = reports.dpia(self)
        if html is not None:
            _write(reports.render_dpia_html(report), html)
        self._record(principal, action, html, via, {})
        return report

    def monthly(
        self, principal: Principal, months: int = 12, *, via: str | None = None
    ) -> OversightFigures:
        """Aggregated figures for the last ``months`` calendar months (UTC, the current one so
        far last): no faces, no names, no case references (see
        :mod:`retroface.governance.oversight_figures`). Audited as ``report.oversight``."""
        action = "report.oversight"
        self.guard.require(principal, *FIGURES_ROLES, action=action, object_type="report")
        figures = oversight_figures.monthly(self, months)
        period = {
            "months": months,
            "start": figures.period_start.isoformat(),
            "end": figures.period_end.isoformat(),
        }
        self._record(principal, action, None, via, period)
        return figures

    def _record(
        self,
        principal: Principal,
        action: str,
        html: Path | None,
        via: str | None,
        details: dict[str, Any],
    ) -> None:
        with self.db.session() as s:
            self.audit.record(
                s,
                actor=principal,
                action=action,
                object_type="report",
                object_id=str(html) if html else None,
                details={**details, "html": str(html) if html else None, "via": via},
                ts=self.clock(),
            )

    # ------------------------------------------------------------------ the audit log

    def verify_audit(self, principal: Principal, against: Path | None = None) -> VerifyResult:
        """Check the hash chain, the signed checkpoints, the anchor and, with ``against``, that
        an earlier export is still held unchanged (not recorded; see the module)."""
        self.guard.require(principal, *VERIFY_ROLES, action="audit.verify")
        return self.audit.verify(against=against)

    def audit_records(
        self,
        principal: Principal,
        query: AuditQuery | None = None,
        *,
        offset: int = 0,
        limit: int = 50,
        via: str | None = None,
    ) -> AuditPage:
        """One page of the log matching ``query``, newest first (auditor): the log browser.

        Recorded as ``audit.query`` with the filters used (reading the log is a read of every
        case in it); decisions of unsettled reviews stay hidden from an auditor who is also a
        reviewer (see :mod:`retroface.governance.audit_browse`).
        """
        action = "audit.query"
        query = query or AuditQuery()
        check_query(query)
        self.guard.require(principal, *BROWSE_ROLES, action=action)
        with self.db.session() as s:
            page = read_page(s, principal, query, offset, limit)
            self.audit.record(
                s,
                actor=principal,
                action=action,
                details={
                    **query.used(),
                    "offset": offset,
                    "returned": len(page.items),
                    "via": via,
                },
                ts=self.clock(),
            )
        return page

    def export_audit(
        self,
        principal: Principal,
        path: Path,
        *,
        via: str | None = None,
        destination: str | None = None,
    ) -> dict[str, Any]:
        """Write the log to ``path`` for offline verification; the export is recorded after it
        (so it is the first record the next export contains).

        ``destination`` is what the record names as where the export went (default ``path``; the
        API zips a temporary folder and names the download instead).
        """
        action = "audit.export"
        where = str(path) if destination is None else destination
        self.guard.require(principal, *EXPORT_ROLES, action=action, object_id=where)
        manifest = self.audit.export(path)
        with self.db.session() as s:
            self.audit.record(
                s,
                actor=principal,
                action=action,
                object_id=where,
                details={"records": manifest.get("records"), "via": via},
                ts=self.clock(),
            )
        return manifest


def _write(text: str, path: Path) -> None:
    try:
        reports.write_text(text, path)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {path}: {exc.strerror or exc}") from None
