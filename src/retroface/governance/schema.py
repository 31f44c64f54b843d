"""The database schema's revision, and the audit record of every change to it.

``retroface db upgrade`` (and the first use of a database by any retroface process) runs the
Alembic migrations to the newest revision (:meth:`retroface.storage.db.Database.migrate`). A schema
change alters what the system of record can hold, so it is audited like any administrative act:
``schema.upgrade`` by the system, naming both revisions and who ran it. The record is written
just after the migration's own transaction commits (the audit tables may be what it created); a
no-op upgrade writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from retroface.core.access import SYSTEM_ACTOR, AuditFn
from retroface.core.clock import Clock, utcnow
from retroface.storage.db import Database, SchemaChange


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: its revision (None: empty) and the newest this version ships."""

    revision: str | None
    head: str
    dialect: str

    @property
    def at_head(self) -> bool:
        return self.revision == self.head


def schema_state(db: Database) -> SchemaState:
    """Read the revision without migrating (``retroface db current``)."""
    return SchemaState(db.schema_revision(), db.head_revision(), db.engine.dialect.name)


class SchemaService:
    def __init__(self, db: Database, audit: AuditFn, clock: Clock = utcnow) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock

    def record_upgrade(self, change: SchemaChange, by: str) -> bool:
        """Audit ``change`` (``schema.upgrade``) if it changed anything; True if it did.

        ``by`` says who or what ran it (an operating-system account, "retroface serve"): a
        migration runs before anyone can sign in, so the actor is the system.
        """
        if not change.changed:
            return False
        with self.db.session() as s:
            self.audit(
                s,
                actor=SYSTEM_ACTOR,
                action="schema.upgrade",
                object_type="schema",
                object_id=change.after,
                details={
                    "from": change.before,
                    "to": change.after,
                    "dialect": change.dialect,
                    "by": by[:200],
                },
                ts=self.clock(),
            )
        return True
