"""Personalization metrics over tiny random DINO (ViT) and CLIP models saved as local folders."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from arbooth_cli.analysis.features import clip_text_features, hub_features
from arbooth_cli.subjects import class_prompt_of
from arbooth_cli.analysis.personalization import (RealMetrics, Stat, check_real_metric_weights,
                                                  cosine_matrix, diversity, drift_similarity, extract_batched,
                                                  load_real_metric_models, real_metrics, subject_fidelity,
                                                  text_alignment)
from arbooth_cli.errors import NotFoundError
from tiny_feature_models import save_clip as _save_clip  # tests/tiny_feature_models.py, shared with eval's tests
from tiny_feature_models import save_dino as _save_dino

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"dino": _save_dino(root / "dino"), "clip": _save_clip(root / "clip")}


@pytest.fixture(scope="module")
def models(folders):
    return load_real_metric_models(str(folders["dino"]), str(folders["clip"]), CPU)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """The checks must not see whatever this machine's real Hugging Face cache holds."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _images(n, seed, size=(40, 48)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=g)


# ---- the prompt for CLIP-T -----------------------------------------------------------------


@pytest.mark.parametrize("prompt, expected", [
    ("sks dog on a wave", "dog on a wave"),
    ("a sks dog on a wave", "a dog on a wave"),
    ("a photo of sks", "a photo of dog"),
    ("a sks in the snow", "a dog in the snow"),
    ("a photo of sks dog.", "a photo of dog."),
    ("two sks dogs on a sofa", "two dogs on a sofa"),
    ("a dog on a wave", "a dog on a wave"),  # no identifier: unchanged
    ("sksy dog and asks", "sksy dog and asks"),  # only the whole word is the identifier
])
def test_class_prompt_replaces_the_identifier(prompt, expected):
    assert class_prompt_of(prompt, "sks", "dog") == expected


def test_class_prompt_with_a_multi_word_class_and_odd_characters():
    assert class_prompt_of("a zz-1 teddy bear at the beach", "zz-1", "teddy bear") == "a teddy bear at the beach"
    assert class_prompt_of("zz-1 next to zz-1", "zz-1", r"cat\1") == r"cat\1 next to cat\1"  # no regex escapes
    with pytest.raises(ValueError):
        class_prompt_of("a sks dog", "", "dog")


# ---- the maths over features ---------------------------------------------------------------


def test_fidelity_is_symmetric_bounded_and_scale_free():
    g = torch.Generator().manual_seed(0)
    a_AD = torch.randn(5, 8, generator=g, dtype=torch.float64)
    b_BD = torch.randn(7, 8, generator=g, dtype=torch.float64)
    ab, ba = subject_fidelity(a_AD, b_BD), subject_fidelity(b_BD, a_AD)
    assert ab.mean == pytest.approx(ba.mean, abs=1e-12)  # the mean over all pairs is symmetric
    assert -1.0 <= ab.mean <= 1.0 and ab.n == 5 and ba.n == 7 and ab.std >= 0
    assert subject_fidelity(3.0 * a_AD, b_BD).mean == pytest.approx(ab.mean, abs=1e-12)
    assert cosine_matrix(a_AD, b_BD).abs().max() <= 1.0
    v = torch.randn(1, 8, generator=g, dtype=torch.float64)
    assert subject_fidelity(v, -2 * v).mean == pytest.approx(-1.0, abs=1e-12)
    same = subject_fidelity(v.expand(3, 8), v.expand(4, 8))
    assert same == Stat(pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12), 3)


def test_fidelity_is_the_mean_over_all_pairs():
    e = torch.eye(3, dtype=torch.float64)
    s = subject_fidelity(e[:2], torch.stack([e[0], e[0], e[2]]))  # image 0: 2/3 of refs alike, image 1: none
    assert s.mean == pytest.approx(1 / 3) and s.std == pytest.approx(math.sqrt(2 * (1 / 3) ** 2))


def test_diversity_averages_prompts_equally():
    e = torch.eye(4, dtype=torch.float64)
    feats_BD = torch.stack([e[0], e[1], e[2], e[2], e[2]])  # prompt a: orthogonal; prompt b: three alike
    d = diversity(feats_BD, ["a", "a", "b", "b", "b"])
    assert d.n == 2 and d.mean == pytest.approx(0.5, abs=1e-12) and d.std == pytest.approx(math.sqrt(0.5))
    assert diversity(feats_BD[2:], ["b"] * 3).mean == pytest.approx(0.0, abs=1e-12)
    opposite = diversity(torch.stack([e[0], -e[0]]), ["x", "x"])
    assert opposite.mean == pytest.approx(2.0)  # cosine distance goes up to 2
    with pytest.raises(ValueError, match="at least 2"):
        diversity(feats_BD, ["a", "a", "b", "b", "c"])
    with pytest.raises(ValueError, match="group labels"):
        diversity(feats_BD, ["a"])


