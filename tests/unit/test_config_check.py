"""`tlproxy config check` and `tlproxy serve` refuse the same configs, by path and line.

Each case is a valid base config plus a few lines with one mistake that used
to pass the checker and fail later: at start with a traceback, or on every
request. Both commands run in-process through the CLI's entry point; `serve`
must stop at the config, so starting a server at all fails the test.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tlproxy import cli
from tlproxy.app import create_app
from tlproxy.config import Config, ConfigError
from tlproxy.config_check import key_path, problems, validate
from tlproxy.config_load import load_config
from tlproxy.explain import describe_config

BASE = """\
default_alias = "auto"

[providers.sim]
kind = "sim"

[[models]]
id = "big"
provider = "sim"
tier = "premium"

[[models]]
id = "small"
provider = "sim"
tier = "economy"

[[models]]
id = "embed"
provider = "sim"
tier = "embedding"
"""
BASE_LINES = BASE.count("\n")
DIGEST = "sha256:" + "ab" * 32

# (mistake appended to BASE, path named, words of the message, line within the mistake)
CASES = [
    ('admin_keys = ["my-admin-key"]\n', "admin_keys[0]", "the SHA-256 of the key", 1),
    ('admin_keys = ["sha256:XYZ"]\n', "admin_keys[0]", "64 lowercase hex digits", 1),
    ('[[keys]]\nname = "k"\nhash = "my-key"\n', "keys[0].hash", "64 lowercase hex", 3),
    ('[[keys]]\nname = "k"\nhash = "' + DIGEST + '"\npolicy = "gone"\n', "keys[0].policy",
     "no policy named 'gone'", 4),
    ('[[keys]]\nname = "k"\nhash = "' + DIGEST + '"\nbudget_usd = -5.0\n',
     "keys[0].budget_usd", "more than 0", 4),
    ('[[keys]]\nname = "k"\nhash = "' + DIGEST + '"\n[[keys]]\nname = "k"\nhash = "'
     + DIGEST + '"\n', "keys[1].name", "duplicate key name 'k'", 5),
    ("[server]\nport = 70000\n", "server.port", "between 0 and 65535", 2),
    ('[server]\nhost = "my host"\n', "server.host", "neither an IP address nor a host name", 2),
    ("[server]\nbody_timeout = 0\n", "server.body_timeout", "more than 0 seconds", 2),
    ("[server]\nmax_body_bytes = -1\n", "server.max_body_bytes", "at least 1", 2),
    ('[providers.up]\nkind = "openai"\nbase_url = "api.openai.com/v1"\n',
     "providers.up.base_url", "must start with http://, https://", 3),
    ('[providers.up]\nkind = "openai"\nbase_url = "https://x"\nproxy = "socks5://p:1080"\n',
     "providers.up.proxy", "must start with http://, https://", 4),
    ('[providers.up]\nkind = "openai"\nbase_url = "https://x"\nproxy = "http://"\n',
     "providers.up.proxy", "names no host", 4),
    ('[providers.up]\nkind = "openai"\nbase_url = "https://x:port/v1"\n',
     "providers.up.base_url", "not a valid URL", 3),
    ('[providers.up]\nkind = "openai"\nbase_url = "https://x"\nread_timeout = -1\n',
     "providers.up.read_timeout", "more than 0 seconds", 4),
    ('[providers.up]\nkind = "anthropic"\nbase_url = "https://x"\nresponses_api = true\n',
     "providers.up.responses_api", "only for kind 'openai'", 4),
    ("[responses]\nretention_days = 0\n", "responses.retention_days", "more than 0 days", 2),
    ("[providers.sim.sim_models.big]\nerror_rate = 1.5\n",
     "providers.sim.sim_models.big.error_rate", "between 0 and 1", 2),
    ('[limits]\nredis_url = "localhost:6379"\n', "limits.redis_url",
     "must start with redis://", 2),
    ("[limits]\nmax_streams_per_worker = 0\n", "limits.max_streams_per_worker", "at least 1", 2),
    ('[ledger]\npostgres_url = "mysql://u:secret@h/db"\n', "ledger.postgres_url",
     "must start with postgresql://", 2),
    ('[ledger]\npath = "{tmp}/missing/ledger.db"\n', "ledger.path", "does not exist", 2),
    ('keys_db = "{tmp}/base.toml/keys.db"\n', "keys_db", "is not a directory", 1),
    ("[policy]\nhedge_quantile = 1.5\n", "policy.hedge_quantile", "between 0 and 1", 2),
    ("[policy]\nfanout = 0\n", "policy.fanout", "at least 1", 2),
    ('[[policy.rules]]\nname = "r"\ntier = "premium"\nwhen = { semantic_task = ["poetry"] }\n',
     "policy.rules[0].when.semantic_task", "'poetry' is not a label", 4),
    ("[policies.rag]\nmax_attempts = 0\n", "policies.rag.max_attempts", "at least 1", 2),
    ('[aliases]\n"gpt-4.1" = "nowhere"\n', 'aliases."gpt-4.1"', "neither an intent", 2),
    ('[aliases]\nada = "embed"\n', "aliases.ada", "is an embedding model", 2),
    ('[aliases]\nPremium = "economy"\n', "aliases.Premium", "is an intent already", 2),
    ('[aliases]\n"Big " = "economy"\n', 'aliases."Big "', "is a model id already", 2),
    ('[aliases]\nold = "economy"\nOLD = "premium"\n', "aliases.OLD", "listed twice", 3),
    ('[[models]]\nid = "BIG"\nprovider = "sim"\ntier = "premium"\n', "models[3].id",
     "duplicate model id 'BIG' (ids are matched without regard to case)", 2),
    ('[[models]]\nid = " Auto"\nprovider = "sim"\ntier = "premium"\n', "models[3].id",
     "is an intent", 2),
    ('[shadow]\nsample_rate = 0.5\ntarget = "gpt-9"\n', "shadow.target", "neither a tier", 3),
    ('[shadow]\nsample_rate = 0.5\nrules = ["no-such-rule"]\n', "shadow.rules",
     "no rule named 'no-such-rule'", 3),
    ('[classifier]\nenabled = true\nmodel = "small"\n', "classifier.model",
     "not an embedding model", 3),
    ('[[models]]\nid = "premium"\nprovider = "sim"\ntier = "premium"\n', "models[3].id",
     "is an intent", 2),
    ('[[models]]\nid = "x"\nprovider = "sim"\ntier = "economy"\nfirst_token_timeout = 0\n',
     "models[3].first_token_timeout", "more than 0 seconds", 5),
    ('[[models]]\nid = "x"\nprovider = "sim"\ntier = "economy"\n'
     "[models.prices]\noutput = -1.0\n", "models[3].prices.output", "at least 0", 6),
    ("[tracing]\nenabled = true\nsample_ratio = 1.5\n", "tracing.sample_ratio",
     "between 0 and 1", 3),
    ("[tracing]\nenabled = true\ntimeout = 0\n", "tracing.timeout", "more than 0 seconds", 3),
    ('[tracing]\nenabled = true\n[tracing.headers]\n"x y" = "v"\n', 'tracing.headers."x y"',
     "not a valid HTTP header name", 4),
]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the CLI, as a shell would see them."""
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("serve started on a config it should have refused")

    monkeypatch.setattr(cli, "_serve_main", refuse)
    monkeypatch.setattr(cli, "_run_workers", refuse)


