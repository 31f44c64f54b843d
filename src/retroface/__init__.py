"""retroface: open, accountable retrospective facial recognition."""

__version__ = "0.1.0"
