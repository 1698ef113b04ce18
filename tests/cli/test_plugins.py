import json
import os
import subprocess
import sys
from pathlib import Path


from arbooth_cli import plugins
from arbooth_cli.registry import default_registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "arbooth-hello-plugin"


def test_sub_apps_register_callables_and_model_hooks(cli, entry_points):
    entry_points(
        ("fake", "fake_plugins:sub_app", plugins.COMMANDS_GROUP),
        ("shouter", "fake_plugins:register", plugins.COMMANDS_GROUP),
        ("fake-models", "fake_plugins:register_models", plugins.MODELS_GROUP),
    )
    assert cli("fake", "ping").stdout == "pong\n"
    assert cli("shout", "hi").stdout == "HI\n"
    assert "tiny-fake" in default_registry()
    assert default_registry().get("tiny-fake").plugin == "fake-models"
    info = cli("models", "info", "tiny-fake", "--json")
    assert json.loads(info.stdout)["spec"]["description"] == "from a fake plugin"


def test_broken_plugins_are_listed_with_their_error_and_break_nothing(cli, entry_points):
    entry_points(
        ("missing", "no_such_module_xyz:app", plugins.COMMANDS_GROUP),
        ("number", "fake_plugins:not_a_plugin", plugins.COMMANDS_GROUP),
        ("half", "fake_plugins:register_bad_models", plugins.MODELS_GROUP),
        ("dupe", "fake_plugins:fails_loudly", plugins.MODELS_GROUP),
        ("good", "fake_plugins:register_models", plugins.MODELS_GROUP),
    )
    r = cli("plugins", "list", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in (json.loads(line) for line in r.stdout.splitlines())}
    assert "ModuleNotFoundError" in rows["missing"]["error"]
    assert "expected a typer.Typer" in rows["number"]["error"]
    assert "crashed half-way" in rows["half"]["error"]
    assert "already registered" in rows["dupe"]["error"]
    assert rows["good"]["error"] is None and rows["models"]["builtin"] is True
    names = default_registry().names()
    assert "tiny-half" not in names and "tiny-fake" in names  # all or nothing per plugin
    assert cli("models", "list").exit_code == 0
    table = cli("plugins", "list").stdout
    assert "failed:" in table and "ModuleNotFoundError" in table


def test_selection_env_var(entry_points, monkeypatch):
    entry_points(("a", "fake_plugins:sub_app", plugins.COMMANDS_GROUP),
                 ("b", "fake_plugins:register", plugins.COMMANDS_GROUP))
    assert [r.name for r, _ in plugins.load_group(plugins.COMMANDS_GROUP)] == ["a", "b"]
    monkeypatch.setenv("ARBOOTH_LOAD_PLUGINS", "b")
    assert [r.name for r, _ in plugins.load_group(plugins.COMMANDS_GROUP)] == ["b"]
    monkeypatch.setenv("ARBOOTH_LOAD_PLUGINS", "")
    assert plugins.load_group(plugins.COMMANDS_GROUP) == []


def test_example_plugin_contract_in_process(cli, entry_points, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    entry_points(("hello", "arbooth_hello:app", plugins.COMMANDS_GROUP),
                 ("hello-models", "arbooth_hello:register_models", plugins.MODELS_GROUP))
    assert cli("hello", "greet", "World").stdout == "hello, World, from a plugin\n"
    assert "tiny-hello" in default_registry()


def test_example_plugin_installs_and_its_command_appears(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target), ARBOOTH_LOAD_PLUGINS="arbooth-hello")
    run = lambda *a: subprocess.run([sys.executable, "-m", "arbooth_cli", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    assert "hello" in run("--help").stdout
    assert run("hello", "greet", "CI").stdout == "hello, CI, from a plugin\n"
    listed = run("plugins", "list", "--json").stdout
    rows = [json.loads(line) for line in listed.splitlines()]
    assert {(r["name"], r["distribution"]) for r in rows if not r["builtin"]} == {
        ("hello", "arbooth-hello"), ("hello-models", "arbooth-hello")}
