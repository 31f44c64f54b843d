"""Peak memory of one enrolment run: the first N LFW images into a fresh home on SQLite.

`Enroller.run` keeps a bounded window of images in flight, so its peak RSS should not grow with
the size of the run. Run under ``/usr/bin/time -v`` as well if you want the kernel's figure; this
prints ``ru_maxrss`` of the process (models included) and the throughput of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from pathlib import Path

from retroface.config import Settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.roles import Role
from retroface.gallery.enrol import items_from_paths

DATA = Path(os.environ.get("RETROFACE_TEST_DATA", Path(__file__).parents[1] / "../shared/data"))
#: The run's principal; enrolment needs the admin role (the service checks it).
ADMIN = Principal(id=1, username="admin", roles=frozenset({Role.ADMIN}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DATA / "lfw")
    ap.add_argument("-n", type=int, default=5000, help="first N image files (sorted by path)")
    args = ap.parse_args()
    files = sorted(args.data.rglob("*.jpg"))[: args.n]
    items = list(items_from_paths(files))
    with tempfile.TemporaryDirectory() as home:
        ctx = AppContext(Settings(home=Path(home), database_url=None))
        try:
            enroller = ctx.enroller(require_quality=False, multi_face="main")
            summary = enroller.run(ADMIN, items)
        finally:
            ctx.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "images": len(items),
                "workers": enroller.workers,
                "peak_rss_mib": round(peak_mib, 1),
                **summary.model_dump(mode="json"),
                "rejected": len(summary.rejected),
            }
        )
    )


if __name__ == "__main__":
    main()