def test_drift_and_text_alignment_pair_rows():
    g = torch.Generator().manual_seed(1)
    t_SD = torch.randn(4, 6, generator=g, dtype=torch.float64)
    same = drift_similarity(t_SD, t_SD.clone())
    assert same.mean == pytest.approx(1.0, abs=1e-12) and same.std == pytest.approx(0.0, abs=1e-12) and same.n == 4
    other = drift_similarity(t_SD, torch.randn(4, 6, generator=g, dtype=torch.float64))
    assert other.mean < 0.9
    # seed by seed, not every pair: shuffling the base images changes the number
    assert drift_similarity(t_SD, t_SD.flip(0)).mean < 1.0 - 1e-6
    with pytest.raises(ValueError, match="seed by seed"):
        drift_similarity(t_SD, t_SD[:3])
    expected = torch.nn.functional.cosine_similarity(t_SD, t_SD.roll(1, 0), dim=1).mean().item()
    assert text_alignment(t_SD, t_SD.roll(1, 0)).mean == pytest.approx(expected, abs=1e-12)


# ---- with the tiny models ------------------------------------------------------------------


def test_features_are_batched_without_changing_them(models):
    img = _images(5, 0)
    one_by_one = extract_batched(models.dino, img, batch_size=1)
    assert one_by_one.shape == (5, 32) and one_by_one.dtype == torch.float64
    assert torch.allclose(one_by_one, extract_batched(models.dino, img, batch_size=16), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        extract_batched(models.dino, img[:, :1])


def test_dino_fidelity_of_identical_images_is_one(models):
    photo = _images(1, 0)
    f_BD = extract_batched(models.dino, photo.expand(3, -1, -1, -1))
    assert subject_fidelity(f_BD, f_BD[:2]).mean == pytest.approx(1.0, abs=1e-6)
    other = subject_fidelity(extract_batched(models.dino, _images(3, 1)), f_BD)
    assert -1.0 <= other.mean < 1.0 - 1e-4


def test_clip_text_features_match_the_clip_model(models, folders):
    from transformers import CLIPModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(folders["clip"], use_safetensors=True).eval()
    tok = CLIPTokenizer.from_pretrained(folders["clip"], local_files_only=True)
    prompts = ["a dog on a wave", "a cat"]
    ids = tok(prompts, padding=True, return_tensors="pt")
    img = _images(2, 3)
    with torch.no_grad():
        out = clip(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                   pixel_values=torch.randn(2, 3, 32, 32))
    ours_TD = models.clip_text(prompts)
    unit_TD = torch.nn.functional.normalize(ours_TD, dim=1)  # CLIPModel's output is normalised; ours need not be
    assert torch.allclose(unit_TD, out.text_embeds, atol=1e-5)
    assert torch.allclose(models.clip_text(["a cat"]), ours_TD[1:], atol=1e-5)  # padding does not leak in
    # CLIP-I reads the same checkpoint's projected image embedding
    assert extract_batched(models.clip_image, img).shape == (2, 24)


def test_clip_t_follows_the_prompt_and_clip_i_of_identical_images_is_one(models):
    img = _images(2, 4)
    clip_BD = extract_batched(models.clip_image, img)
    assert subject_fidelity(clip_BD[:1], clip_BD[:1]).mean == pytest.approx(1.0, abs=1e-6)
    wave = text_alignment(clip_BD, models.clip_text(["a dog on a wave"] * 2).double())
    cat = text_alignment(clip_BD, models.clip_text(["a cat"] * 2).double())
    assert abs(wave.mean - cat.mean) > 1e-4 and -1.0 <= wave.mean <= 1.0


def test_real_metrics_put_the_parts_together(models):
    photos = _images(2, 10)
    gen = torch.cat([photos[:1].expand(2, -1, -1, -1), _images(2, 11)])  # prompt a: one image twice
    prompts = ["a sks dog on a wave", "a sks dog on a wave", "a sks dog in the snow", "a sks dog in the snow"]
    tuned, base = _images(3, 12), _images(3, 13)
    m = real_metrics(models, generated_B3HW=gen, prompts=prompts, reference_N3HW=photos, token="sks", cls="dog",
                     tuned_class_S3HW=tuned, base_class_S3HW=tuned.clone(), batch_size=3)
    dino_BD = extract_batched(models.dino, gen)
    assert m.dino.mean == pytest.approx(subject_fidelity(dino_BD, extract_batched(models.dino, photos)).mean,
                                        abs=1e-6)
    clip_BD = extract_batched(models.clip_image, gen)
    texts = models.clip_text(["a dog on a wave"] * 2 + ["a dog in the snow"] * 2).double()
    assert m.clip_t.mean == pytest.approx(text_alignment(clip_BD, texts).mean, abs=1e-6)
    d_a = 0.0  # the two images of prompt a are the same photo
    d_b = 1.0 - torch.nn.functional.cosine_similarity(dino_BD[2:3], dino_BD[3:4]).item()
    assert m.diversity.n == 2 and m.diversity.mean == pytest.approx((d_a + d_b) / 2, abs=1e-6) and d_b > 0
    assert m.drift == pytest.approx(0.0, abs=1e-6)  # tuned == base: no drift
    # PRES: the tuned model's class images against the photos, in DINO features
    pres = subject_fidelity(extract_batched(models.dino, tuned), extract_batched(models.dino, photos))
    assert m.pres.mean == pytest.approx(pres.mean, abs=1e-9) and m.pres.n == 3
    pres_of_photos = real_metrics(models, generated_B3HW=gen[:2], prompts=prompts[:2], reference_N3HW=photos,
                                  token="sks", cls="dog", tuned_class_S3HW=photos, base_class_S3HW=photos)
    assert pres_of_photos.pres.mean > m.pres.mean  # class images that are the photos: full drift
    assert (m.n_generated, m.n_reference, m.n_prompts) == (4, 2, 2)

    drifted = real_metrics(models, generated_B3HW=gen[:2], prompts=["a sks dog", "a photo of sks"],
                           reference_N3HW=photos, token="sks", cls="dog", tuned_class_S3HW=tuned,
                           base_class_S3HW=base)
    assert drifted.drift > 1e-4 and drifted.drift == pytest.approx(1.0 - drifted.drift_similarity.mean)
    assert drifted.diversity is None  # one seed per prompt: not measured
    d = json.loads(json.dumps(drifted.to_dict()))
    assert d["drift"]["drift"] == pytest.approx(drifted.drift) and d["diversity"] is None
    assert d["dino"] == {"mean": drifted.dino.mean, "std": drifted.dino.std, "n": 2}
    assert d["counts"] == {"generated": 2, "reference": 2, "prompts": 2}
    assert "DINO" in d["extractors"]["dino"] and "CLIP" in d["extractors"]["clip_text"]
    assert isinstance(drifted, RealMetrics)
    no_drift = real_metrics(models, generated_B3HW=gen[:2], prompts=prompts[:2], reference_N3HW=photos,
                            token="sks", cls="dog")
    assert no_drift.drift is None and no_drift.to_dict()["drift"] is None
    with pytest.raises(ValueError, match="both"):
        real_metrics(models, generated_B3HW=gen[:2], prompts=prompts[:2], reference_N3HW=photos, token="sks",
                     cls="dog", tuned_class_S3HW=tuned)


# ---- missing weights -----------------------------------------------------------------------


def _fails(dino, clip) -> str:
    with pytest.raises(NotFoundError) as e:
        check_real_metric_weights(dino, clip)
    assert "\n" not in str(e.value) and e.value.hint and e.value.exit_code == 3
    return str(e.value)


def test_every_missing_weight_is_named_at_once(empty_hub_cache, folders, tmp_path):
    msg = _fails(None, None)
    assert "DINO ViT-S/16 weights not found: pass --dino PATH" in msg and "facebook/dino-vits16" in msg
    assert "CLIP ViT-B/32 weights not found: pass --clip PATH" in msg and "openai/clip-vit-base-patch32" in msg
    msg = _fails(str(folders["dino"]), None)
    assert "DINO" not in msg and "--clip" in msg
    msg = _fails(str(tmp_path / "nowhere"), str(folders["clip"]))
    assert f"no DINO ViT-S/16 weights at {tmp_path / 'nowhere'}" in msg and "CLIP" not in msg


def test_incomplete_folders_are_named(empty_hub_cache, folders, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    no_tok = shutil.copytree(folders["clip"], tmp_path / "clip_no_tok")
    (no_tok / "vocab.json").unlink()
    vision_only = tmp_path / "clip_vision"
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32,
                                                   patch_size=16)).save_pretrained(vision_only)
    no_st = tmp_path / "dino_bin"
    no_st.mkdir()
    shutil.copy(folders["dino"] / "config.json", no_st / "config.json")

    msg = _fails(str(no_st), str(no_tok))
    assert "no safetensors weights" in msg and "no tokenizer files (tokenizer.json or vocab.json + merges.txt)" in msg
    assert "text tower" in _fails(str(folders["dino"]), str(vision_only))
    assert "not a DINO ViT" in _fails(str(folders["clip"]), str(folders["clip"]))
    with pytest.raises(NotFoundError, match="no tokenizer files"):  # the loader alone checks it too
        clip_text_features(no_tok, CPU)


def test_the_hub_cache_is_used_when_no_folder_is_given(empty_hub_cache, folders):
    for kind, repo in (("dino", "facebook/dino-vits16"), ("clip", "openai/clip-vit-base-patch32")):
        entry = empty_hub_cache / ("models--" + repo.replace("/", "--"))
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text("0" * 40)
        shutil.copytree(folders[kind], entry / "snapshots" / ("0" * 40))
    w = check_real_metric_weights(None, None)
    assert (w.dino_source, w.clip_source) == ("facebook/dino-vits16", "openai/clip-vit-base-patch32")
    assert (w.clip / "vocab.json").is_file() and (w.dino / "config.json").is_file()
    fx = hub_features("dino", w.dino, CPU, w.dino_source)
    assert fx.name == "DINO ViT-S/16 (facebook/dino-vits16)"
