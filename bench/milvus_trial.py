"""Milvus (PyPI ``milvus``, a Milvus 2.3 standalone server) as the gallery's vector store: a trial.

Why docs/scale.md chose Ray shards instead, measured rather than asserted. Not a project
dependency: run it from its own environment, in a network namespace with only loopback (the
server binds most of its ports on every interface), as root:

    python -m venv /tmp/mv && /tmp/mv/bin/pip install "milvus==2.3.5" "pymilvus>=2.3,<2.4" \\
        numpy "setuptools<70" "marshmallow<4"
    unshare -n bash -c 'ip link set lo up; /tmp/mv/bin/python bench/milvus_trial.py'

It starts the server in a fresh data folder, lists what it listens on, inserts a synthetic
clustered 512-d gallery (as ``index_search.py``), builds a FLAT (exact) inner-product index, and
compares 50 top-50 searches with exact numpy search (ids in order, score differences), then
deletes the 100 templates those searches rank highest and checks (a) that searches no longer
return them and (b) whether their vectors are still on the server's disk. JSON to stdout and to
``bench/results/milvus_trial.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from milvus import default_server  # type: ignore[import-not-found]
from pymilvus import (  # type: ignore[import-not-found]
    Collection,
    CollectionSchema,
    DataType,
    FieldSchema,
    connections,
)

DIM = 512
N = 20_000
K = 50
DATA = Path("/tmp/retroface-milvus-trial")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    shutil.rmtree(DATA, ignore_errors=True)
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((200, DIM)))
    vectors = unit(0.45 * centres[rng.integers(0, 200, N)] + unit(rng.standard_normal((N, DIM))))
    ids = np.arange(1, N + 1)
    queries = unit(vectors[:50] + 0.8 * unit(rng.standard_normal((50, DIM))))
    exact = queries @ vectors.T
    out: dict[str, object] = {"gallery": N, "k": K, "load_average_before": os.getloadavg()}

    t = time.perf_counter()
    default_server.set_base_dir(str(DATA))
    default_server.start()
    out["server_start_s"] = time.perf_counter() - t
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    out["listening"] = sorted(line.split()[3] for line in ss if "milvus" in line)
    connections.connect(host="127.0.0.1", port=default_server.listen_port)
    schema = CollectionSchema(
        [
            FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
            FieldSchema("v", DataType.FLOAT_VECTOR, dim=DIM),
        ]
    )
    col = Collection("gallery", schema)
    t = time.perf_counter()
    for s in range(0, N, 5000):
        col.insert([ids[s : s + 5000].tolist(), vectors[s : s + 5000]])
    col.flush()
    col.create_index("v", {"index_type": "FLAT", "metric_type": "IP", "params": {}})
    col.load()
    out["load_s"] = time.perf_counter() - t
    alive = np.ones(N, bool)
    params = {"metric_type": "IP", "params": {}}

    def compare() -> dict[str, float]:
        found = col.search(queries.tolist(), "v", params, limit=K, consistency_level="Strong")
        same, diff = 0, 0.0
        for qi, hits in enumerate(found):
            s = np.where(alive, exact[qi], -np.inf)
            order = np.lexsort((ids, -s))[:K]
            got = np.array(hits.ids)
            same += int(np.array_equal(got, ids[order]))
            diff = max(diff, float(np.abs(np.array(hits.distances) - s[order]).max()))
        times = []
        for q in queries[:20]:
            t0 = time.perf_counter()
            col.search([q.tolist()], "v", params, limit=K, consistency_level="Strong")
            times.append((time.perf_counter() - t0) * 1000)
        return {"identical_lists_of_50": same, "max_score_diff": diff, "p50_ms": np.median(times)}

    out["before_delete"] = compare()
    gone = ids[np.argsort(-exact.max(0))[:100]]
    col.delete(f"id in {gone.tolist()}")
    alive[np.isin(ids, gone)] = False
    out["after_delete"] = compare()
    after = col.search(queries.tolist(), "v", params, limit=K, consistency_level="Strong")
    out["deleted_ids_returned"] = int(sum(np.isin(h.ids, gone).sum() for h in after))
    default_server.stop()  # stopped, so the files are what remains at rest

    files = [p for p in (DATA / "data").rglob("*") if p.is_file()]
    still = {}
    for tid in gone[:10].tolist():
        needle = vectors[tid - 1].tobytes()[:64]
        still[tid] = [str(p.relative_to(DATA)) for p in files if needle in p.read_bytes()]
    out["deleted_vectors_on_disk"] = still
    out["load_average_after"] = os.getloadavg()
    text = json.dumps(out, indent=2, default=float)
    print(text)
    target = Path(__file__).parent / "results" / "milvus_trial.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


if __name__ == "__main__":
    main()