@pytest.mark.usefixtures("no_server")
@pytest.mark.parametrize(("mistake", "where", "words", "line"), CASES)
def test_check_and_serve_refuse_the_same_values_by_path_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    mistake: str, where: str, words: str, line: int,
) -> None:
    (tmp_path / "base.toml").write_text("")
    config = tmp_path / "tlproxy.toml"
    mistake = mistake.replace("{tmp}", str(tmp_path))
    ledger = "" if "[ledger]" in mistake else f'[ledger]\npath = "{tmp_path}/ledger.db"\n'
    if mistake.startswith("["):
        config.write_text(BASE + ledger + mistake)
        line += BASE_LINES + ledger.count("\n")
    else:  # a top-level key: TOML wants it before the first table
        config.write_text(mistake + BASE + ledger)
    expected = f"{config}:{line}: {where}: "
    for argv in (["config", "check", str(config)],
                 ["serve", "--config", str(config), "--workers", "1", "--port", "0"]):
        status, _, err = _run(argv, capsys)
        assert status == 1, (argv, err)
        assert expected in err, (argv, err)
        assert words in err.split(expected, 1)[1], err
        assert "Traceback" not in err
        assert "secret" not in err and "my-admin-key" not in err and "my-key" not in err


def test_the_base_config_is_accepted(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text(BASE + f'[ledger]\npath = "{tmp_path}/ledger.db"\n')
    status, out, err = _run(["config", "check", str(config)], capsys)
    assert (status, err) == (0, "")
    assert out.endswith(f"{config}: OK\n")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text('admin_keys = ["k"]\n' + BASE + "[server]\nport = -1\n[policy]\nfanout = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert [path for path, _ in caught.value.problems] == [
        "server.port", "policy.fanout", "admin_keys[0]"]
    assert len(str(caught.value).splitlines()) == 3


def test_only_a_server_needs_models_and_writable_files(tmp_path: Path) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text('[ledger]\npath = "/nonexistent-dir/l.db"\n')
    assert load_config(config).ledger.path == "/nonexistent-dir/l.db"  # `tlproxy report`
    with pytest.raises(ConfigError) as caught:
        load_config(config, serving=True)
    assert [path for path, _ in caught.value.problems] == ["models", "ledger.path"]


def test_a_config_built_in_code_is_checked_the_same_way() -> None:
    config = Config(admin_keys=["plain"])
    assert [p.path for p in problems(config)] == ["admin_keys[0]"]
    with pytest.raises(ConfigError, match=re.escape("admin_keys[0]: expected 'sha256:'")):
        validate(config)
    # No app is built on it either (it used to fail in bytes.fromhex).
    with pytest.raises(ConfigError, match=re.escape("admin_keys[0]: expected 'sha256:'")):
        create_app(config)


@pytest.mark.parametrize(("parts", "path"), [
    (("providers", "openai"), "providers.openai"),
    (("aliases", "gpt-4.1"), 'aliases."gpt-4.1"'),
    (("aliases", 'a "b"'), 'aliases."a \\"b\\""'),
])
def test_key_paths_quote_what_toml_quotes(parts: tuple[str, ...], path: str) -> None:
    assert key_path(*parts) == path


@pytest.mark.parametrize(("mistake", "where", "words"), [
    ("[server]\nmax_body_bytes = -2000000\n", "server.max_body_bytes", "not -2000000"),
    ('[[models]]\nid = "x"\nprovider = "sim"\ntier = "economy"\n[models.prices]\ninput = nan\n',
     "models[3].prices.input", "not nan"),
    ("[providers.sim]\nkind = \"sim\"\nread_timeout = nan\n", "providers.sim.read_timeout",
     "more than 0 seconds, not nan"),
])
def test_numbers_are_shown_as_written_and_nan_is_refused(
    tmp_path: Path, mistake: str, where: str, words: str
) -> None:
    config = tmp_path / "tlproxy.toml"
    config.write_text(BASE.replace('[providers.sim]\nkind = "sim"\n', "") + mistake
                      if mistake.startswith("[providers.sim]") else BASE + mistake)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert any(path == where and words in message
               for path, message in caught.value.problems), caught.value.problems


def test_a_proxy_with_its_password_in_the_environment_is_resolved_and_masked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tlproxy.toml"
    path.write_text(BASE + '[providers.up]\nkind = "openai"\nbase_url = "https://x"\n'
                    'proxy = "http://team:${EGRESS_PASSWORD}@egress:3128"\n'
                    '[providers.direct]\nkind = "openai"\nbase_url = "https://y"\n'
                    'proxy = "none"\n')
    config = load_config(path, {"EGRESS_PASSWORD": "s3cret-pw"})
    assert config.providers["up"].proxy == "http://team:s3cret-pw@egress:3128"
    assert config.providers["direct"].proxy == "none"
    shown = describe_config(config)
    assert "proxy=http://team:****@egress:3128" in shown
    assert "s3cret-pw" not in shown
