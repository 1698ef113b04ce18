"""Benchmark: a newcomer's first image, timed as a whole process (start-up, model build, sampling, PNG).

    python bench/startup.py                  # 7 runs, the child's thread count left as it is
    python bench/startup.py --runs 10 --threads 1 --floor --json startup.json

Runs ``python -m arbooth_cli gen "a red star on the left, blue background" --out TMP --overwrite``
``--runs`` times (after ``--warmup`` runs that are not counted, which fill the page cache) with
``subprocess``, each timed by ``time.perf_counter`` from just before the child starts to just after
it exits, in a fresh temporary ``ARBOOTH_HOME`` (nothing cached from earlier use). Prints the min,
median and max wall seconds (quote the median), and the import time of ``arbooth_cli.jobs.gen`` as
``python -X importtime`` reports it (the module alone; torch is imported later, when gen runs).
``--threads N`` sets ``OMP_NUM_THREADS=N`` for the child. ``--floor`` also times
``python -c "import torch"`` the same way: the part of the total no change to arbooth can remove.

The goal (docs/benchmarks.md, "A first image") is a median of at most 2 s on an idle 2-core CPU;
other busy processes inflate every figure, so check the machine first (``uptime``). The same
figures come from ``/usr/bin/time -v python -m arbooth_cli gen ...`` run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red star on the left, blue background"


def child_env(home: Path, threads: int | None) -> dict[str, str]:
    env = dict(os.environ, ARBOOTH_HOME=str(home))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def time_runs(cmd: list[str], env: dict[str, str], runs: int, warmup: int) -> list[float]:
    """Wall seconds of ``runs`` executions of ``cmd`` (after ``warmup`` uncounted ones)."""
    out = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
        if i >= warmup:
            out.append(wall)
    return out


def import_seconds(module: str, env: dict[str, str]) -> float:
    """Cumulative import time of ``module`` reported by ``python -X importtime`` (seconds)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True)
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
        if m and m.group(2) == module:
            return int(m.group(1)) / 1e6
    raise RuntimeError(f"no import time line for {module}")


def summary(walls: list[float]) -> dict[str, float]:
    return {"min": min(walls), "median": statistics.median(walls), "max": max(walls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs (default 7)")
    ap.add_argument("--warmup", type=int, default=1, help="runs before timing, not counted (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the child (default: inherited)")
    ap.add_argument("--floor", action="store_true", help='also time python -c "import torch"')
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = ap.parse_args()
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")

    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    result: dict = {"runs": args.runs, "threads": args.threads, "cpus": os.cpu_count(), "loadavg_before": load}
    with tempfile.TemporaryDirectory(prefix="arbooth-startup-") as tmp:
        env = child_env(Path(tmp) / "home", args.threads)
        cmd = [sys.executable, "-m", "arbooth_cli", "gen", PROMPT, "--out", str(Path(tmp) / "out"), "--overwrite"]
        result["gen"] = summary(time_runs(cmd, env, args.runs, args.warmup))
        result["import_jobs_gen_s"] = import_seconds("arbooth_cli.jobs.gen", env)
        if args.floor:
            result["import_torch"] = summary(time_runs([sys.executable, "-c", "import torch"], env, args.runs, args.warmup))

    print(f"{os.cpu_count()} CPUs, load average before: {load}, OMP_NUM_THREADS="
          f"{args.threads if args.threads is not None else os.environ.get('OMP_NUM_THREADS', 'unset')}")
    rows = [("arbooth gen (whole process)", result["gen"])]
    if args.floor:
        rows.append(('python -c "import torch"', result["import_torch"]))
    print(f"{'wall seconds, ' + str(args.runs) + ' runs':<34} {'min':>7} {'median':>7} {'max':>7}")
    for name, s in rows:
        print(f"{name:<34} {s['min']:7.3f} {s['median']:7.3f} {s['max']:7.3f}")
    print(f"import arbooth_cli.jobs.gen (-X importtime): {result['import_jobs_gen_s']:.3f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
