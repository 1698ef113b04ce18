import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arbooth_cli import __version__
from arbooth_cli.loading import resolve_model

TINY = ["--model", "tiny-infinity"]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


def test_gen_writes_pngs_with_provenance_and_json_lines(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("gen", "a red star on the left", "a blue square", *TINY, "-n", "2", "--seed", "5",
            "--out", str(out), "--json", "--grid")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    names = sorted(Path(row["path"]).name for row in rows)
    assert names == ["0000-a-red-star-on-the-left-5.png", "0000-a-red-star-on-the-left-6.png",
                     "0001-a-blue-square-5.png", "0001-a-blue-square-6.png"]
    assert sorted(_files(out)) == sorted(names + ["grid.png"])
    row = next(r for r in rows if r["path"].endswith("0001-a-blue-square-6.png"))
    assert row["seed"] == 6 and row["model"] == "tiny-infinity" and row["scales"] == 4
    with Image.open(out / "0001-a-blue-square-6.png") as im:
        assert im.size == (96, 96) and im.mode == "RGB"
        text = dict(im.text)
    assert text["prompt"] == "a blue square" and text["seed"] == "6"
    assert text["model_hash"] == resolve_model("tiny-infinity").model_hash
    assert text["arbooth_version"] == __version__
    assert text["parameters"].startswith("a blue square\nSteps: 4, Sampler: arbooth next-scale, CFG scale: 3.0")
    meta = json.loads(text["arbooth"])
    assert meta["cfg"] == 3.0 and meta["top_p"] == 0.97 and meta["tau"] == 1.0


def test_same_seed_same_file_whatever_the_batch_size(cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("gen", "x", "y", "z", *TINY, "-n", "2", "--out", str(a)).exit_code == 0
    assert cli("gen", "x", "y", "z", *TINY, "-n", "2", "-b", "4", "--out", str(b)).exit_code == 0
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb) and len(fa) == 6
    for name in fa:
        pa, pb = np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))
        assert np.array_equal(pa, pb), name


def test_existing_files_are_never_overwritten_unless_asked(cli, tmp_path):
    out = tmp_path / "out"
    assert cli("gen", "x", *TINY, "-n", "2", "--out", str(out)).exit_code == 0
    before = _files(out)
    r = cli("gen", "x", *TINY, "-n", "3", "--out", str(out))
    assert r.exit_code == 4 and "already exist" in r.stderr and "--skip-existing" in r.stderr
    assert _files(out) == before
    r = cli("gen", "x", *TINY, "-n", "3", "--out", str(out), "--skip-existing", "--json")
    assert r.exit_code == 0 and [json.loads(x)["seed"] for x in r.stdout.splitlines()] == [2]
    assert {k: v for k, v in _files(out).items() if k in before} == before
    r = cli("gen", "x", *TINY, "--out", str(out), "--overwrite", "--seed", "1")
    assert r.exit_code == 0 and _files(out)["0000-x-1.png"] == before["0000-x-1.png"]


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["", *TINY], 4, "empty prompt"),
    (["x", *TINY, "-n", "0"], 4, "-n/--num-images must be >= 1"),
    (["x", "--model", "infinty-2b"], 3, "did you mean 'infinity-2b'"),
    (["x", "--model", "infinity-2b"], 3, "arbooth models add infinity-2b"),
    (["x", *TINY, "--size", "1M"], 4, "has no size '1M'"),
    (["x", *TINY, "--aspect", "10:1"], 4, "no aspect template near"),
    (["x", *TINY, "--cfg", "3,3"], 4, "has 2 values but the schedule has 4 scales"),
    (["x", *TINY, "--top-p", "0"], 4, "--top-p must be in (0, 1]"),
])
def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, args, code, needle):
    out = tmp_path / "out"
    r = cli("gen", *args, "--out", str(out))
    assert r.exit_code == code, r.output
    assert needle in r.stderr
    assert _files(out) == {}


