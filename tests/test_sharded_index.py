"""The gallery index sharded over Ray actors gives exactly the single index's candidate lists.

A real three-node Ray cluster on loopback (a head and two worker nodes, each its own raylet with
its own resources, all bound to 127.0.0.1), started once for the module. Templates are real: LFW
faces embedded by the real engine, among synthetic clustered distractors, with removals. The
sharded index's top-k (ids and scores) must equal the single ``FlatIndex``'s on the same data,
and a search through the real search service must give the same candidate list with shards as
without. A lost node must give a stable error, never a silently short list, and the next search
rebuilds the shards from the database on the nodes left.
"""

from __future__ import annotations

import os
import time

# Before Ray is imported anywhere in this process: Ray replaces a loopback node address with the
# host's routable one unless this is off, and the cluster below must stay on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests import test_governance as gov
from tests.conftest import ADMIN, add_team, enrol_people

from retroface.context import AppContext
from retroface.core.errors import RetrofaceError
from retroface.gallery.enrol import items_from_paths
from retroface.media.images import load_image
from retroface.search import sharded
from retroface.search.index import FlatIndex, index_from_bytes, new_index
from retroface.search.sharded import (
    ShardedIndex,
    ShardUnavailableError,
    merge_top_k,
)
from retroface.vision.engines import primary_face
from retroface.vision.types import FaceEngine

DIM = 512
SHARDS = 3
DISTRACTORS = 20_000
K = 50


