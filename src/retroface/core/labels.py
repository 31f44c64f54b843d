"""Words the system must always show with a result, wherever it is shown."""

from __future__ import annotations

#: A candidate list is a lead for trained reviewers, never an identification (College of Policing
#: APP; EU AI Act Art 14): every result, export and page carries this label.
LEAD_LABEL = "investigative lead — not an identification"
