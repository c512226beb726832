from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlproxy.config import Config
from tlproxy.toml_locate import line_of, parse_path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tlproxy.toml"

# Line numbers are written on the right of each line, so a table row below can
# be checked against the text by eye. Every line ends with its own number.
SAMPLE = """\
# a config for tests                                          #  1
default_alias = "auto"                                        #  2
                                                              #  3
[server]                                                      #  4
host = "0.0.0.0"   # a comment with [brackets] and "quotes"   #  5
port = 8080                                                   #  6
                                                              #  7
[providers.openai]                                            #  8
kind = "openai"                                               #  9
api_key = "${OPENAI_API_KEY}"                                 # 10
                                                              # 11
[providers."my.proxy"]                                        # 12
kind = 'sim'                                                  # 13
sim_models.fast = { ttft_ms = 5.0, tokens = 3 }               # 14
                                                              # 15
[[models]]                                                    # 16
id = "a"                                                      # 17
tier = "premium"                                              # 18
                                                              # 19
[models.prices]                                               # 20
input = 3.0                                                   # 21
                                                              # 22
[[models]]                                                    # 23
id = "b"                                                      # 24
capabilities = { tools = false, max_context = 8_192 }         # 25
prices.input = 0.5                                            # 26
                                                              # 27
[[models]]                                                    # 28
id = "c"                                                      # 29
tier = "economy"                                              # 30
                                                              # 31
[models.prices.long_context]                                  # 32
above_input_tokens = 200_000                                  # 33
                                                              # 34
[aliases]                                                     # 35
"gpt-4o" = "auto"                                             # 36
"gpt-4.1" = "premium"                                         # 37
'gemini-1.5-pro' = "premium"                                  # 38
                                                              # 39
[policy]                                                      # 40
default_tier = "economy"                                      # 41
rules = [                                                     # 42
  { name = "warmup", when = { system_only = true }, tier = "economy" },  # 43
  # a comment between elements                                # 44
  { name = "tools", when = { tools = true }, tier = "premium" },  # 45
  { name = "tasks", when = { task = [                         # 46
      "summarization",                                        # 47
      "extraction" ] }, tier = "economy" },                   # 48
]                                                             # 49
                                                              # 50
[policies.rag]                                                # 51
description = \"\"\"                                          # 52
a [fake] header = "inside" a string                           # 53
\"\"\"                                                        # 54
                                                              # 55
[[policies.rag.rules]]                                        # 56
name = "first"                                                # 57
tier = "economy"                                              # 58
                                                              # 59
[policies.rag.rules.when]                                     # 60
first_turn = true                                             # 61
                                                              # 62
[[policies.rag.rules]]                                        # 63
name = "second"                                               # 64
when.task = ["summarization"]                                 # 65
                                                              # 66
[[keys]]                                                      # 67
name = "one"                                                  # 68
hash = "sha256:00"                                            # 69
                                                              # 70
[[keys]]                                                      # 71
name = "two"                                                  # 72
"""


def test_sample_is_valid_toml_and_numbered() -> None:
    tomllib.loads(SAMPLE)
    for number, line in enumerate(SAMPLE.splitlines(), start=1):
        assert line.rstrip().endswith(f"{number:2d}"), (number, line)