def _need_ray() -> Any:
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray: not installed (required in CI)")
        pytest.skip("ray: not installed (pip install 'retroface[ray]')")
    return ray


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """The single index searches with one FAISS thread here, as every shard does: FAISS's
    single-query kernel sums in another order with two threads than with one (measured: scores
    apart by up to 2.4e-7 on the same index), and the comparison is bit for bit."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@dataclass
class ClusterInfo:
    address: str
    cluster: Any  # ray.cluster_utils.Cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterInfo]:
    """Head + two worker nodes on loopback, one CPU and one named resource each."""
    ray = _need_ray()
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before loopback was pinned"
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80_000_000}
    c = Cluster(
        initialize_head=True,
        head_node_args={**node, "include_dashboard": False, "resources": {"node0": 1}},
    )
    try:
        c.add_node(**node, resources={"node1": 1})
        c.add_node(**node, resources={"node2": 1})
        ray.init(address=c.address, log_to_driver=False, configure_logging=False)
        yield ClusterInfo(c.address, c)
    finally:
        ray.shutdown()
        c.shutdown()


@dataclass(frozen=True)
class Faces:
    gallery: np.ndarray  # first image of each LFW person
    probes: np.ndarray  # another image of the same people, in the same order


@pytest.fixture(scope="module")
def faces(engine: FaceEngine, data_dir: Path) -> Faces:
    """Real templates: 40 LFW people with two images or more, embedded once."""
    gallery, probes = [], []
    for folder in sorted((data_dir / "lfw").iterdir()):
        paths = sorted(folder.glob("*.jpg"))
        if len(paths) < 2:
            continue
        pair = []
        for path in paths[:2]:
            img = load_image(path)
            face = primary_face(engine.analyse(img), img.shape)
            if face is None:
                break
            pair.append(np.asarray(face.embedding, dtype=np.float32))
        if len(pair) == 2:
            gallery.append(pair[0])
            probes.append(pair[1])
        if len(gallery) == 40:
            return Faces(np.stack(gallery), np.stack(probes))
    pytest.fail("not enough LFW people with two detectable images")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _distractors(n: int) -> np.ndarray:
    """Clustered like faces (as bench/index_search.py): unrelated pairs at cosine ~0.2."""
    rng = np.random.default_rng(7)
    centres = _unit(rng.standard_normal((200, DIM), dtype=np.float32))
    noise = _unit(rng.standard_normal((n, DIM), dtype=np.float32))
    return _unit(0.45 * centres[rng.integers(0, 200, n)] + noise)


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(a[1], b[1])  # the same ids in the same order
    np.testing.assert_array_equal(a[0], b[0])  # and bit for bit the same scores


# ------------------------------------------------------------------------------ no Ray


def test_merge_is_by_score_then_id() -> None:
    """The k best of the parts, ties by the lower id, empty slots last; equal to a full sort."""
    parts = [
        (np.array([[0.75, 0.5, 0.5]], np.float32), np.array([[7, 4, 10]])),
        (np.array([[0.5, 0.2, -np.inf]], np.float32), np.array([[1, 3, -1]])),
        (np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64)),
    ]
    scores, ids = merge_top_k(parts, 1, 4)
    assert ids.tolist() == [[7, 1, 4, 10]] and scores.tolist() == [[0.75, 0.5, 0.5, 0.5]]
    _, ids = merge_top_k(parts, 1, 10)
    assert ids.tolist() == [[7, 1, 4, 10, 3, -1]]
    rng = np.random.default_rng(0)
    s = np.round(rng.random((5, 300)), 2).astype(np.float32)  # many ties
    i = rng.permutation(300)[None].repeat(5, 0)
    chunks = [(s[:, j : j + 100], i[:, j : j + 100]) for j in (0, 100, 200)]
    got_s, got_i = merge_top_k(chunks, 5, 30)
    for q in range(5):
        order = sorted(range(300), key=lambda j: (-s[q, j], i[q, j]))[:30]
        assert got_i[q].tolist() == i[q, order].tolist()
        assert got_s[q].tolist() == s[q, order].tolist()


def test_kind_names() -> None:
    assert sharded.sharded_kind("flat", 4) == "sharded4-flat"
    assert sharded.parse_kind("sharded4-ivf") == (4, "ivf")
    for bad in ("sharded0-flat", "shardedx-flat", "sharded4"):
        with pytest.raises(ValueError):
            sharded.parse_kind(bad)


_LOCAL = """
import json, os, re, subprocess, sys
import numpy as np
from retroface.search.sharded import ShardedIndex, connect
connect(None, min_cpus=2)
index = ShardedIndex(8, 2)
index.add(np.arange(10), np.eye(10, 8, dtype=np.float32))
assert index.search(np.eye(1, 8, dtype=np.float32), 3)[1].tolist() == [[0, 1, 2]]
children = {}
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
mine, todo = set(), [os.getpid()]
while todo:
    pid = todo.pop()
    mine.add(pid)
    todo += children.get(pid, [])
listening = []
for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
    pids = {int(p) for p in re.findall(r"pid=(\\d+)", line)}
    if pids & mine:
        listening.append(line.split()[3])
