import pytest

from arbooth_cli.models import schedules as S


def test_square_sizes_match_the_infinity_token_counts():
    assert S.get_schedule("1M", 1.0).num_tokens == 10521
    assert S.get_schedule("0.25M", 1.0).num_tokens == 2521
    assert S.get_schedule("0.06M", 1.0).num_tokens == 521
    one_m = S.get_schedule("1M", 1.0)
    assert len(one_m.scales) == 13 and one_m.pixel_hw == (1024, 1024)
    assert [h for _, h, _ in one_m.scales] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]
    assert all(t == 1 for t, _, _ in one_m.scales)


def test_fifteen_templates_with_transposed_landscape_ladders():
    assert len(S.TEMPLATES) == 15
    assert S.TEMPLATES[0.5] == tuple((w, h) for h, w in S.TEMPLATES[2.0])
    assert 0.75 in S.TEMPLATES and 0.333 in S.TEMPLATES  # keys truncated to 3 decimals
    for ratio, ladder in S.TEMPLATES.items():
        h, w = ladder[-1]
        assert abs(h / w - ratio) < 0.02


def test_nearest_template_and_aspect_parsing():
    assert S.nearest_template(1.02) == 1.0
    assert S.nearest_template(0.56) == pytest.approx(0.571)
    assert S.parse_aspect("16:9") == pytest.approx(9 / 16)
    assert S.parse_aspect("1.5") == 1.5
    for bad in ("0:1", "wide", "-2"):
        with pytest.raises(ValueError, match="aspect"):
            S.parse_aspect(bad)


def test_bad_size_and_scale_counts_are_refused():
    with pytest.raises(ValueError, match="unknown size"):
        S.get_schedule("2M")
    with pytest.raises(ValueError, match="num_scales"):
        S.get_schedule(num_scales=14)
    assert len(S.get_schedule(num_scales=4).scales) == 4
    assert S.full_ladder_last(1.0) == (64, 64)
