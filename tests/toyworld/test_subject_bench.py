"""bench/subject_bench.py: its fixed subjects, its prompts and its tables (no tuning here)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from arbooth_cli.toyworld.scene import parse_caption, prompt_problems
from arbooth_cli.toyworld.subjects import subject_photos

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return runpy.run_path(str(ROOT / "bench" / "subject_bench.py"), run_name="subject_bench")


def test_the_fixed_subjects_are_distinct_readable_and_split_in_two(bench):
    sets = bench["bench_subjects"]()
    assert len(sets["dev"]) == len(sets["held-out"]) == 12
    everyone = sets["dev"] + sets["held-out"]
    assert len({s.name for s in everyone}) == 24 and len({(s.cls, s.pattern) for s in everyone}) == 24
    assert {s.cls for s in everyone} >= {"circle", "square", "triangle", "star", "heart", "diamond"}
    for part in (sets["dev"], sets["held-out"]):  # both halves see two-colour splits, three bands, rings and checkers
        kinds = {(s.pattern.kind, len(s.pattern.colours)) for s in part}
        assert {("rows", 2), ("columns", 2), ("rings", 2), ("checker", 4)} <= kinds and any(n == 3 for _, n in kinds)
    for s in everyone:
        photos = subject_photos(s)
        assert all(s.find(img).found for img, _ in photos)
        assert any(a["size"] == "small" for _, a in photos) and any(len(a["background"]) == 2 for _, a in photos)


@pytest.mark.parametrize(("name", "first", "n"), [("held-out-2", 25, 12), ("held-out-3", 37, 20)])
def test_a_fresh_held_out_set_is_new_subjects_of_every_kind(bench, name, first, n):
    """The fresh held-out sets (each drawn after the one before had been scored): new subjects,
    none a name or pattern of an earlier set, each readable in its photos and its own detector
    blind to the earlier subjects' photos; the third spans every family that passes the checks."""
    from arbooth_cli.toyworld.procedural import FAMILIES

    sets = bench["bench_subjects"]()
    fresh = sets[name]
    earlier = [s for k in bench["SETS"][: bench["SETS"].index(name)] for s in sets[k]]
    assert len(fresh) == n and [int(s.name[:2]) for s in fresh] == list(range(first, first + n))
    assert not {(s.cls, s.pattern) for s in fresh} & {(s.cls, s.pattern) for s in earlier}
    families = {s.name.split("-")[1] for s in fresh}  # two-colour splits, three parts, rings, checkers
    assert {"rings", "checker"} <= families and families & {"rows", "columns", "diagonal", "antidiagonal"}
    assert {"rows3", "columns3"} <= families
    if n == 2 * len(FAMILIES):  # a pair of every family (three rings never pass the checks)
        assert families == set(FAMILIES) - {"rings3"}
    for s in fresh:
        photos = subject_photos(s)
        assert all(s.find(img).found for img, _ in photos)
        assert not any(o.find(img).found for o in earlier for img, _ in photos)


def test_the_prompts_are_new_views_the_model_can_read(bench):
    for s in bench["bench_subjects"]()["dev"][:4]:
        prompts = bench["prompts_for"](s)
        assert [size for _, size in prompts].count("small") == 4 and len(prompts) == 8
        shown = {c for bg in s.photo_backgrounds for c in ((bg,) if isinstance(bg, str) else bg)}
        for text, size in prompts:
            assert prompt_problems(text, names={"sks": s.cls}) == []
            parsed = parse_caption(text, names={"sks": s.cls})
            assert parsed.shapes[0]["size"] == size and not set(parsed.background) & set(s.pattern.colours)
        if set(s.safe_backgrounds()) - shown:  # a colour the photos do not show comes first
            assert not set(parse_caption(prompts[0][0], names={"sks": s.cls}).background) <= shown


def _row(subject: str, variant: str, seed: int, fid: float, small: float) -> dict:
    return {"set": "dev", "subject": subject, "cls": "circle", "variant": variant, "fields": {"lr": 1} if variant != "default" else {},
            "seed": seed, "tune_seconds": 100.0, "fidelity": fid, "fidelity_small": small, "fidelity_large": 1.0,
            "text_fidelity": fid, "drift": 0.0, "base": 0.0, "exact_fidelity": fid, "reader_agrees": 1.0,
            "codec_small": 1.0, "codec_large": 1.0}


def test_the_tables_are_means_of_the_stored_rows(bench, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        _row("a", "default", 0, 0.5, 0.25), _row("a", "default", 1, 0.7, 0.25), _row("b", "default", 0, 1.0, 1.0),
        _row("a", "fast", 0, 0.9, 0.75)]) + "\n")
    assert bench["main"](["--out", str(rows), "--table-only"]) == 0
    out = capsys.readouterr().out
    assert "| a | 2 | 0.60 | 0.25 |" in out and "| b | 1 | 1.00 | 1.00 |" in out
    assert "| dev | default | `{}` | 3 | 0.733 | 0.500 |" in out and "| 0.60 |" in out  # lowest subject: a
    assert "| dev | fast | `{\"lr\": 1}` | 1 | 0.900 | 0.750 |" in out
    for bad in (["--variant", "x=[1]"], ["--variant", "x=not json"]):
        with pytest.raises(SystemExit):
            bench["main"](["--out", str(rows), "--table-only", *bad])
