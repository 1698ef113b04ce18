"""Which model a command uses when none is named."""

from __future__ import annotations

import pytest

from arbooth_cli.errors import ConfigError
from arbooth_cli.loading import LAST_MODEL_FILE, last_model, remember_model, resolve_model


def test_last_used_model_is_the_default(_isolated_env):
    with pytest.raises(ConfigError):  # nothing cached, nothing remembered
        resolve_model(None, env={})
    remember_model("tiny-infinity")
    assert last_model(_isolated_env) == "tiny-infinity"
    assert resolve_model(None, env={}).spec.name == "tiny-infinity"


def test_environment_wins_over_last_used_and_stale_names_are_ignored(_isolated_env):
    (_isolated_env).mkdir(parents=True, exist_ok=True)
    (_isolated_env / LAST_MODEL_FILE).write_text("no-such-model\n")
    with pytest.raises(ConfigError):  # a remembered name that is no longer known is not used
        resolve_model(None, env={})
    remember_model("infinity-2b")  # known but not cached: not usable, so not the default
    with pytest.raises(ConfigError):
        resolve_model(None, env={})
    assert resolve_model(None, env={"ARBOOTH_MODEL": "tiny-infinity"}).spec.name == "tiny-infinity"
