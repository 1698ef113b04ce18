"""`inspect_noise` on the tiny model: invariants of the per-scale noise analysis."""

from __future__ import annotations

import json
import statistics

import pytest
from PIL import Image

from arbooth_cli.jobs.inspect_noise import inspect_noise
from arbooth_cli.analysis.metrics import PSNR_CAP_DB
from arbooth_cli.config import InspectNoiseConfig
from arbooth_cli.errors import ConfigError, InvalidInputError, NotFoundError


def _run(tmp_path, name="out", **kw):
    base = dict(prompt="a red star on the left", model="tiny-infinity", seeds=2, features="tokenizer",
                out_dir=str(tmp_path / name))
    return inspect_noise(InspectNoiseConfig(**{**base, **kw}))


def test_report_shape_files_and_provenance(tmp_path):
    r = _run(tmp_path, scales="1,3-4", seeds=3)
    assert [sc.scale for sc in r.scales] == [1, 3, 4]
    assert [(sc.height, sc.width, sc.tokens) for sc in r.scales] == [(1, 1, 1), (4, 4, 16), (6, 6, 36)]
    for sc in r.scales:
        for name in ("bits_changed", "l1", "psnr", "ssim", "feature"):
            assert len(getattr(sc, name)) == 3
        assert set(sc.summary()) == {"bits_changed", "l1", "psnr", "ssim", "feature"}
    assert r.seeds == [0, 1, 2] and r.samples == 3 * 4 and r.features == "the tokenizer's encoder features"
    data = json.loads((tmp_path / "out" / "noise.json").read_text())
    assert data["model"] == "tiny-infinity" and data["model_hash"] == r.model_hash
    assert [row["scale"] for row in data["scales"]] == [1, 3, 4] and "summary" in data["scales"][0]
    with Image.open(tmp_path / "out" / "noise-grid.png") as grid:
        meta = json.loads(grid.text["arbooth"])
        assert meta["model"] == "tiny-infinity" and meta["seeds"] == [0, 1, 2] and meta["arbooth_version"]
        assert grid.height > 4 * 256  # reference row + 3 scale rows of 256 px thumbnails
    with Image.open(tmp_path / "out" / "noise-plot.png") as plot:
        assert plot.width > plot.height and "arbooth" in plot.text


@pytest.mark.parametrize("mode", ["random", "flip", "swap"])
def test_strength_zero_leaves_every_image_unchanged(tmp_path, mode):
    r = _run(tmp_path, mode=mode, strength=0.0)
    for sc in r.scales:
        assert sc.bits_changed == [0.0, 0.0] and sc.l1 == [0.0, 0.0]
        assert sc.psnr == [PSNR_CAP_DB] * 2 and sc.ssim == pytest.approx([1.0, 1.0], abs=1e-12)
        assert sc.feature == pytest.approx([0.0, 0.0], abs=1e-9)


def test_same_seeds_give_the_same_numbers_whatever_the_batch(tmp_path):
    a = _run(tmp_path, "a", mode="flip", strength=0.3)
    b = _run(tmp_path, "b", mode="flip", strength=0.3, batch_size=2)  # one perturbed run per batch
    c = _run(tmp_path, "c", mode="flip", strength=0.3, seed=5)
    for x, y in zip(a.scales, b.scales):
        assert x.bits_changed == y.bits_changed
        assert x.l1 == pytest.approx(y.l1, abs=2e-3)  # other batch sizes round differently
    again = _run(tmp_path, "again", mode="flip", strength=0.3)
    assert [sc.l1 for sc in a.scales] == [sc.l1 for sc in again.scales]
    assert [sc.l1 for sc in a.scales] != [sc.l1 for sc in c.scales]


@pytest.mark.parametrize("mode", ["flip", "random"])
def test_change_grows_with_the_strength(tmp_path, mode):
    means = []
    for p in (0.0, 0.05, 0.3, 1.0):
        r = _run(tmp_path, f"{mode}{p}", mode=mode, strength=p, seeds=3)
        means.append((statistics.mean(v for sc in r.scales for v in sc.l1),
                      statistics.mean(v for sc in r.scales for v in sc.feature),
                      statistics.mean(v for sc in r.scales for v in sc.bits_changed)))
    for k in range(3):
        column = [m[k] for m in means]
        assert column[0] == pytest.approx(0.0, abs=1e-9)
        assert all(x < y for x, y in zip(column, column[1:])), column


def test_flip_at_full_strength_flips_every_bit_of_the_scale(tmp_path):
    r = _run(tmp_path, mode="flip", strength=1.0, scales="2")
    assert r.scales[0].bits_changed == [1.0, 1.0]


def test_swap_with_one_seed_borrows_from_the_next_seed(tmp_path):
    r = _run(tmp_path, mode="swap", strength=1.0, seeds=1, scales="2-4")
    assert r.samples == 1 + 4  # the donor run, then reference + 3 perturbed
    assert all(sc.bits_changed[0] > 0 for sc in r.scales)  # (the 1x1 map may agree by chance)


@pytest.mark.parametrize("kw, error, match", [
    (dict(scales="0,2"), InvalidInputError, "outside this model's schedule 1..4"),
    (dict(scales="9"), InvalidInputError, "outside"),
    (dict(strength=1.5), ConfigError, r"--strength must be in \[0, 1\]"),
    (dict(strength=-0.1), ConfigError, "--strength"),
    (dict(seeds=0), ConfigError, "--seeds must be >= 1"),
    (dict(mode="blur"), ConfigError, "--mode"),
    (dict(features="dino"), NotFoundError, "DINO"),
    (dict(size="1M"), InvalidInputError, "no size"),
    (dict(subject="nobody"), NotFoundError, "nobody"),
])
def test_bad_input_fails_before_any_work(tmp_path, kw, error, match):
    with pytest.raises(error, match=match):
        _run(tmp_path, **kw)
    assert not (tmp_path / "out" / "noise.json").exists()


def test_existing_reports_are_kept_unless_overwrite(tmp_path):
    _run(tmp_path, scales="1", seeds=1)
    with pytest.raises(InvalidInputError, match="already exists"):
        _run(tmp_path, scales="1", seeds=1)
    _run(tmp_path, scales="1", seeds=1, overwrite=True)
