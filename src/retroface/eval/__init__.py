"""Accuracy evaluation: NIST-style 1:N / 1:1 metrics, plots and reports.

Only the numpy-based metrics are re-exported here, so importing :mod:`retroface.eval` stays
cheap; plots (matplotlib) and reports (Jinja2, PDF) live in :mod:`retroface.eval.plots` and
:mod:`retroface.eval.report`.
"""

from retroface.eval.metrics import *  # noqa: F403  (the public names are metrics.__all__)
from retroface.eval.metrics import __all__ as __all__
