"""config.toml: a missing file is the defaults; a broken one is an error, never silently ignored."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import llmlocal
from llmlocal import config, loader
from llmlocal.cli import cli
from llmlocal.errors import ConfigError


def _write(home, text: str | bytes) -> None:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def test_missing_config_means_the_default_model(home):
    assert loader.default_model() == "smollm2-135m"
    home.mkdir(parents=True)
    assert loader.default_model() == "smollm2-135m"  # a home without the file


def test_config_chooses_the_default_model_and_the_environment_wins(home, monkeypatch):
    _write(home, 'default_model = "gemma3-270m-base"\n')
    assert loader.default_model() == "gemma3-270m-base"
    monkeypatch.setenv("LLMLOCAL_MODEL", "qwen3-8b")
    assert loader.default_model() == "qwen3-8b"


@pytest.mark.parametrize(("text", "problem"), [
    ('default_model = "gemma3-270m-base', "invalid TOML: "),  # unterminated string
    ("default_model = 5\n", "key 'default_model': must be a non-empty string"),
    ('default_model = ""\n', "key 'default_model': must be a non-empty string"),
    ('default_model = ["a"]\n', "key 'default_model': must be a non-empty string"),
    ('default-model = "gemma3-270m-base"\n', "unknown key(s) ['default-model']; allowed: ['default_model']"),
    (b"default_model = \"\xff\"\n", "not UTF-8 text"),
])
def test_broken_config_is_an_error_naming_the_file(home, text, problem):
    # Issue #12 item 15: these were all ignored, and smollm2-135m used without a word.
    _write(home, text)
    with pytest.raises(ConfigError) as err:
        loader.default_model()
    assert str(err.value).startswith(f"{home / 'config.toml'}")
    assert problem in str(err.value)
    assert isinstance(err.value, ValueError) and err.value.path == str(home / "config.toml")


def test_broken_config_is_one_clean_line_from_the_cli_and_the_api(home):
    _write(home, "default_model = 5\n")
    result = CliRunner().invoke(cli, ["complete", "hi"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {home / 'config.toml'}, key 'default_model': must be a non-empty string (a model name, "
        ".gguf path or hf: reference), got 5",
        "  hint: fix or delete the file (see README: Where things live); a missing file means the defaults"]
    with pytest.raises(ConfigError):
        llmlocal.load()


def test_config_that_cannot_be_read_is_an_error(home):
    (home / "config.toml").mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(ConfigError, match="cannot read"):
        config.load_config()