def test_without_a_model_gen_draws_with_the_embedded_default(cli, tmp_path):
    from arbooth_cli.toyworld.detect import check, detect
    from arbooth_cli.toyworld.scene import parse_caption

    out = tmp_path / "out"
    prompt = "a white circle in the center, blue background"
    r = cli("gen", prompt, "--seed", "3", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    assert row["model"] == "toy" and row["scales"] == 5
    with Image.open(row["path"]) as im:
        assert im.size == (64, 64)
        assert json.loads(im.text["arbooth"])["model_hash"].startswith("packaged-")
        img = np.asarray(im.convert("RGB"))
    assert check(parse_caption(prompt), detect(img))["all"]


def test_prompts_file_with_per_line_options_and_a_malformed_line(cli, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('a red star\n{"prompt": "a blue square", "seed": 40, "n": 2, "cfg": 1}\n')
    r = cli("gen", *TINY, "--prompts", str(good), "--out", str(tmp_path / "o1"), "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["prompt"], x["seed"], x["cfg"]) for x in rows] == [
        ("a red star", 0, 3.0), ("a blue square", 40, 1.0), ("a blue square", 41, 1.0)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('a red star\n{"prompt": "x", "n": "two"}\n')
    r = cli("gen", *TINY, "--prompts", str(bad), "--out", str(tmp_path / "o2"))
    assert r.exit_code == 4 and "line 2: n must be an integer" in r.stderr
    assert not (tmp_path / "o2").exists()


def test_unwritable_output_directory(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("gen", "x", *TINY, "--out", str(blocker / "out"))
    assert r.exit_code == 5 and "cannot write to the output directory" in r.stderr


@pytest.mark.slow
def test_torchrun_shards_the_work_and_writes_the_same_files(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red star\na blue square\nthree hearts\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = ["gen", "--model", "tiny-infinity", "--prompts", str(prompts), "-n", "2"]
    subprocess.run([sys.executable, "-m", "arbooth_cli", *common, "--out", str(single)], env=env,
                   check=True, capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29517", "-m", "arbooth_cli", *common, "--out", str(multi)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _files(single), _files(multi)
    assert sorted(a) == sorted(b) and len(a) == 6
    for name in a:
        assert np.array_equal(np.asarray(Image.open(single / name)), np.asarray(Image.open(multi / name))), name


def test_skip_scales_draws_fewer_scales_and_says_so(cli, tmp_path):
    """--skip-scales 1: the last scale is not sampled; the image differs, its metadata records it;
    a count the schedule does not have is refused before the model loads."""
    from arbooth_cli.sampling.writers import read_png_metadata

    prompt = "a red star on the left, blue background"
    assert cli("gen", prompt, "--out", str(tmp_path / "exact")).exit_code == 0
    r = cli("gen", prompt, "--skip-scales", "1", "--out", str(tmp_path / "skip"))
    assert r.exit_code == 0, r.output
    (exact,), (skip,) = (list((tmp_path / d).glob("*.png")) for d in ("exact", "skip"))
    assert exact.read_bytes() != skip.read_bytes()
    assert read_png_metadata(skip)["skip_scales"] == 1 and read_png_metadata(exact)["skip_scales"] == 0
    r = cli("gen", prompt, "--skip-scales", "5", "--out", str(tmp_path / "bad"))
    assert r.exit_code == 4 and "the schedule has 5 scales" in r.stderr and " on cpu (" not in r.stderr


def test_cfg_until_scale_guides_the_first_scales_and_says_so(cli, tmp_path):
    """--cfg-until-scale K: the image differs from full guidance, equals the same cut said per
    line of a prompts file, is recorded in the metadata; K outside the schedule is refused before
    the model loads."""
    import json

    from arbooth_cli.sampling.writers import read_png_metadata

    prompt = "a red star on the left, blue background"
    assert cli("gen", prompt, "--out", str(tmp_path / "exact")).exit_code == 0
    r = cli("gen", prompt, "--cfg-until-scale", "3", "--out", str(tmp_path / "cut"))
    assert r.exit_code == 0, r.output
    lines = tmp_path / "p.jsonl"
    lines.write_text(json.dumps({"prompt": prompt, "cfg_until_scale": 3}) + "\n")
    assert cli("gen", "--prompts", str(lines), "--out", str(tmp_path / "file")).exit_code == 0
    (exact,), (cut,), (from_file,) = (list((tmp_path / d).glob("*.png")) for d in ("exact", "cut", "file"))
    assert not np.array_equal(np.asarray(Image.open(exact)), np.asarray(Image.open(cut)))
    assert np.array_equal(np.asarray(Image.open(cut)), np.asarray(Image.open(from_file)))
    assert read_png_metadata(cut)["cfg_until_scale"] == 3 and read_png_metadata(exact)["cfg_until_scale"] is None
    for bad, message in (("6", "the schedule has 5 scales"), ("0", "must be >= 1")):
        r = cli("gen", prompt, "--cfg-until-scale", bad, "--out", str(tmp_path / "bad"))
        assert r.exit_code == 4 and message in r.stderr and " on cpu (" not in r.stderr, r.output


def test_prune_thins_the_large_scales_and_says_so(cli, tmp_path):
    """--prune S:R,...: the image differs from exact sampling, equals the same setting said on a line
    of a prompts file, is recorded in the metadata; a scale outside the schedule, a ratio outside
    [0, 1) and a malformed value are refused (exit 4) before the model loads."""
    from arbooth_cli.sampling.writers import read_png_metadata

    prompt = "a red star on the left, blue background"
    assert cli("gen", prompt, "--out", str(tmp_path / "exact")).exit_code == 0
    r = cli("gen", prompt, "--prune", "3:0.5,4:0.5", "--out", str(tmp_path / "pruned"))
    assert r.exit_code == 0, r.output
    lines = tmp_path / "p.jsonl"
    lines.write_text(json.dumps({"prompt": prompt, "prune": "3:0.5,4:0.5"}) + "\n")
    assert cli("gen", "--prompts", str(lines), "--out", str(tmp_path / "file")).exit_code == 0
    (exact,), (pruned,), (from_file,) = (list((tmp_path / d).glob("*.png")) for d in ("exact", "pruned", "file"))
    assert not np.array_equal(np.asarray(Image.open(exact)), np.asarray(Image.open(pruned)))
    assert np.array_equal(np.asarray(Image.open(pruned)), np.asarray(Image.open(from_file)))
    assert read_png_metadata(pruned)["prune"] == "3:0.5,4:0.5" and read_png_metadata(exact)["prune"] is None
    for bad, message in (("5:0.5", "the schedule has 5 scales"), ("3:1.5", r"in [0, 1)"), ("3", "SCALE:RATIO"),
                         ("a:b", "SCALE:RATIO"), ("0:0.5", "SCALE must be >= 1")):
        r = cli("gen", prompt, "--prune", bad, "--out", str(tmp_path / "bad"))
        assert r.exit_code == 4 and message in r.stderr and " on cpu (" not in r.stderr, (bad, r.output)
        assert not (tmp_path / "bad").exists()


def test_fast_uses_the_models_preset_and_options_given_win(cli, tmp_path):
    """--fast on toy: guidance stops two scales before the end (its measured preset): the same image
    as --cfg-until-scale 3, recorded; an option given wins over the preset; a model without a
    preset refuses --fast before loading."""
    from arbooth_cli.sampling.writers import read_png_metadata

    prompt = "a red star on the left, blue background"
    for name, extra in (("fast", ["--fast"]), ("cut", ["--cfg-until-scale", "3"]),
                        ("mine", ["--fast", "--cfg-until-scale", "4"]), ("four", ["--cfg-until-scale", "4"])):
        r = cli("gen", prompt, *extra, "--out", str(tmp_path / name))
        assert r.exit_code == 0, r.output
    (fast,), (cut,), (mine,), (four,) = (list((tmp_path / d).glob("*.png")) for d in ("fast", "cut", "mine", "four"))
    assert fast.read_bytes() != cut.read_bytes()  # the metadata differs ...
    assert np.array_equal(np.asarray(Image.open(fast)), np.asarray(Image.open(cut)))  # ... the pixels do not
    meta = read_png_metadata(fast)
    assert meta["fast"] is True and meta["cfg_until_scale"] == 3 and meta["skip_scales"] == 0 and meta["prune"] is None
    assert read_png_metadata(mine)["cfg_until_scale"] == 4
    assert np.array_equal(np.asarray(Image.open(mine)), np.asarray(Image.open(four)))
    # an explicit value of the preset's option, on the command line or a prompts-file line, wins too
    r = cli("gen", prompt, "--fast", "--cfg-until-scale", "5", "--out", str(tmp_path / "all"))
    assert r.exit_code == 0, r.output
    (every,) = list((tmp_path / "all").glob("*.png"))
    exact = tmp_path / "exact"
    assert cli("gen", prompt, "--out", str(exact)).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(every)), np.asarray(Image.open(next(exact.glob("*.png")))))
    lines = tmp_path / "p.jsonl"
    lines.write_text(json.dumps({"prompt": prompt, "cfg_until_scale": 4}) + "\n")
    assert cli("gen", "--prompts", str(lines), "--fast", "--out", str(tmp_path / "line")).exit_code == 0
    assert read_png_metadata(next((tmp_path / "line").glob("*.png")))["cfg_until_scale"] == 4
    r = cli("gen", prompt, *TINY, "--fast", "--out", str(tmp_path / "tiny"))
    assert r.exit_code == 4 and "no --fast preset" in r.stderr and not (tmp_path / "tiny").exists()


def test_a_config_file_sets_what_the_command_line_does_not(cli, tmp_path):
    """gen --config: a TOML file of option names ([gen] table or bare keys); options given win;
    its prompts file is read relative to it; unknown keys and malformed values exit 4."""
    from arbooth_cli.sampling.writers import read_png_metadata

    (tmp_path / "p.txt").write_text("a red star on the left, blue background\n")
    toml = tmp_path / "gen.toml"
    toml.write_text('[gen]\nseed = 3\nn = 2\nprune = "3:0.5,4:0.5"\nprompts = "p.txt"\nrng-stream = "batch"\n')
    r = cli("gen", "--config", str(toml), "--seed", "5", "--out", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "a").glob("*.png"))
    assert [p.name[-6:] for p in files] == ["-5.png", "-6.png"]  # --seed won over the file's 3
    meta = read_png_metadata(files[0])
    assert meta["prune"] == "3:0.5,4:0.5" and meta["rng_stream"] == "batch"
    for text, needle in (("colour = 1\n", "unknown keys ['colour']"), ("prune = 3\n", "prune must be a string"),
                         ("seed = \"x\"\n", "seed")):
        toml.write_text(text)
        r = cli("gen", "a red star", "--config", str(toml), "--out", str(tmp_path / "bad"))
        assert r.exit_code == 4 and needle in r.stderr, (text, r.output)
        assert not (tmp_path / "bad").exists()
