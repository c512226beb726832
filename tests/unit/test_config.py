"""The cross-field checks of a config: each mistake named by its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlproxy.config import ConfigError
from tlproxy.config_load import load_config

MODEL = '[[models]]\nid = "m"\nprovider = "sim"\ntier = "economy"\n'
PROVIDERS = """
[providers.sim]
kind = "sim"

[providers.anthropic]
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key = "k"
"""


def write(tmp_path: Path, models: str = "", tables: str = "") -> Path:
    path = tmp_path / "tlproxy.toml"
    path.write_text(MODEL + models + PROVIDERS + tables)
    return path


@pytest.mark.parametrize(("models", "tables", "message"), [
    (MODEL, "", r"models\[1\]\.id: duplicate model id 'm'"),
    ('[[models]]\nid = "n"\nprovider = "nowhere"\ntier = "economy"\n', "",
     r"models\[1\]\.provider: no provider named 'nowhere'"),
    ("", '[providers.openai]\nkind = "openai"\n', r"providers\.openai\.base_url: required"),
    ("", '[providers.openai]\nkind = "openai"\nbase_url = "https://x"\nprompt_cache = true\n',
     r"providers\.openai\.prompt_cache: only for kind 'anthropic'"),
    ("", '[aliases]\n"gpt-4o" = "nothing"\n', r"aliases\.gpt-4o: 'nothing' is neither"),
])
def test_cross_field_mistakes_name_their_path(
    tmp_path: Path, models: str, tables: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, models, tables))


def test_prompt_cache_on_anthropic_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('api_key = "k"', 'api_key = "k"\nprompt_cache = true'))
    assert load_config(path).providers["anthropic"].prompt_cache


@pytest.mark.parametrize(("models", "tables", "message"), [
    ('[[models]]\nid = "n"\nprovider = "sim"\ntier = "economy"\ntotal_timeout = 0.0\n', "",
     r"models\[1\]\.total_timeout: must be more than 0 seconds"),
    ("", '[providers.openai]\nkind = "openai"\nbase_url = "https://x"\ntotal_timeout = -1.0\n',
     r"providers\.openai\.total_timeout: must be more than 0 seconds"),
])
def test_a_total_timeout_must_leave_time_to_answer(
    tmp_path: Path, models: str, tables: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, models, tables))

