"""The RQ worker process: a composition root, like the CLI and the API.

``python -m retroface.jobs.worker`` (or the documented ``python -m retroface.jobs.redis_queue``)
builds an :class:`~retroface.context.AppContext` from the ``RETROFACE_*`` settings and works its
Redis queue with the context's runner, whose handlers the context registered (once). This is the
only module under ``retroface.jobs`` that may import the context; ``tests/test_architecture.py``
names it as a composition root.
"""

from __future__ import annotations

import argparse
import logging

from retroface.config import Settings, get_settings
from retroface.context import AppContext
from retroface.jobs.redis_queue import DEFAULT_QUEUE, RUNNERS, RedisJobRunner, redis_url

log = logging.getLogger(__name__)


def runner_from_settings(
    queue: str = DEFAULT_QUEUE, url: str | None = None, settings: Settings | None = None
) -> RedisJobRunner:
    """This process's runner for ``queue``, wired from the settings like the application."""
    base = settings or get_settings()
    wired = base.model_copy(update={"redis_url": url or redis_url(base), "redis_queue": queue})
    runner = AppContext(wired).jobs
    assert isinstance(runner, RedisJobRunner)  # redis_url is set, so the context chose Redis
    return runner


def execute(queue: str, job_id: int) -> None:
    """What RQ runs: the job, with the handlers of this process's runner for ``queue``."""
    runner = RUNNERS.get(queue)
    if runner is None:  # started by ``rq worker``, not by :func:`main`
        runner = RUNNERS[queue] = runner_from_settings(queue)
    runner.run_one(job_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run retroface background jobs from Redis.")
    parser.add_argument("--url", default=None, help="Redis URL (default RETROFACE_REDIS_URL)")
    parser.add_argument("--queue", default=DEFAULT_QUEUE)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument(
        "--resume-after",
        type=float,
        default=None,
        help="first resume jobs left running and silent for this many seconds",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    runner = runner_from_settings(args.queue, args.url)
    if args.resume_after is not None:
        resumed = runner.resume_abandoned(args.resume_after)
        if resumed:
            log.info("resumed jobs %s", resumed)
    runner.work(burst=args.burst)


if __name__ == "__main__":
    main()