@pytest.mark.parametrize(("path", "line"), [
    # top-level keys and plain tables
    ("default_alias", 2),
    ("server", 4),
    ("server.host", 5),
    ("server.port", 6),
    ("$.server.port", 6),
    # dotted table headers; a header implicitly creates its parent
    ("providers", 8),
    ("providers.openai", 8),
    ("providers.openai.kind", 9),
    ("providers.openai.api_key", 10),
    # a quoted key with a dot in it, quoted or not in the path
    ('providers."my.proxy".kind', 13),
    ("providers.my.proxy.kind", 13),
    # a dotted key whose value is an inline table
    ("providers.my.proxy.sim_models", 14),
    ("providers.my.proxy.sim_models.fast", 14),
    ("providers.my.proxy.sim_models.fast.tokens", 14),
    # arrays of tables, counted; sub-tables belong to the latest element
    ("models", 16),
    ("models[0]", 16),
    ("models[0].id", 17),
    ("models[0].tier", 18),
    ("models[0].prices", 20),
    ("models[0].prices.input", 21),
    ("models[1]", 23),
    ("models[1].id", 24),
    ("models[1].capabilities", 25),
    ("models[1].capabilities.max_context", 25),
    ("models[1].prices.input", 26),
    ("models[2].tier", 30),
    ("models[2].prices.long_context.above_input_tokens", 33),
    ("$.models[2].prices.long_context", 32),
    # quoted keys; a path may quote them or not
    ("aliases", 35),
    ("aliases.gpt-4o", 36),
    ('aliases."gpt-4o"', 36),
    ('aliases."gpt-4.1"', 37),
    ("aliases.gpt-4.1", 37),
    ("aliases.gemini-1.5-pro", 38),
    ("aliases.'gemini-1.5-pro'", 38),
    # an array of inline tables over several lines, comments in between
    ("policy.rules", 42),
    ("policy.rules[0]", 43),
    ("policy.rules[0].when.system_only", 43),
    ("policy.rules[1].name", 45),
    ("policy.rules[1].when.tools", 45),
    ("policy.rules[2].when", 46),
    ("policy.rules[2].when.task[0]", 47),
    ("policy.rules[2].when.task[1]", 48),
    ("policy.rules[2].tier", 48),
    # a multi-line string that looks like TOML inside
    ("policies.rag.description", 52),
    # arrays of tables nested under tables, with sub-tables and dotted keys
    ("policies.rag.rules[0]", 56),
    ("policies.rag.rules[0].tier", 58),
    ("policies.rag.rules[0].when", 60),
    ("policies.rag.rules[0].when.first_turn", 61),
    ("policies.rag.rules[1].when", 65),
    ("policies.rag.rules[1].when.task", 65),
    ("keys[0].hash", 69),
    ("keys[1].name", 72),
    # msgspec names no dict key: "[...]" matches the first key that fits
    ("$.providers[...].kind", 9),
    ("$.providers[...].sim_models", 14),
    ("$.providers[...]", 8),
])
def test_present(path: str, line: int) -> None:
    assert line_of(SAMPLE, path) == line


@pytest.mark.parametrize(("path", "line"), [
    # a missing key: the line of the table that should hold it
    ("server.workers", 4),
    ("server.unknown_field", 4),
    ("providers.openai.base_url", 8),
    ("providers.gemini", 8),
    ("providers.gemini.kind", 8),
    ("models[0].upstream_model", 16),
    ("models[0].capabilities.vision", 16),
    ("models[0].prices.output", 20),
    ("models[1].tier", 23),
    ("models[2].prices.input", 32),
    ("aliases.gpt-5", 35),
    ("policy.strategy", 40),
    ("policies.rag.rules[1].tier", 63),
    ("policies.rag.rules[1].when.first_turn", 65),
    ("keys[1].hash", 71),
    # inside an inline table, the line of that table
    ("models[1].capabilities.vision", 25),
    ("policy.rules[0].when.tools", 43),
    ("policy.rules[0].when.nope.deeper", 43),
    # no provider has the key: the table all of them are in
    ("$.providers[...].http2", 8),
])
def test_missing_key_gives_its_table(path: str, line: int) -> None:
    assert line_of(SAMPLE, path) == line


@pytest.mark.parametrize("path", [
    "",
    "$",
    "nothing",
    "nothing.at.all",
    "models[3]",
    "models[3].id",
    "keys[9].hash",
    "policy.rules[3]",
    "server.port.deeper",          # below a scalar
    "server[0]",                   # an index into a table
    "models.id",                   # a key into an array
    "aliases.gpt-4o.x",
    "policy.rules[2].when.task[2]",
    "models[x]",                   # not a path
    "a..b[",
])
def test_unknown_path(path: str) -> None:
    assert line_of(SAMPLE, path) is None


