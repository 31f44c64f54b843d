"""A 10M lean query's work with every row it reads in the page cache (docs/performance.md).

A product quantiser trained on 65k synthetic templates (bench/scale.py's model), 200k encoded and
their codes tiled 50x into a 10M-code fast-scan index; per query a 4,000-long scan, then the read
and AES-GCM decrypt of 4,000 random rows of a row file (as RowFile.take does, with or without the
read-ahead hint) and the exact re-rank. Modes: ``cached:N`` (the file is in the page cache),
``warm:N`` (each query's rows are read once first), ``cold:N`` / ``cold-noprefetch:N`` (the file
is dropped from the page cache before each query).

    PYTHONPATH=src python bench/scale_proxy.py /tmp/scale1m/1000000/rows.enc cached:300
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import faiss
import numpy as np

from retroface.storage.crypto import Cipher
from retroface.storage.rowfile import _FILE_MAGIC, _HEADER, _SEALED_OVERHEAD, _chunk_aad
from scale import Synthetic

faiss.omp_set_num_threads(1)
load0 = os.getloadavg()
syn = Synthetic(1)
v = np.concatenate([syn.chunk(c, 100_000)[2] for c in range(2)])
pq = faiss.IndexPQ(512, 64, 4, faiss.METRIC_INNER_PRODUCT)
pq.train(v[:65536])
pq.add(v)
pq2 = faiss.IndexPQ(512, 64, 4, faiss.METRIC_INNER_PRODUCT)
pq2.pq = pq.pq
pq2.is_trained = True
faiss.copy_array_to_vector(np.tile(faiss.vector_to_array(pq.codes), 50), pq2.codes)
pq2.ntotal = len(v) * 50
fs = faiss.IndexPQFastScan(pq2)
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
cipher = Cipher(bytes(range(32)))
stub = _HEADER.pack(_FILE_MAGIC, b"f32\0", 512, 1, 0)
prefix = _chunk_aad(b"", stub, 0)[:-8]
cb = 2048 + _SEALED_OVERHEAD
rows = (os.fstat(fd).st_size - _HEADER.size) // cb - 100
rng = np.random.default_rng(7)


def take(chunks, prefetch):
    first = _HEADER.size
    if prefetch:
        for c in chunks:
            os.posix_fadvise(fd, first + c * cb, cb, os.POSIX_FADV_WILLNEED)
    plain = b"".join(
        cipher.decrypt(os.pread(fd, cb, first + c * cb), prefix + c.to_bytes(8, "little"))
        for c in chunks
    )
    return np.frombuffer(plain, dtype=np.float32).reshape(-1, 512)


out = {"rows_readable": int(rows), "load_before": load0}
probes = v[rng.choice(len(v), 300, replace=False)] + 0.0
for mode, n in [(m.split(":")[0], int(m.split(":")[1])) for m in sys.argv[2].split(",")]:
    cold, prefetch = mode.startswith("cold"), not mode.endswith("noprefetch")
    wall, cpu = [], []
    for i in range(n):
        pos = np.unique(rng.choice(rows, 4000, replace=False))
        if cold:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        elif mode == "warm":
            for c in pos.tolist():
                os.pread(fd, cb, _HEADER.size + c * cb)
        q = probes[i]
        t, c0 = time.perf_counter(), time.thread_time()
        _, cand = fs.search(q[None], 4000)
        x = take(pos.tolist(), prefetch)
        s = x @ q
        o = np.argsort(-s, kind="stable")[:50]
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c0)
    out[mode] = {
        "queries": n,
        "p50_ms": round(np.percentile(wall, 50) * 1e3, 1),
        "p99_ms": round(np.percentile(wall, 99) * 1e3, 1),
        "cpu_p50_ms": round(np.percentile(cpu, 50) * 1e3, 1),
        "cpu_p99_ms": round(np.percentile(cpu, 99) * 1e3, 1),
    }
    print(mode, out[mode], flush=True)
out["load_after"] = os.getloadavg()
print(json.dumps(out))
