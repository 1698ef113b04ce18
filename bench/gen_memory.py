"""Benchmark: does the memory of a long `arbooth gen` job stay flat? (toy model, CPU)

    python bench/gen_memory.py                      # 10,000 prompts, batch 8
    python bench/gen_memory.py --prompts 500 --keep --out /tmp/gen-mem

Writes N distinct toy-world prompts (a JSON line each, with its own seed) and runs

    arbooth gen --model toy --prompts FILE -n 1 --batch-size 8 --json --out DIR

as a subprocess (its own ARBOOTH_HOME, OMP_NUM_THREADS=1 unless set), reading its JSON lines as they
come and its resident memory (VmRSS in /proc/PID/status) every 0.5 s and at every line. Prints one
JSON object: prompts, images written, seconds, RSS after the first 100 images, the peak RSS (sampled,
and the kernel's VmHWM), RSS at the last image, RSS at each tenth of the job, and the command.
Set PYTHONPATH to measure another copy of the package (e.g. an older commit from ``git archive``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arbooth_cli.toyworld.scene import caption, sample_scene  # noqa: E402


def toy_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct captions drawn from the toy world's vocabulary and templates."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(caption(sample_scene(rng), rng))
    return list(seen)


def proc_status_mb(pid: int, key: str) -> float | None:
    """``key`` (VmRSS, VmHWM) of process ``pid`` in MB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=10000, help="distinct prompts (one image each)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--out", type=Path, default=None, help="output folder, kept (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (prompts, images, home)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="arbooth-gen-memory-"))
    out = args.out or work / "out"
    pfile = work / "prompts.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": p, "seed": i}) + "\n"
                             for i, p in enumerate(toy_prompts(args.prompts))))
    cmd = [sys.executable, "-m", "arbooth_cli", "gen", "--model", "toy", "--prompts", str(pfile), "-n", "1",
           "--batch-size", str(args.batch_size), "--json", "--out", str(out)]
    env = dict(os.environ, ARBOOTH_HOME=str(work / "home"))
    env.setdefault("OMP_NUM_THREADS", "1")

    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[float] = []
    at_line: list[float | None] = []  # RSS when each image's line came
    hwm: list[float] = []
    done = threading.Event()

    def read_lines() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            json.loads(line)
            at_line.append(proc_status_mb(proc.pid, "VmRSS"))
        done.set()

    def sample() -> None:
        while not done.is_set():
            rss, peak = proc_status_mb(proc.pid, "VmRSS"), proc_status_mb(proc.pid, "VmHWM")
            if rss is not None:
                samples.append(rss)
            if peak is not None:
                hwm.append(peak)
            done.wait(args.interval)

    threads = [threading.Thread(target=read_lines), threading.Thread(target=sample)]
    for t in threads:
        t.start()
    err = proc.stderr.read() if proc.stderr is not None else ""
    for t in threads:
        t.join()
    rc = proc.wait()
    seconds = time.monotonic() - start

    def mb(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    n = len(at_line)
    tenths = sorted({max(1, round(n * k / 10)) for k in range(1, 11)}) if n else []
    report = {
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "images_written": n,
        "files": len(list(out.glob("*.png"))) if out.exists() else 0,
        "returncode": rc,
        "seconds": round(seconds, 1),
        "rss_after_100_images_mb": mb(at_line[99]) if n >= 100 else None,
        "peak_rss_mb": mb(max(samples + [v for v in at_line if v is not None], default=None)),
        "vmhwm_mb": mb(max(hwm, default=None)),
        "rss_end_mb": mb(at_line[-1]) if n else None,
        "rss_by_images_mb": [[k, mb(at_line[k - 1])] for k in tenths],
        "command": " ".join(cmd),
    }
    if n > 100 and at_line[99] is not None and at_line[-1] is not None:
        report["growth_kb_per_image_after_100"] = round((at_line[-1] - at_line[99]) * 1024 / (n - 100), 3)
    if rc != 0:
        report["stderr_tail"] = err[-2000:]
    print(json.dumps(report))
    if not args.keep:  # the temporary folder only: an --out folder is always kept
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