print(json.dumps({"nodes": len(set(index.nodes())), "listening": listening}))
"""


def test_a_local_start_listens_on_loopback_only(tmp_path: Path) -> None:
    """Without RETROFACE_RAY_ADDRESS the process starts Ray itself: every socket that Ray's
    processes listen on is bound to 127.0.0.1 (a fresh interpreter: Ray is process-wide)."""
    _need_ray()
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, "-c", _LOCAL],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 1 and len(report["listening"]) >= 3  # GCS, raylet, workers...
    hosts = {addr.rsplit(":", 1)[0] for addr in report["listening"]}
    assert hosts <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, report["listening"]


# ------------------------------------------------------------------------------ on the cluster


def test_sharded_equals_flat_on_real_faces_with_removals(
    cluster: ClusterInfo, faces: Faces
) -> None:
    """Shards on three nodes; the same ids and scores as one flat index, before and after
    removals, for single queries and a batch; the file round trip keeps them."""
    distractors = _distractors(DISTRACTORS)
    vectors = np.concatenate([faces.gallery, distractors])
    rng = np.random.default_rng(1)
    ids = rng.permutation(np.arange(1, 3 * len(vectors)))[: len(vectors)]  # sparse, shuffled
    mates = ids[: len(faces.gallery)]

    flat = FlatIndex(DIM)
    shards = ShardedIndex(DIM, SHARDS, cpus=1)  # one CPU each: exactly one shard per node
    try:
        assert len(set(shards.nodes())) == SHARDS  # really spread over the three nodes
        for start in range(0, len(ids), 7000):  # in batches, as the enroller adds
            flat.add(ids[start : start + 7000], vectors[start : start + 7000])
            shards.add(ids[start : start + 7000], vectors[start : start + 7000])
        assert shards.count() == flat.count() == len(ids)
        assert shards._counts == [int(np.sum(ids % SHARDS == s)) for s in range(SHARDS)]

        for q in faces.probes[:10]:
            _same(shards.search(q, K), flat.search(q, K))
        found = shards.search(faces.probes, K)
        _same(found, flat.search(faces.probes, K))
        # real faces: most probes find their own mate first, so the lists are about faces
        assert np.mean(found[1][:, 0] == mates) > 0.8

        # erasure: half the people and a thousand distractors, from both
        gone = np.concatenate([mates[::2], ids[len(mates) : len(mates) + 1000]])
        assert shards.remove(gone) == flat.remove(gone) == len(gone)
        assert shards.remove(gone) == 0  # already gone
        assert shards.count() == flat.count() == len(ids) - len(gone)
        after = shards.search(faces.probes, K)
        _same(after, flat.search(faces.probes, K))
        assert not np.isin(after[1], gone).any()  # the vectors are really gone
        for q in faces.probes[:5]:
            _same(shards.search(q, K), flat.search(q, K))
        # k of one
        small = faces.probes[:2]
        _same(shards.search(small, 1), flat.search(small, 1))

        # the index file: gathered, reloaded into fresh shards, same answers
        blob = shards.to_bytes()
        again = index_from_bytes(shards.kind, blob)
        try:
            assert again.count() == flat.count()
            _same(again.search(faces.probes, K), flat.search(faces.probes, K))
        finally:
            assert isinstance(again, ShardedIndex)
            again.close()
        with pytest.raises(ValueError, match="2 configured"):
            index_from_bytes("sharded2-flat", blob)  # another layout: the manager rebuilds
    finally:
        shards.close()


def test_empty_and_small_galleries(cluster: ClusterInfo, faces: Faces) -> None:
    """Fewer templates than shards or than k: the single index's shapes and answers."""
    index = new_index(sharded.sharded_kind("flat", SHARDS), DIM)
    assert isinstance(index, ShardedIndex)
    try:
        scores, found = index.search(faces.probes[:2], 10)
        assert scores.shape == found.shape == (2, 0)
        flat = FlatIndex(DIM)
        for target in (flat, index):
            target.add(np.array([5, 8]), faces.gallery[:2])  # both on shard 2
        _same(index.search(faces.probes[:3], 10), flat.search(faces.probes[:3], 10))
        with pytest.raises(ValueError, match="dimensions"):
            index.search(np.zeros((1, 128), np.float32), 5)
    finally:
        index.close()


def test_a_cluster_too_small_is_an_error_not_a_hang(cluster: ClusterInfo) -> None:
    """Shards that cannot be placed (each asks more CPUs than any node has) fail the start
    with the stable error within the start timeout, and are withdrawn."""
    import ray

    with pytest.raises(ShardUnavailableError, match=r"within 3 s \(start\)") as failed:
        ShardedIndex(DIM, 2, cpus=64, start_timeout_s=3)
    assert failed.value.code == "index_unavailable"
    waiting = [
        a
        for a in ray._private.state.actors().values()
        if a["ActorClassName"] == "Shard" and a["State"] not in ("ALIVE", "DEAD")
    ]
    assert waiting == []  # withdrawn, not left to take a place later


