import json

import torch

from arbooth_cli import plugins
from arbooth_cli.cache import ModelCache
from arbooth_cli.specs.infinity import INFINITY_2B


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_list_shows_every_spec_with_status(cli):
    r = cli("models", "list", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in _json_lines(r.stdout)}
    assert rows["infinity-2b"]["status"] == "not cached"
    assert rows["tiny-infinity"]["status"] == "built in"
    table = cli("models", "list")
    assert "infinity-8b" in table.stdout and "not cached" in table.stdout


def test_unknown_model_is_exit_3_with_a_suggestion_on_stderr(cli):
    r = cli("models", "info", "infinty-2b")
    assert r.exit_code == 3
    assert r.stdout == ""
    assert r.stderr.splitlines()[0] == (
        "error: unknown model 'infinty-2b'; did you mean 'infinity-2b' or 'infinity-8b' or 'tiny-infinity'?"
    )


def test_add_list_verify_rm_through_the_cli(cli, entry_points, make_checkpoints):
    """The whole life of a model that needs files (tiny tensors with the exact expected names)."""
    entry_points(("filed", "fake_plugins:register_filed_models", plugins.MODELS_GROUP))
    tr_path, vae_path, *_ = make_checkpoints()

    r = cli("models", "add", "tiny-filed", str(tr_path), str(vae_path), "--json")
    assert r.exit_code == 0, r.output
    added = json.loads(r.stdout)
    assert added["name"] == "tiny-filed" and len(added["model_hash"]) == 64

    rows = {row["name"]: row for row in _json_lines(cli("models", "list", "--json").stdout)}
    assert rows["tiny-filed"]["status"] == "ready" and rows["tiny-filed"]["model_hash"] == added["model_hash"]

    again = cli("models", "add", "tiny-filed", str(tr_path), str(vae_path))
    assert again.exit_code == 4 and "--force" in again.stderr

    ok = cli("models", "verify", "tiny-filed", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True

    model = ModelCache().get("tiny-filed")
    model.path("vae").write_bytes(b"corrupted")
    bad = cli("models", "verify", "tiny-filed")
    assert bad.exit_code == 4 and "vae.safetensors" in bad.stdout

    info = cli("models", "info", "tiny-filed", "--json")
    assert json.loads(info.stdout)["cache"]["model_hash"] == added["model_hash"]

    rm = cli("models", "rm", "tiny-filed")
    assert rm.exit_code == 0 and "removed tiny-filed" in rm.stdout
    assert cli("models", "rm", "tiny-filed").exit_code == 3


def test_weights_of_another_model_are_refused_by_name(cli, entry_points, make_checkpoints):
    entry_points(("filed", "fake_plugins:register_filed_models", plugins.MODELS_GROUP))
    tr_path, vae_path, tr, _ = make_checkpoints()
    tr["head.weight"] = torch.zeros(32, 64)  # a head for 16 bits per token instead of 8
    del tr["lvl_embed.weight"]
    torch.save(tr, tr_path)
    r = cli("models", "add", "tiny-filed", str(tr_path), str(vae_path))
    assert r.exit_code == 4
    assert "head.weight (file [32, 64], expected [16, 64])" in r.stderr
    assert "1 missing: lvl_embed.weight" in r.stderr
    assert ModelCache().scan().models == () and ModelCache().scan().partial == ()


def test_add_with_missing_files_says_which(cli, tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "infinity_2b_reg.pth")
    r = cli("models", "add", "infinity-2b", str(tmp_path / "infinity_2b_reg.pth"))
    assert r.exit_code == 4
    assert "missing files for 'infinity-2b': vae (infinity_vae_d32reg.pth), text_encoder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_pull_offline_is_exit_6_and_points_at_add(cli):
    r = cli("models", "pull", "infinity-2b")
    assert r.exit_code == 6
    assert "arbooth models add infinity-2b" in r.stderr


def test_tiny_models_need_no_files(cli):
    r = cli("models", "add", "tiny-infinity", "x")
    assert r.exit_code == 4 and "needs no files" in r.stderr
    assert INFINITY_2B.requires_files


def test_version_and_quiet(cli):
    from arbooth_cli import __version__

    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"arbooth {__version__}"
    r = cli("--quiet", "models", "prune")
    assert r.exit_code == 0 and r.stderr == ""
    r = cli("models", "prune")
    assert "nothing to prune" in r.stderr
