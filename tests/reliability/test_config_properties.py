"""Property-based checks of the config parsers: whatever a user types, a TOML file holds or a
prompts file line says, the parsers answer with a typed error (InvalidInputError, exit 4) or a
config that validates, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arbooth_cli.config import (GenConfig, InspectNoiseConfig, PromptJob, TuneConfig, parse_int_ranges,
                                parse_number_list, read_prompts_file, read_tune_file)
from arbooth_cli.errors import InvalidInputError
from arbooth_cli.tuning.selection import parse_blocks, parse_layers

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# JSON-like values of every kind a file can hold
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
TUNE_KEYS = [f for f in TuneConfig.__dataclass_fields__]


@SETTINGS
@given(st.dictionaries(st.sampled_from(TUNE_KEYS + ["class", "stepz"]), VALUES, max_size=6))
def test_any_tune_settings_give_a_valid_config_or_a_typed_error(data):
    base = {"photos": "p", "token": "sks", "cls": "dog"}
    data = {("cls" if k == "class" else k): v for k, v in data.items()}
    try:
        TuneConfig.from_dict({**base, **data}).validate()
    except InvalidInputError:
        pass


@SETTINGS
@given(st.lists(st.one_of(st.text(max_size=40), st.dictionaries(
    st.sampled_from(["prompt", "seed", "n", "num_images", "cfg", "tau", "top_k", "top_p", "size", "aspect", "x"]),
    VALUES, max_size=5).map(json.dumps)), min_size=1, max_size=5))
def test_any_prompts_file_gives_jobs_that_validate_or_a_typed_error(tmp_path_factory, lines):
    path = Path(tmp_path_factory.mktemp("p")) / "prompts.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        jobs = read_prompts_file(path)
        GenConfig(prompts=tuple(jobs)).validate()
    except InvalidInputError:
        pass


@SETTINGS
@given(st.text(max_size=60))
def test_any_toml_text_gives_settings_or_a_typed_error(tmp_path_factory, text):
    path = Path(tmp_path_factory.mktemp("t")) / "tune.toml"
    path.write_text(text, encoding="utf-8")
    try:
        TuneConfig.from_dict({"photos": "p", "token": "sks", "cls": "dog", **read_tune_file(path)}).validate()
    except InvalidInputError:
        pass


@SETTINGS
@given(st.text(max_size=30))
def test_option_lists_parse_or_raise_their_own_error(text):
    try:
        parse_number_list(text, "--cfg")
    except InvalidInputError:
        pass
    for parse in (parse_int_ranges, lambda t: parse_blocks(t, 8), parse_layers):
        try:
            parse(text)
        except ValueError:
            pass


@SETTINGS
@given(st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.floats())
def test_seeds_and_numbers_of_gen_and_inspect_are_checked(seed, cfg, top_p):
    for make in (lambda: GenConfig(prompts=(PromptJob("a red star"),), seed=seed, cfg=cfg, top_p=top_p),
                 lambda: InspectNoiseConfig(prompt="a red star", seed=seed, cfg=cfg, top_p=top_p)):
        try:
            make().validate()
        except InvalidInputError:
            continue
        assert 0 <= seed < 2**63 and cfg == cfg and top_p == top_p  # accepted only when in range and finite
