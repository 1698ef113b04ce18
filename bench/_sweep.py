"""What the CPU sweeps share (toy_ablation.py, subject_bench.py): their runs in worker processes,
each row printed and appended to the output file as it finishes, so a stopped sweep keeps them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path


def run_rows(fn: Callable[..., dict], todo: Sequence[tuple], jobs: int, out: Path) -> Iterator[dict]:
    """``fn(*job)`` for each job, ``jobs`` at once (each in its own spawned process; 1: in this
    one); yields each row as it finishes, after appending it to ``out`` as a JSON line."""
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) if jobs > 1 else nullcontext() as pool:
        rows = (f.result() for f in as_completed([pool.submit(fn, *job) for job in todo])) if pool \
            else (fn(*job) for job in todo)
        for row in rows:
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            yield row
