"""Video scans as background jobs: the local runner, the Redis (RQ) runner with progress, cancel
and resume after a killed worker, and scale-out over a real two-node Ray cluster.

Needs Redis on 127.0.0.1:6379 (``RETROFACE_TEST_REDIS_URL``); like PostgreSQL it is part of what
CI proves, so it is a failure there and a skip elsewhere when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from retroface.cli import video_cmds
from retroface.cli.session import state
from retroface.config import Settings
from retroface.context import AppContext
from retroface.jobs.handlers import register_handlers
from retroface.jobs.local import LocalJobRunner
from retroface.jobs.redis_queue import RedisJobRunner
from retroface.jobs.video import scan_batch
from retroface.vision.types import FaceEngine

REDIS_URL = os.environ.get("RETROFACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HAMILTON = "video/short_hamilton_clip.mp4"
WALKING = "video/intel_face-demographics-walking_480x270.mp4"


def _need(what: str, reason: str) -> None:
    """Missing services or packages fail under CI (they are part of what it proves), else skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}: {reason} (required in CI)")
    pytest.skip(f"{what}: {reason}")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _redis_available() -> bool:
    try:
        from redis import Redis

        return bool(Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except Exception:
        return False


@pytest.fixture
def runner(app: AppContext) -> Iterator[RedisJobRunner]:
    """A Redis runner on a queue of its own, with the job handlers bound to ``app``'s services."""
    if not _importable("rq"):
        _need("rq", "not installed (pip install 'retroface[redis]')")
    if not _redis_available():
        _need("Redis", f"not reachable at {REDIS_URL}")
    queue = f"retroface-test-{uuid.uuid4().hex[:8]}"
    r = RedisJobRunner(app.job_store, REDIS_URL, queue, checkpoint_root=app.home / "jobs")
    register_handlers(r, app.job_services)
    yield r
    from rq import Worker

    for worker in Worker.all(queue=r.queue):  # including the one the test killed
        worker.register_death()
    r.queue.delete(delete_jobs=True)
    for key in r.redis.scan_iter(f"rq:*{queue}*"):
        r.redis.delete(key)
    r.stop()


def test_local_runner_scans_a_video(app: AppContext, data_dir: Path, tmp_path: Path) -> None:
    local = LocalJobRunner(app.job_store)
    register_handlers(local, app.job_services)
    job = local.submit(
        "video.scan", {"path": str(data_dir / WALKING), "export_dir": str(tmp_path)}, "olive"
    )
    local.wait_idle(120)
    data = app.job_store.get(job)
    assert data.status == "succeeded", data.error
    assert (data.progress, data.total) == (1000, 1000)
    assert len(data.result["tracks"]) == 2 and len(data.result["exported"]) == 2
    local.stop()


def test_redis_runner_submit_progress_and_cancel(
    app: AppContext, runner: RedisJobRunner, data_dir: Path
) -> None:
    done = runner.submit("video.scan", {"path": str(data_dir / WALKING)}, "olive")
    never = runner.submit("video.scan", {"path": str(data_dir / WALKING)}, "olive")
    runner.cancel(never)  # queued: it never starts
    # a long scan, cancelled by another client once it reports progress
    long = runner.submit("video.scan", {"path": str(data_dir / HAMILTON), "fps": 15}, "olive")
    seen: dict[str, Any] = {}

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = app.job_store.get(long)
            if job.status == "running" and job.progress > 0:
                seen["progress"] = job.progress
                runner.cancel(long)
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    runner.work(burst=True)
    canceller.join()
    assert app.job_store.get(done).status == "succeeded"
    assert len(app.job_store.get(done).result["tracks"]) == 2
    assert app.job_store.get(never).status == "cancelled"
    assert 0 < seen["progress"] < 1000
    assert app.job_store.get(long).status == "cancelled"
    assert app.job_store.get(long).result is None
    with pytest.raises(ValueError, match="no handler"):
        runner.submit("video.nope", {}, "olive")


def test_killed_batch_resumes_without_rescanning(
    app: AppContext, runner: RedisJobRunner, data_dir: Path, tmp_path: Path, database_url: str
) -> None:
    """Kill the worker (SIGKILL) after the first video, resume: only the rest is scanned."""
    folder = tmp_path / "exhibits"
    folder.mkdir()
    for name, src in (("1_walk.mp4", WALKING), ("2_speech.mp4", HAMILTON), ("3_walk.mp4", WALKING)):
        (folder / name).symlink_to(data_dir / src)
    job_id = runner.submit("video.scan_batch", {"folder": str(folder), "fps": 5.0}, "olive")
    checkpoints = app.home / "jobs" / str(job_id)
    env = {
        **os.environ,
        "RETROFACE_HOME": str(app.home),
        "RETROFACE_DATABASE_URL": database_url,
        "RETROFACE_REDIS_URL": REDIS_URL,
        "RETROFACE_THREADS": "1",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "retroface.jobs.redis_queue", "--queue", runner.queue.name],
            env=env,
            start_new_session=True,  # its own process group, so the kill takes all of it
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not list(checkpoints.glob("00000-*.json")):
            if worker.poll() is not None:
                pytest.fail(f"worker exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the worker never finished the first video")
            time.sleep(0.02)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finished = sorted(p.name for p in checkpoints.glob("0000*.json"))
    assert app.job_store.get(job_id).status == "running"  # left behind by the dead worker
    assert len(finished) < 3  # killed mid-batch

    runner.resume(job_id, force=True)
    runner.work(burst=True)
    job = app.job_store.get(job_id)
    assert job.status == "succeeded", job.error
    result = job.result
    assert result["attempt"] == 2 and result["total"] == 3
    assert [Path(v["path"]).name for v in result["videos"]] == [
        "1_walk.mp4",
        "2_speech.mp4",
        "3_walk.mp4",
    ]
    done_first = len(finished)
    assert len(result["skipped"]) == done_first
    # what the killed worker finished was not scanned again; the rest was, in attempt 2
    assert [v["attempt"] for v in result["videos"]] == [1] * done_first + [2] * (3 - done_first)
    assert [len(v["tracks"]) for v in result["videos"]][::2] == [2, 2]
    assert (job.progress, job.total) == (3, 3)
    assert not checkpoints.exists()  # removed once the result was stored


# ------------------------------------------------------------------------------ Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A head and a second node (one CPU each) on loopback; always stopped afterwards."""
    # This process's client must not swap 127.0.0.1 for the host's routable address (Ray does
    # unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 when it is imported), while `ray start` refuses
    # to join a second node with that switch set: set it here, keep it from the nodes.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not _importable("ray"):
        _need("ray", "not installed (pip install 'retroface[ray]')")
    # Ray 2.60 turns token authentication on for a cluster that ray.init starts (as the sharded
    # index tests do; it writes ~/.ray/auth_token), and `ray start --head` turns it on when that
    # file exists, while `ray start --address` and a client follow their own setting: nodes and
    # this process's client must agree, so the nodes are started in the mode the client has.
    from ray._raylet import AuthenticationMode, get_authentication_mode

    auth = "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "disabled"
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port = _free_port()
    common = [
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]
    # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is set above, before Ray is first imported.)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env |= {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": auth}
    try:
        subprocess.run(
            [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
            check=True,
            env=env,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [ray_bin, "start", f"--address=127.0.0.1:{port}", *common],
            check=True,
            env=env,
            capture_output=True,
            timeout=120,
        )
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120, env=env)


def _comparable(video: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on where a video was scanned (timings and machine excluded)."""
    return {
        "path": video["path"],
        "samples": video["samples"],
        "faces": video["faces"],
        "decode": video["decode"],
        "tracks": [
            {
                **{k: t[k] for k in ("id", "faces", "frames", "first_s", "last_s", "segments")},
                "best_t": t["best_shot"]["t"],
                "best_eyes": round(t["best_shot"]["quality"]["inter_eye_px"]),
            }
            for t in video["tracks"]
        ],
    }


def test_scan_batch_on_a_two_node_ray_cluster(
    ray_cluster: str, data_dir: Path, tmp_path: Path, engine: FaceEngine
) -> None:
    folder = tmp_path / "exhibits"
    folder.mkdir()
    for name, src in (("a.mp4", WALKING), ("b.mp4", WALKING), ("c.mp4", HAMILTON)):
        (folder / name).symlink_to(data_dir / src)
    (folder / "d.mp4").write_text("not a video")
    ctx = AppContext(Settings(home=tmp_path / "home"), engine=engine)
    state.__dict__["ctx"] = ctx
    try:
        result = CliRunner().invoke(
            video_cmds.app, ["scan-batch", str(folder), "--ray", ray_cluster, "--json"]
        )
    finally:
        state.__dict__.pop("ctx", None)
        ctx.close()
    assert result.exit_code == 0, result.output
    on_ray = json.loads(result.stdout)
    videos = on_ray["videos"]
    assert [Path(v["path"]).name for v in videos] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    assert "d.mp4" in videos[3]["error"] and on_ray["errors"] == 1
    nodes = {v["worker"]["ray_node"] for v in videos[:3]}
    assert len(nodes) == 2  # both nodes scanned videos

    local = scan_batch(sorted(folder.iterdir()), engine=engine, fps=5.0)
    assert [_comparable(v) for v in videos[:3]] == [_comparable(v) for v in local["videos"][:3]]
    assert videos[3]["error"] == local["videos"][3]["error"]


# ------------------------------------------------------------------------------ wiring


def test_every_job_kind_is_registered_once_by_the_context(
    app: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The context registers the handlers (one module binds them); ``redis_url`` reads the
    settings it is given, never the environment."""
    from retroface.jobs.base import JobRunner
    from retroface.jobs.redis_queue import DEFAULT_URL, redis_url

    runner: JobRunner = app.jobs
    assert isinstance(runner, LocalJobRunner)
    assert set(runner.handlers) == {"gallery.enrol", "video.scan", "video.scan_batch"}
    monkeypatch.setenv("RETROFACE_REDIS_URL", "redis://elsewhere:1/0")
    assert redis_url(Settings(home=app.home, redis_url=None)) == DEFAULT_URL
    assert redis_url(Settings(home=app.home, redis_url=REDIS_URL)) == REDIS_URL
