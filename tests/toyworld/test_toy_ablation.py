"""bench/toy_ablation.py: custom variants and the table of stored rows (no tuning here)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _row(subject: str, variant: str, seed: int, fid: float) -> dict:
    return {"subject": subject, "variant": variant, "seed": seed, "tune_seconds": 10.0, "subject_fidelity": fid,
            "text_fidelity": fid, "drift": 0.0, "base_fidelity": 0.0, "diversity": 0.01}


def test_custom_variants_join_the_table_and_bad_ones_are_refused(tmp_path, capsys):
    bench = runpy.run_path(str(ROOT / "bench" / "toy_ablation.py"), run_name="toy_ablation")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [_row("split-heart", "b3-5", 0, 0.5), _row("split-heart", "b3-5", 1, 0.7),
                                                       _row("split-heart", "selective", 0, 0.9)]) + "\n")
    assert bench["main"](["--out", str(rows), "--table-only", "--custom", 'b3-5={"lr": 1e-4, "blocks": "3-5"}']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert bench["VARIANTS"]["b3-5"] == {"lr": 1e-4, "blocks": "3-5"}
    body = [ln for ln in lines if ln.startswith("| split-heart")]
    assert body[0].startswith("| split-heart | selective | 1 | 0.90")  # built-in variants first
    assert body[1].startswith("| split-heart | b3-5 | 2 | 0.60 ± 0.10")
    for bad in (["--custom", "x=[1]"], ["--custom", "x=not json"], ["--variants", "nope"]):
        with pytest.raises(SystemExit):
            bench["main"](["--out", str(rows), "--table-only", *bad])
