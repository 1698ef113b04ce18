"""Benchmark: how many CPU threads a toy job should use, on an idle and on a busy machine.

    python bench/cpu_threads.py                     # threads 1 and 2, idle and busy, 3 runs each
    python bench/cpu_threads.py --threads 1,2,4 --runs 5 --json threads.json

Times two toy jobs as whole processes, ``arbooth gen`` of 16 images (batch 8) and ``arbooth tune``
of 30 steps (pool of 16), with ``ARBOOTH_THREADS=N`` for each N, first on the machine as it is
("idle") and then with one busy-looping process per half of the cores beside them ("busy", as a
second job or a test runner would be). Prints the median wall seconds of each setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOBS = {
    "gen 16 images": ["gen", "a red star on the left, blue background", "-n", "16", "-b", "8", "--overwrite"],
    "tune 30 steps": ["tune", str(REPO / "examples" / "subjects" / "split-heart"), "--token", "sks", "--class",
                      "heart", "--steps", "30", "--prior-pool", "16", "--validate-every", "0", "--checkpoint-every",
                      "0", "--overwrite"],
}


def run(job: list[str], threads: int, work: Path) -> float:
    env = {**os.environ, "ARBOOTH_HOME": str(work / "home"), "ARBOOTH_THREADS": str(threads)}
    env.pop("OMP_NUM_THREADS", None)
    args = [sys.executable, "-m", "arbooth_cli", "-q", *job]
    if job[0] == "gen":
        args += ["--out", str(work / "out")]
    t = time.perf_counter()
    subprocess.run(args, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for load in ("idle", "busy"):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(max(1, (os.cpu_count() or 2) // 2))] if load == "busy" else []
            try:
                for name, job in JOBS.items():
                    for n in threads:
                        times = [run(job, n, work) for _ in range(args.runs)]
                        row = {"job": name, "load": load, "threads": n, "median_s": round(statistics.median(times), 2),
                               "runs_s": [round(t, 2) for t in times]}
                        results.append(row)
                        print(f"{load:5} {name:14} threads {n}: median {row['median_s']:6.2f} s  {row['runs_s']}",
                              flush=True)
            finally:
                for h in hogs:
                    h.kill()
    print(json.dumps({"cpus": os.cpu_count(), "results": results}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