def _search(app: AppContext, who: Any, probe_id: int) -> list[dict[str, Any]]:
    result = app.searches.search(who, "C1", probe_id, top_k=20)
    return [c.model_dump() for c in result.candidates]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_search_service_same_candidates_with_and_without_shards(
    cluster: ClusterInfo, make_app: Callable[..., AppContext], data_dir: Path
) -> None:
    """One gallery enrolled from real images; the same probe searched by a process with one
    index and by one with three shards on the cluster: the same candidate lists, also after an
    erasure; then a lost shard fails the search (``index_unavailable``) and the next search
    builds the shards afresh (from the stored index, else the database) and answers as before."""
    single = make_app()
    team = add_team(
        single, {"admin": "admin", "olive": "operator", "arthur": "authoriser"}, gov.PASSWORD
    )
    enrol_people(single, data_dir)
    lfw = [p for p in sorted((data_dir / "lfw").iterdir()) if 3 <= len(list(p.iterdir())) <= 4]
    lfw = lfw[:16]
    single.enroller().run(ADMIN, items_from_paths(lfw))
    gov.open_case(single, team["olive"])
    single.cases.authorise(
        team["arthur"], "C1", True, "necessary and proportionate", investigation_mode=True
    )
    probe = single.searches.add_probe(
        team["olive"], "C1", gov.probe_bytes(data_dir), "obama2.jpg", gov.PROV
    )

    spread = make_app(index_shards=SHARDS, ray_address=cluster.address)
    expected = _search(single, team["olive"], probe.probe_id)
    assert len(expected) == 20 and expected[0]["subject"] == "barack_obama"
    assert _search(spread, team["olive"], probe.probe_id) == expected
    loaded = spread.index.get(spread.engine.identity.key)
    assert isinstance(loaded.index, ShardedIndex) and loaded.index.count() > 40

    # an erasure through the sharded process reaches its shards, and the other process follows
    spread.gallery.erase(ADMIN, "barack_obama", "test")
    after = _search(spread, team["olive"], probe.probe_id)
    assert "barack_obama" not in [c["subject"] for c in after]
    assert _search(single, team["olive"], probe.probe_id) == after

    # a lost shard: a clear error, not a short list; the next search rebuilds and agrees
    import ray

    loads = spread.index.stats["rebuild"] + spread.index.stats["file"]
    ray.kill(loaded.index._actors[1])
    with pytest.raises(RetrofaceError) as failed:
        _search(spread, team["olive"], probe.probe_id)
    assert failed.value.code == "index_unavailable"
    assert _search(spread, team["olive"], probe.probe_id) == after
    # the shards were built afresh (from the stored segments, else from the database)
    assert spread.index.stats["rebuild"] + spread.index.stats["file"] == loads + 1


def test_a_lost_node_is_an_error_not_a_short_list(cluster: ClusterInfo, faces: Faces) -> None:
    """Runs last: it takes a worker node away from the module's cluster."""
    index = ShardedIndex(DIM, SHARDS, cpus=1)
    ids = np.arange(100, 100 + len(faces.gallery))
    index.add(ids, faces.gallery)
    index.search(faces.probes[:1], 5)
    on = set(index.nodes())
    victim = next(n for n in cluster.cluster.worker_nodes if n.node_id in on)
    cluster.cluster.remove_node(victim, allow_graceful=False)
    import ray

    deadline = time.monotonic() + 120  # until the cluster has noticed (heartbeats: seconds)
    while any(n["NodeID"] == victim.node_id and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, "the cluster never noticed the node's loss"
        time.sleep(0.5)
    with pytest.raises(ShardUnavailableError) as lost:
        index.search(faces.probes[:1], 5)
    assert lost.value.code == "index_unavailable" and "gone" in lost.value.message
    # and it stays failed, for changes too (a partial add would leave shards unlike the database)
    with pytest.raises(ShardUnavailableError):
        index.add(np.array([1]), faces.gallery[:1])
    with pytest.raises(ShardUnavailableError):
        index.search(faces.probes[:1], 5)
