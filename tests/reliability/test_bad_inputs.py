"""Bad input over every command: each case ends in its documented exit code with a one-line
`error:` message (or the parser's usage box for exit 2), never a traceback, and leaves nothing
half-written. docs/reliability.md counts this table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from arbooth_cli import paths

REPO = Path(__file__).resolve().parents[2]
TINY = ["-m", "tiny-infinity"]
FAST = ["--steps", "2", "--validate-every", "0", "--checkpoint-every", "0"]
TUNE = ["tune", "{photos}", "--token", "sks", "--class", "dog", *TINY, *FAST]

#: (id, argv, exit code, a piece of the message)
CASES = [
    # gen
    ("gen-no-prompt", ["gen", "--out", "{tmp}/o"], 4, "no prompt given"),
    ("gen-empty-prompt", ["gen", "  ", "--out", "{tmp}/o"], 4, "empty prompt"),
    ("gen-huge-prompt", ["gen", "x" * 5000, "--out", "{tmp}/o"], 4, "at most 4096"),
    ("gen-seed-2^63", ["gen", "a red star", "--seed", str(2**63), "--out", "{tmp}/o"], 4, "2^63"),
    ("gen-seed-negative", ["gen", "a red star", "--seed", "-1", "--out", "{tmp}/o"], 4, "2^63"),
    ("gen-cfg-nan", ["gen", "a red star", "--cfg", "nan", "--out", "{tmp}/o"], 4, "finite"),
    ("gen-cfg-inf-list", ["gen", "a red star", "--cfg", "1,inf", "--out", "{tmp}/o"], 4, "finite"),
    ("gen-cfg-text", ["gen", "a red star", "--cfg", "high", "--out", "{tmp}/o"], 4, "--cfg takes a number"),
    ("gen-tau-zero", ["gen", "a red star", "--tau", "0", "--out", "{tmp}/o"], 4, "--tau must be > 0"),
    ("gen-top-p-2", ["gen", "a red star", "--top-p", "2", "--out", "{tmp}/o"], 4, "--top-p"),
    ("gen-top-k-neg", ["gen", "a red star", "--top-k", "-3", "--out", "{tmp}/o"], 4, "--top-k"),
    ("gen-n-zero", ["gen", "a red star", "-n", "0", "--out", "{tmp}/o"], 4, "--num-images"),
    ("gen-batch-zero", ["gen", "a red star", "-b", "0", "--out", "{tmp}/o"], 4, "--batch-size"),
    ("gen-bad-size", ["gen", "a red star", "--size", "9M", "--out", "{tmp}/o"], 4, "has no size"),
    ("gen-bad-aspect", ["gen", "a red star", "--aspect", "banana", "--out", "{tmp}/o"], 4, "aspect"),
    ("gen-far-aspect", ["gen", "a red star", "--aspect", "100:1", "--out", "{tmp}/o"], 4, "no aspect template"),
    ("gen-dtype", ["gen", "a red star", "--dtype", "fp64", "--out", "{tmp}/o"], 4, "--dtype"),
    ("gen-stream", ["gen", "a red star", "--rng-stream", "odd", "--out", "{tmp}/o"], 4, "--rng-stream"),
    ("gen-overwrite-skip", ["gen", "a red star", "--overwrite", "--skip-existing", "--out", "{tmp}/o"], 4, "exclude"),
    ("gen-unknown-model", ["gen", "a red star", "-m", "infinty-2b", "--out", "{tmp}/o"], 3, "did you mean"),
    ("gen-uncached-model", ["gen", "a red star", "-m", "infinity-2b", "--out", "{tmp}/o"], 3, "not in the local cache"),
    ("gen-no-subject", ["gen", "a red star", "--subject", "nobody", "--out", "{tmp}/o"], 3, "no subject named"),
    ("gen-missing-delta", ["gen", "a red star", "--delta", "{tmp}/none.safetensors", "--out", "{tmp}/o"], 3, "does not exist"),
    ("gen-junk-delta", ["gen", "a red star", "--delta", "{tmp}/junk.safetensors", "--out", "{tmp}/o"], 4, "safetensors"),
    ("gen-out-is-file", ["gen", "a red star", "--out", "{tmp}/file.txt"], 5, "cannot write"),
    ("gen-missing-prompts", ["gen", "--prompts", "{tmp}/none.txt", "--out", "{tmp}/o"], 4, "cannot read prompts file"),
    ("gen-prompts-latin1", ["gen", "--prompts", "{tmp}/latin1.txt", "--out", "{tmp}/o"], 4, "not UTF-8"),
    ("gen-prompts-bad-json", ["gen", "--prompts", "{tmp}/badjson.jsonl", "--out", "{tmp}/o"], 4, "not valid JSON"),
    ("gen-prompts-top-p-list", ["gen", "--prompts", "{tmp}/topp.jsonl", "--out", "{tmp}/o"], 4, "top_p must be a number"),
    ("gen-prompts-seed-big", ["gen", "--prompts", "{tmp}/bigseed.jsonl", "--out", "{tmp}/o"], 4, "2^63"),
    ("gen-prompts-unknown-key", ["gen", "--prompts", "{tmp}/unknown.jsonl", "--out", "{tmp}/o"], 4, "unknown keys"),
    ("gen-prompts-empty", ["gen", "--prompts", "{tmp}/empty.txt", "--out", "{tmp}/o"], 4, "holds no prompts"),
    ("gen-device", ["gen", "a red star", "--device", "cuda", "--out", "{tmp}/o"], 3, "no CUDA device"),
    # tune
    ("tune-no-args", ["tune"], 2, "missing"),
    ("tune-missing-folder", ["tune", "{tmp}/nowhere", "--token", "sks", "--class", "dog", *TINY], 4, "not a folder"),
    ("tune-empty-folder", ["tune", "{tmp}/empty", "--token", "sks", "--class", "dog", *TINY, *FAST], 4, "holds no photos"),
    ("tune-token-space", [*TUNE[:3], "s ks", *TUNE[4:]], 4, "--token must be one word"),
    ("tune-token-symbol", [*TUNE[:3], "s$ks", *TUNE[4:]], 4, "--token must be letters"),
    ("tune-empty-class", [*TUNE[:5], " ", *TUNE[6:]], 4, "--class"),
    ("tune-steps-zero", [*TUNE, "--steps", "0"], 4, "--steps must be >= 1"),
    ("tune-lr-neg", [*TUNE, "--lr", "-1"], 4, "--lr must be > 0"),
    ("tune-layers", [*TUNE, "--layers", "xyz"], 4, "--layers"),
    ("tune-blocks-range", [*TUNE, "--blocks", "0-99"], 4, "--blocks"),
    ("tune-blocks-text", [*TUNE, "--blocks", "a-b"], 4, "--blocks"),
    ("tune-scale-weights", [*TUNE, "--scale-weights", "1,2"], 4, "--scale-weights"),
    ("tune-scale-weights-text", [*TUNE, "--scale-weights", "big"], 4, "--scale-weights"),
    ("tune-seed", [*TUNE, "--seed", str(2**63)], 4, "2^63"),
    ("tune-caption-no-token", [*TUNE, "--caption", "a photo of a dog"], 4, "{token}"),
    ("tune-resume-overwrite", [*TUNE, "--resume", "--overwrite"], 4, "exclude"),
    ("tune-config-missing", [*TUNE, "--config", "{tmp}/none.toml"], 4, "cannot read config file"),
    ("tune-config-not-toml", [*TUNE, "--config", "{tmp}/bad.toml"], 4, "not valid TOML"),
    ("tune-config-types", ["tune", "--config", "{tmp}/types.toml"], 4, "must be an integer"),
    ("tune-config-unknown", [*TUNE, "--config", "{tmp}/unknown.toml"], 4, "unknown keys"),
    ("tune-config-prompts-str", [*TUNE, "--config", "{tmp}/vp.toml"], 4, "validation_prompts must be a list"),
    ("tune-device", [*TUNE, "--device", "cuda"], 3, "no CUDA device"),
    ("tune-run-dir-file", [*TUNE, "--run-dir", "{tmp}/file.txt"], 5, "cannot write to the run folder"),
    ("tune-caption-latin1", ["tune", "{latin1_photos}", "--token", "sks", "--class", "dog", *TINY, *FAST], 4,
     "not UTF-8"),
    # subjects
    ("subjects-info-unknown", ["subjects", "info", "nobody"], 3, "no subject named"),
    ("subjects-rm-unknown", ["subjects", "rm", "nobody"], 3, "no subject named"),
    ("subjects-rm-dotdot", ["subjects", "rm", "../runs"], 4, "is not valid"),
    ("subjects-export-unknown", ["subjects", "export", "nobody", "{tmp}/x.safetensors"], 3, "no subject named"),
    # inspect
    ("noise-scales", ["inspect", "noise", "a red star", "--scales", "0", "--out", "{tmp}/r"], 4, "scale"),
    ("noise-mode", ["inspect", "noise", "a red star", "--mode", "blur", "--out", "{tmp}/r"], 4, "--mode"),
    ("noise-strength", ["inspect", "noise", "a red star", "-p", "2", "--out", "{tmp}/r"], 4, "--strength"),
    ("noise-cfg-nan", ["inspect", "noise", "a red star", "--cfg", "nan", "--out", "{tmp}/r"], 4, "finite"),
    ("noise-seed", ["inspect", "noise", "a red star", "--seed", str(2**63 - 2), "--out", "{tmp}/r"], 4, "2^63"),
    ("weights-unknown", ["inspect", "weights", "nobody", "--out", "{tmp}/r"], 3, "no subject named"),
    ("weights-junk", ["inspect", "weights", "{tmp}/junk.safetensors", "--out", "{tmp}/r"], 4, "safetensors"),
    # eval
    ("eval-unknown", ["eval", "nobody"], 3, "no subject named"),
    ("eval-seeds", ["eval", "nobody", "--seeds", "0"], 4, "--seeds"),
    ("eval-junk", ["eval", "{tmp}/junk.safetensors"], 4, "safetensors"),
    # models
    ("models-info-unknown", ["models", "info", "nope"], 3, "unknown model"),
    ("models-add-missing", ["models", "add", "infinity-2b", "{tmp}/none.pth"], 4, "no such file"),
    ("models-verify-uncached", ["models", "verify", "infinity-2b"], 3, "not in the local cache"),
]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("a file in the way")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00[1,2,3]!")
    (tmp_path / "latin1.txt").write_bytes("a caf\xe9 on the left".encode("latin-1"))
    (tmp_path / "badjson.jsonl").write_text('{"prompt": "a red star", \n')
    (tmp_path / "topp.jsonl").write_text('{"prompt": "a red star", "top_p": [0.5, 0.6]}\n')
    (tmp_path / "bigseed.jsonl").write_text(f'{{"prompt": "a red star", "seed": {2**64}}}\n')
    (tmp_path / "unknown.jsonl").write_text('{"prompt": "a red star", "steps": 3}\n')
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    (tmp_path / "bad.toml").write_text("steps = = 3\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(200, 40, 40), (40, 180, 60)]):
        Image.new("RGB", (64, 64), colour).save(photos / f"p{i}.png")
    (tmp_path / "types.toml").write_text(f'photos = "{photos}"\ntoken = "sks"\nclass = "dog"\nsteps = "abc"\n'
                                         'lr = "fast"\nseed = 1.5\nlayers = 5\n')
    (tmp_path / "unknown.toml").write_text("stepz = 3\n")
    (tmp_path / "vp.toml").write_text('validation_prompts = "a {token} {cls}"\n')
    latin1 = tmp_path / "latin1-photos"
    shutil.copytree(photos, latin1)
    (latin1 / "p0.txt").write_bytes("a sks dog at the caf\xe9".encode("latin-1"))
    return {"tmp": str(tmp_path), "photos": str(photos), "latin1_photos": str(latin1)}


@pytest.mark.parametrize(("argv", "code", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line_with_its_exit_code(cli, files, argv, code, needle):
    args = [a.format(**files) if "{" in a and "}" in a and "{token}" not in a else a for a in argv]
    r = cli(*args)
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and needle in r.stderr, r.stderr
    if code != 2:
        assert r.stderr.startswith("error: "), r.stderr
        assert r.stderr.rstrip("\n").count("\n") <= 1, r.stderr  # the message, and at most a hint line
    home = paths.home()
    assert not list(home.rglob("*.partial")) and not list(home.rglob(".*.tmp"))


def test_captions_with_other_braces_are_text_not_format_strings(cli, files, tmp_path):
    """Only {token} and {cls} are filled in; any other brace is kept as written."""
    photos = Path(files["photos"])
    (photos / "p0.txt").write_text("a {token} {cls} in {braces} }\n")
    r = cli(*[a.format(**files) if a == "{photos}" else a for a in TUNE], "--caption", "a {token} dog, {x}",
            "--json")
    assert r.exit_code == 0, r.output


def test_a_prompts_file_with_a_byte_order_mark_reads_its_first_json_line(cli, tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a red star on the left, blue background", "seed": 7}\n')
    r = cli("gen", "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "o").glob("*.png")] == ["0000-a-red-star-on-the-left-blue-background-7.png"]
