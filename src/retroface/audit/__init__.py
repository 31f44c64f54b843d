"""Tamper-evident audit trail: hash-chained records, signed checkpoints, checkable exports."""

from retroface.audit.chain import VerifyResult
from retroface.audit.log import DEFAULT_CHECKPOINT_EVERY, AuditLog, verify_export

__all__ = ["DEFAULT_CHECKPOINT_EVERY", "AuditLog", "VerifyResult", "verify_export"]
