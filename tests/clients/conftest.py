"""The client tests: the libraries teams use, pointed at the real proxy, nothing else changed.

They run in `.venv-clients` (made by `scripts/install-clients`), because
llama-index-llms-openai requires openai<3 while the main test suite uses
openai 3.x. In the main virtualenv every module here is skipped at import
(`pytest.importorskip`), with the command to run them as the reason.

One proxy serves the whole session: `tlproxy serve` as a subprocess, with no
config file (the built-in simulated upstream), on a free loopback port, in a
temporary working directory. The tests run offline: a connection to anything
but loopback fails (see `_support.offline`), and tiktoken's cache is an empty
directory, so a library that would download something at run time is caught
here rather than behind a customer's firewall.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients._support import offline, running_proxy


@pytest.fixture(scope="session", autouse=True)
def _offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    with pytest.MonkeyPatch.context() as patch, offline():
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield


@pytest.fixture(scope="session")
def proxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The proxy's root URL (`http://127.0.0.1:PORT`) and its log file."""
    with running_proxy(tmp_path_factory.mktemp("proxy")) as server:
        yield server
    # Whatever the clients sent, the proxy answered it without a crash of its own.
    log = server[1].read_text(errors="replace")
    assert "Traceback" not in log, f"the proxy logged a traceback:\n{log[-4000:]}"


@pytest.fixture(scope="session")
def proxy_url(proxy_server: tuple[str, Path]) -> str:
    return proxy_server[0]


@pytest.fixture(scope="session")
def base_url(proxy_url: str) -> str:
    """What a team sets as `base_url`."""
    return proxy_url + "/v1"


@pytest.fixture(scope="module")
def rate_limit_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A proxy of its own for the tests that make upstreams answer 429.

    The simulated upstream answers `[sim:status=429]` from every model, so the
    proxy tries the tier's models one after the other, and each failure counts
    towards that model's circuit breaker (open after 5 in a row, for 30 s): on
    the shared proxy the tests that come after would find the tier unavailable.
    """
    with running_proxy(tmp_path_factory.mktemp("proxy-429")) as (url, _log):
        yield url + "/v1"
