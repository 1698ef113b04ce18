import pytest

from arbooth_cli.config import GenConfig, PromptJob, parse_number_list, read_prompts_file
from arbooth_cli.errors import ConfigError, InvalidInputError


def test_prompts_file_plain_and_json_lines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text('# a comment\na red star\n\n{"prompt": "a blue square", "seed": 7, "n": 2, "cfg": [4, 3]}\n')
    jobs = read_prompts_file(f)
    assert jobs[0] == PromptJob("a red star", line=2)
    assert jobs[1] == PromptJob("a blue square", seed=7, num_images=2, cfg=(4.0, 3.0), line=4)


@pytest.mark.parametrize(("line", "needle"), [
    ('{"prompt": "x", "seed": "one"}', "line 2: seed must be an integer"),
    ('{"prompt": "x", "colour": 1}', "line 2: unknown keys ['colour']"),
    ('{"prompt": "x",', "line 2: not valid JSON"),
    ('{"seed": 1}', 'line 2: "prompt" must be a string'),
])
def test_malformed_lines_are_named(tmp_path, line, needle):
    f = tmp_path / "p.jsonl"
    f.write_text("a fine prompt\n" + line + "\n")
    with pytest.raises(InvalidInputError) as err:
        read_prompts_file(f)
    assert needle in str(err.value)


def test_config_reports_every_problem_at_once():
    cfg = GenConfig(prompts=(PromptJob("  "),), num_images=0, batch_size=0, overwrite=True, skip_existing=True)
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert len(err.value.problems) == 4
    with pytest.raises(ConfigError, match="no prompt given"):
        GenConfig(prompts=()).validate()


def test_number_lists():
    assert parse_number_list("3", "--cfg") == 3.0
    assert parse_number_list("4,3.5", "--cfg") == (4.0, 3.5)
    with pytest.raises(InvalidInputError, match="--cfg takes a number"):
        parse_number_list("high", "--cfg")