def test_parse_path() -> None:
    assert parse_path("$.models[2].tier") == ["models", 2, "tier"]
    assert parse_path('aliases."gpt-4.1"') == ["aliases", "gpt-4.1"]
    assert parse_path("a[0][1].b") == ["a", 0, 1, "b"]
    assert parse_path("") is None
    assert parse_path("a[0]b") is None


def test_invalid_toml_answers_from_what_was_read() -> None:
    text = '[server]\nport = 8080\n\n[[models]]\nid = "a"\ntier = "x\nprovider = "p"\n'
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    assert line_of(text, "server.port") == 2
    assert line_of(text, "models[0].id") == 5
    # Not read: the table that should hold them.
    assert line_of(text, "models[0].tier") == 4
    assert line_of(text, "models[0].provider") == 4


def test_windows_line_endings() -> None:
    text = SAMPLE.replace("\n", "\r\n")
    assert line_of(text, "models[2].tier") == 30
    assert line_of(text, "policy.rules[2].when.task[1]") == 48


def _msgspec_path(text: str) -> str:
    try:
        msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        match = re.search(r"at `([^`]+)`$", str(exc))
        assert match, exc
        path = match.group(1)
        field = re.search(r"unknown field `([^`]+)`", str(exc))
        return f"{path}.{field.group(1)}" if field else path
    raise AssertionError("no validation error")


@pytest.mark.parametrize(("text", "line"), [
    ('[server]\nhost = "h"\nport = "80"\n', 3),
    ('[server]\nhost = "h"\nportt = 80\n', 3),
    ('[[models]]\nid = "a"\nprovider = "p"\ntier = "premium"\n\n'
     '[[models]]\nid = "b"\nprovider = "p"\ntier = "gold"\n', 9),
    ('[[models]]\nid = "a"\nprovider = "p"\n', 1),
    ('[policy]\nrules = [\n  { name = "a", tier = "premium" },\n'
     '  { name = "b", tier = "premium", when = { tool = true } },\n]\n', 4),
    ('[[keys]]\nname = "k"\nhash = 12\n', 3),
])
def test_points_at_msgspec_errors(text: str, line: int) -> None:
    assert line_of(text, _msgspec_path(text)) == line


def _leaves(value: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            name = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'
            out += _leaves(item, f"{path}.{name}" if path else name)
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [leaf for i, item in enumerate(value) for leaf in _leaves(item, f"{path}[{i}]")]
    return [(path, value)]


@pytest.mark.parametrize("source", ["sample", "example"])
def test_every_key_found_on_a_line_that_writes_it(source: str) -> None:
    text = SAMPLE if source == "sample" else EXAMPLE.read_text()
    lines = text.splitlines()
    leaves = _leaves(tomllib.loads(text), "")
    assert len(leaves) > 30
    for path, _value in leaves:
        number = line_of(text, path)
        assert number is not None, path
        key = parse_path(path)[-1]  # type: ignore[index]
        written = lines[number - 1]
        # The key itself, or the last part of a dotted key such as prices.input.
        assert re.search(rf"""(^|[\s.{{,"'])"?'?{re.escape(str(key))}"?'?\s*=""", written), (
            path, number, written)


_TOML_BITS = st.sampled_from([
    "[", "]", "[[", "]]", "{", "}", "=", ",", ".", '"', "'", '"""', "'\'\'", "#", "\n", " ",
    "a", "models", "b.c", "1", "true", "\\", "x = 1\n", "[t]\n", "[[models]]\n",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOML_BITS, max_size=40).map("".join),
       st.sampled_from(["a", "models[0].a", "t.x", "$.b[...].c", "a.b.c[2]", "x"]))
def test_never_raises(text: str, path: str) -> None:
    result = line_of(text, path)
    assert result is None or 1 <= result <= text.count("\n") + 1


def test_deep_nesting_does_not_raise() -> None:
    assert line_of("a = " + "[" * 5000, "a") in (None, 1)
